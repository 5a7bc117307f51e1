"""Kueue objects from ``configs/cluster.yaml``: cluster-level quotas and preemption.

Kueue decides which RayJobs may start (quota across jobs); rayorch's scheduler then places
and preempts units inside a job's Ray cluster. The objects mirror rayorch's rules
(``rayorch.scheduling.admission``):

* one ``ResourceFlavor`` per accelerator type of the node inventory (its node labels and
  taints), plus ``cpu`` for CPU and memory on any node;
* one ``ClusterQueue`` per namespace, all in one cohort: nominal quota = the namespace's
  guaranteed GPUs/CPUs; ``can_borrow: false`` -> borrowing limit 0; ``borrowing_limit_gpus``
  -> the GPU borrowing limit;
* preemption: ``withinClusterQueue: LowerPriority`` (production preempts backfill in its own
  namespace), ``reclaimWithinCohort: Any`` (a namespace reclaims its nominal quota from
  whoever borrowed it, any priority), ``borrowWithinCohort: LowerPriority`` with the
  threshold at the backfill priority (borrowing production work may preempt borrowed
  backfill work, never another namespace's production work) - and nothing preempts work
  inside its own nominal quota from another namespace;
* one ``LocalQueue`` per namespace; ``WorkloadPriorityClass`` production (1000) > backfill
  (100), the values rayorch's scheduler ranks by;
* with ``kubernetes.topology_levels``: a ``Topology`` named by the GPU flavors.

Kueue quotas are per flavor while rayorch's are per namespace, so a namespace's GPUs are split
over accelerator flavors in proportion to each type's share of the inventory. Pure.
"""

from __future__ import annotations

from typing import Any

from rayorch.kube.names import flavor_name, queue_names
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
from rayorch.scheduling.shapes import parse_node_shape

KUEUE_API = "kueue.x-k8s.io/v1beta2"
GPU_RESOURCE = "nvidia.com/gpu"
_LABELS = {"app.kubernetes.io/managed-by": "rayorch"}


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(_LABELS)
    return meta


def accelerator_capacity(cluster: ClusterSpec) -> dict[str, int]:
    """GPUs per accelerator type in the inventory, in first-seen order (untyped: 'gpu')."""
    out: dict[str, int] = {}
    for pool in cluster.nodes:
        shape = parse_node_shape(pool.shape)
        if shape.gpus:
            key = shape.accelerator or ""
            out[key] = out.get(key, 0) + shape.gpus * pool.count
    return out


def split_gpus(total: int, capacity: dict[str, int]) -> dict[str, int]:
    """``total`` GPUs over accelerator types in proportion to capacity (largest remainder)."""
    cap = sum(capacity.values())
    if not cap:
        return {}
    exact = {k: total * v / cap for k, v in capacity.items()}
    out = {k: int(x) for k, x in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), list(capacity).index(k)))[:rest]:
        out[k] += 1
    return out


def render_flavors(cluster: ClusterSpec) -> list[dict[str, Any]]:
    kube = cluster.kubernetes
    out = [{"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": _meta("cpu")}]
    for acc in accelerator_capacity(cluster):
        spec: dict[str, Any] = {}
        conf = kube.accelerators.get(acc)
        if conf is not None and conf.node_labels:
            spec["nodeLabels"] = dict(sorted(conf.node_labels.items()))
        if conf is not None and conf.tolerations:
            spec["tolerations"] = [t.model_dump(exclude_none=True) for t in conf.tolerations]
        if kube.topology_levels and conf is not None:
            spec["topologyName"] = kube.topology_name
        flavor: dict[str, Any] = {
            "apiVersion": KUEUE_API,
            "kind": "ResourceFlavor",
            "metadata": _meta(flavor_name(acc or None)),
        }
        if spec:
            flavor["spec"] = spec
        out.append(flavor)
    return out


def _resource(name: str, nominal: str, borrowing: str | None) -> dict[str, Any]:
    r = {"name": name, "nominalQuota": nominal}
    if borrowing is not None:
        r["borrowingLimit"] = borrowing
    return r


def render_cluster_queue(cluster: ClusterSpec, namespace: str, q: NamespaceQuota) -> dict[str, Any]:
    kube = cluster.kubernetes
    cpu_borrow = None if q.can_borrow else "0"
    groups: list[dict[str, Any]] = [
        {
            "coveredResources": ["cpu", "memory"],
            "flavors": [
                {
                    "name": "cpu",
                    "resources": [
                        _resource("cpu", f"{q.cpus:g}", cpu_borrow),
                        _resource("memory", f"{q.cpus * kube.memory_per_cpu_gib:g}Gi", cpu_borrow),
                    ],
                }
            ],
        }
    ]
    capacity = accelerator_capacity(cluster)
    if capacity:
        gpu_borrow: str | None
        if not q.can_borrow:
            gpu_borrow = "0"
        elif q.borrowing_limit_gpus is not None:
            gpu_borrow = str(q.borrowing_limit_gpus)
        else:
            gpu_borrow = None
        share = split_gpus(q.gpus, capacity)
        groups.append(
            {
                "coveredResources": [GPU_RESOURCE],
                "flavors": [
                    {
                        "name": flavor_name(acc or None),
                        "resources": [_resource(GPU_RESOURCE, str(share[acc]), gpu_borrow)],
                    }
                    for acc in capacity
                ],
            }
        )
    preemption: dict[str, Any] = {
        "withinClusterQueue": "LowerPriority",
        "reclaimWithinCohort": "Any",
        "borrowWithinCohort": (
            {
                "policy": "LowerPriority",
                "maxPriorityThreshold": PriorityClass.BACKFILL.rank,
            }
            if q.can_borrow
            else {"policy": "Never"}
        ),
    }
    cq_name, _ = queue_names(namespace)
    return {
        "apiVersion": KUEUE_API,
        "kind": "ClusterQueue",
        "metadata": _meta(cq_name),
        "spec": {
            "cohortName": kube.cohort,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": groups,
            "preemption": preemption,
        },
    }


def render_local_queue(namespace: str) -> dict[str, Any]:
    cq, lq = queue_names(namespace)
    return {
        "apiVersion": KUEUE_API,
        "kind": "LocalQueue",
        "metadata": _meta(lq, namespace),
        "spec": {"clusterQueue": cq},
    }


def render_priority_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": KUEUE_API,
            "kind": "WorkloadPriorityClass",
            "metadata": _meta(p.value),
            "value": p.rank,
            "description": f"rayorch priority class {p.value!r} (production > backfill)",
        }
        for p in PriorityClass
    ]


def render_topology(cluster: ClusterSpec) -> dict[str, Any] | None:
    kube = cluster.kubernetes
    if not kube.topology_levels:
        return None
    return {
        "apiVersion": KUEUE_API,
        "kind": "Topology",
        "metadata": _meta(kube.topology_name),
        "spec": {"levels": [{"nodeLabel": level} for level in kube.topology_levels]},
    }


def render_kueue(cluster: ClusterSpec, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Every Kueue object, cluster-scoped ones first (the order they are applied in)."""
    names = namespaces if namespaces is not None else list(cluster.namespaces)
    objs: list[dict[str, Any]] = []
    topo = render_topology(cluster)
    if topo is not None:
        objs.append(topo)
    objs += render_flavors(cluster)
    objs += render_priority_classes()
    for ns in names:
        quota = cluster.quota(ns)
        if quota is None:
            continue
        objs.append(render_cluster_queue(cluster, ns, quota))
    objs += [render_local_queue(ns) for ns in names if cluster.quota(ns) is not None]
    return objs
