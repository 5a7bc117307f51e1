"""Worker groups of a backfill's Ray cluster, sized from node shapes and ``train.scaling``.

A Kubernetes pod is one Ray node. GPU training gets one worker group on the accelerator whose
nodes hold a worker's GPUs most tightly (best fit, as rayorch's placement does), with as many
Ray Train workers per pod as one node holds, so a 2x4 job on 8-GPU nodes is one 8-GPU pod and
not two pods that may land on different nodes. Feature tasks (and CPU training) get a CPU group
sized to the namespace's concurrency and CPU quota. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayorch.errors import ConfigError
from rayorch.kube.config import KubernetesSpec
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota
from rayorch.scheduling.shapes import NodeShape
from rayorch.spec import PipelineSpec


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One KubeRay worker group: ``replicas`` pods of ``cpus``/``gpus``/``memory_gib`` each."""

    name: str
    replicas: int
    cpus: float
    gpus: int
    memory_gib: float
    accelerator: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "replicas": self.replicas,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "memory_gib": self.memory_gib,
            "accelerator": self.accelerator,
        }


def _pools(cluster: ClusterSpec) -> list[NodeShape]:
    seen: dict[tuple[int, float, str | None], NodeShape] = {}
    for node in cluster.node_shapes():
        seen.setdefault((node.gpus, node.cpus, node.accelerator), node)
    return list(seen.values())


def gpu_group(spec: PipelineSpec, cluster: ClusterSpec, kube: KubernetesSpec) -> GroupPlan | None:
    """The GPU worker group of training, or None for CPU training (or no training)."""
    if spec.train is None or spec.train.scaling.gpus_per_worker <= 0:
        return None
    sc = spec.train.scaling
    per = sc.gpus_per_worker
    fits = [n for n in _pools(cluster) if n.gpus >= per]
    if not fits:
        have = ", ".join(str(n) for n in _pools(cluster)) or "no nodes"
        raise ConfigError(
            f"train.scaling.gpus_per_worker={per:g}: no node shape in the cluster config holds "
            f"one worker (nodes: {have}); add a node pool to `nodes:` in the cluster config",
            field="train.scaling.gpus_per_worker",
            value=per,
        )
    # best fit: the smallest node that holds a worker; ties keep the config's order
    node = min(fits, key=lambda n: n.gpus)
    per_pod = min(sc.num_workers, math.floor(node.gpus / per))
    gpus = math.ceil(per_pod * per)
    cpus = per_pod * sc.cpus_per_worker
    if node.cpus and cpus > node.cpus:
        raise ConfigError(
            f"{per_pod} workers x {sc.cpus_per_worker:g} CPUs = {cpus:g} CPUs per pod exceed the "
            f"{node.cpus:g} CPUs of a {node} node; lower train.scaling.cpus_per_worker",
            field="train.scaling.cpus_per_worker",
            value=sc.cpus_per_worker,
        )
    return GroupPlan(
        name=f"gpu-{node.accelerator.lower()}" if node.accelerator else "gpu",
        replicas=math.ceil(sc.num_workers / per_pod),
        cpus=cpus,
        gpus=gpus,
        memory_gib=cpus * kube.memory_per_cpu_gib,
        accelerator=node.accelerator,
    )


def cpu_group(spec: PipelineSpec, quota: NamespaceQuota, kube: KubernetesSpec) -> GroupPlan:
    """CPU pods for feature tasks (and CPU-only training): enough for the namespace's
    ``max_concurrent_units`` feature tasks at once, capped by its nominal CPU quota."""
    want = spec.features.num_cpus * quota.max_concurrent_units
    if spec.train is not None and spec.train.scaling.gpus_per_worker <= 0:
        sc = spec.train.scaling
        want = max(want, sc.num_workers * sc.cpus_per_worker)
    if quota.cpus > 0:
        want = min(want, quota.cpus)
    pod = max(kube.cpu_pod_cpus, spec.features.num_cpus)
    if spec.train is not None and spec.train.scaling.gpus_per_worker <= 0:
        pod = max(pod, spec.train.scaling.cpus_per_worker)
    return GroupPlan(
        name="cpu",
        replicas=max(1, math.ceil(want / pod)),
        cpus=pod,
        gpus=0,
        memory_gib=pod * kube.memory_per_cpu_gib,
    )


def worker_groups(
    spec: PipelineSpec, cluster: ClusterSpec, quota: NamespaceQuota
) -> tuple[GroupPlan, ...]:
    """CPU group first (feature tasks), then the GPU training group when training uses GPUs."""
    kube = cluster.kubernetes
    gpu = gpu_group(spec, cluster, kube)
    return (cpu_group(spec, quota, kube),) + ((gpu,) if gpu else ())
