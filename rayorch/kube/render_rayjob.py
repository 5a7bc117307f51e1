"""A backfill as a KubeRay ``RayJob`` (or a standalone ``RayCluster``), from the same configs.

``plan_job`` decides everything (namespace, priority, identity, image, entrypoint, groups,
grace period); ``render_rayjob`` / ``render_raycluster`` only lay the plan out as objects.
Facts designed around (KubeRay and Kueue sources):

* KubeRay's retries (``backoffLimit``) and Kueue's suspensions rerun the driver from scratch
  on a new RayCluster with the same entrypoint, so every attempt runs the same
  ``jobs/backfill.py`` arguments and the fenced ledger resumes the backfill; ``spec.jobId`` is
  fixed so one Ray cluster never runs the same backfill under two submission ids.
* Kueue owns ``spec.suspend``, reads the queue from ``kueue.x-k8s.io/queue-name`` and the
  priority from ``kueue.x-k8s.io/priority-class``, counts pod requests/limits (GPUs as
  ``nvidia.com/gpu``), requires ``shutdownAfterJobFinishes: true`` and no autoscaling.
* Preemption suspends the RayJob: pods get SIGTERM, then SIGKILL after
  ``terminationGracePeriodSeconds`` - the window for rayorch's checkpoint-then-yield, so it is
  at least the training yield timeout (and the cluster's yield grace) plus a margin.

Pure: no ``kubernetes`` import.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from rayorch.backfill.plan import plan_backfill
from rayorch.backfill.scheduled import gate_args
from rayorch.env.errors import EXPECTED_IMAGE_FORM, ImageNotPinnedError
from rayorch.env.spec import build_runtime_env, check_image_policy, parse_image_ref
from rayorch.errors import ConfigError
from rayorch.kube.config import KubernetesSpec
from rayorch.kube.names import MAX_RAYCLUSTER_NAME, JobIdentity, dns1035, job_identity, queue_names
from rayorch.kube.sizing import GroupPlan, worker_groups
from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.spec import PipelineSpec

RAY_API = "ray.io/v1"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GPU_RESOURCE = "nvidia.com/gpu"
ANNOTATION_PREFIX = "rayorch.io/"
#: The seconds a unit needs to checkpoint and yield; pod grace periods must not be shorter.
GRACE_ANNOTATION = ANNOTATION_PREFIX + "min-termination-grace-s"
TAS_ANNOTATIONS = {
    "preferred": "kueue.x-k8s.io/podset-preferred-topology",
    "required": "kueue.x-k8s.io/podset-required-topology",
}


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """What `rayorch kube render` was asked: configs (loaded) and the backfill's arguments.

    ``config_ref`` / ``cluster_ref`` are the paths as the job will see them (relative to the
    image's working directory, the repository root).
    """

    spec: PipelineSpec
    cluster: ClusterSpec
    config_ref: str
    cluster_ref: str
    start: str
    end: str
    keys: dict[str, list[str]] | None = None
    namespace: str | None = None
    priority: str | None = None


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Every decision behind the rendered objects; ``to_dict`` is what ``--json`` shows."""

    identity: JobIdentity
    pipeline: str
    namespace: str
    priority: PriorityClass
    image: str
    entrypoint: str
    runtime_env_yaml: str | None
    head: GroupPlan
    groups: tuple[GroupPlan, ...]
    grace_period_s: int
    min_grace_s: int
    config_fingerprint: str
    kube: KubernetesSpec

    @property
    def local_queue(self) -> str:
        return queue_names(self.namespace)[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.identity.name,
            "job_id": self.identity.job_id,
            "params_hash": self.identity.params_hash,
            "params": self.identity.params,
            "namespace": self.namespace,
            "priority": self.priority.value,
            "image": self.image,
            "entrypoint": self.entrypoint,
            "head": self.head.to_dict(),
            "worker_groups": [g.to_dict() for g in self.groups],
            "termination_grace_period_s": self.grace_period_s,
            "local_queue": self.local_queue,
            "config_fingerprint": self.config_fingerprint,
        }


def _image(req: RenderRequest, namespace: str) -> str:
    quota = req.cluster.quota(namespace)
    require = bool(quota and quota.require_image_digest)
    env = req.spec.environment
    if env is not None and env.image is not None:
        ref = check_image_policy(
            env,
            require_digest=require,
            namespace=namespace,
            file=req.config_ref,
            policy_file=req.cluster_ref,
        )
        return str(ref)
    image = req.cluster.kubernetes.image
    if image is None:
        raise ConfigError(
            f"{req.config_ref}: no image for the Ray pods; set environment.image in the "
            f"pipeline or kubernetes.image in {req.cluster_ref} ({EXPECTED_IMAGE_FORM})",
            file=req.config_ref,
            field="environment.image",
        )
    ref = parse_image_ref(image)
    if require and not ref.pinned:
        raise ImageNotPinnedError(
            f"{req.cluster_ref}: kubernetes.image {image!r} has no digest, but namespace "
            f"{namespace!r} sets require_image_digest: true. Pin it: "
            f"{ref.name}@sha256:<64 hex digits>",
            file=req.cluster_ref,
            field="kubernetes.image",
            image=image,
            namespace=namespace,
            policy_file=req.cluster_ref,
            expected=EXPECTED_IMAGE_FORM,
        )
    return image


def _entrypoint(req: RenderRequest, namespace: str, priority: PriorityClass) -> str:
    args = ["python", "jobs/backfill.py", "--config", req.config_ref]
    args += ["--start", req.start, "--end", req.end]
    if req.keys:
        args += ["--keys", ";".join(f"{d}={','.join(v)}" for d, v in sorted(req.keys.items()))]
    args += ["--cluster", req.cluster_ref, "--namespace", namespace, "--priority", priority.value]
    return shlex.join(args)


def plan_job(req: RenderRequest) -> JobPlan:
    """Resolve and check everything a RayJob needs; errors name the file and the field."""
    plan = plan_backfill(req.spec, req.start, req.end, req.keys)
    cluster, namespace, prio = gate_args(
        req.cluster, req.namespace, req.priority, req.spec, plan.units
    )
    priority = prio or cluster.default_priority
    quota = cluster.quota(namespace)
    assert quota is not None  # gate_args refused unknown namespaces
    kube = cluster.kubernetes
    runtime_env = build_runtime_env(req.spec.environment)
    yield_s = req.spec.train.yield_timeout_s if req.spec.train else 0.0
    need = math.ceil(max(yield_s, cluster.yield_grace_s))
    return JobPlan(
        identity=job_identity(plan.params),
        pipeline=req.spec.name,
        namespace=namespace,
        priority=priority,
        image=_image(req, namespace),
        entrypoint=_entrypoint(req, namespace, priority),
        runtime_env_yaml=yaml.safe_dump(runtime_env, sort_keys=True) if runtime_env else None,
        head=GroupPlan("head", 1, kube.head_cpus, 0, kube.head_cpus * kube.memory_per_cpu_gib),
        groups=worker_groups(req.spec, cluster, quota),
        grace_period_s=need + kube.termination_margin_s,
        min_grace_s=need,
        config_fingerprint=plan.config_fingerprint,
        kube=kube,
    )


def _quantity(x: float) -> str:
    return f"{x:g}"


def _container(plan: JobPlan, group: GroupPlan, name: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "cpu": _quantity(group.cpus),
        "memory": f"{_quantity(group.memory_gib)}Gi",
    }
    limits = dict(res)
    if group.gpus:
        limits[GPU_RESOURCE] = str(group.gpus)
    env = [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": plan.kube.secret_name, "key": key}}}
        for var, key in plan.kube.secret_env.items()
    ]
    return {
        "name": name,
        "image": plan.image,
        "env": env,
        "resources": {"limits": limits, "requests": res},
    }


def _pod_template(plan: JobPlan, group: GroupPlan, container: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"rayorch.io/group": group.name}}
    spec: dict[str, Any] = {
        "containers": [_container(plan, group, container)],
        "terminationGracePeriodSeconds": plan.grace_period_s,
    }
    if group.accelerator is not None or group.gpus:
        acc = plan.kube.accelerators.get(group.accelerator or "")
        labels = acc.node_labels if acc else {}
        tolerations = acc.tolerations if acc else []
        if acc is None:  # unconfigured accelerator: tolerate the usual GPU taint only
            from rayorch.kube.config import Toleration

            tolerations = [Toleration(key=GPU_RESOURCE)]
        if labels:
            spec["nodeSelector"] = dict(sorted(labels.items()))
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in tolerations]
        level = plan.kube.pod_set_level
        if level is not None and acc is not None:
            meta["annotations"] = {TAS_ANNOTATIONS[plan.kube.topology_mode]: level}
    return {"metadata": meta, "spec": spec}


def ray_cluster_spec(plan: JobPlan) -> dict[str, Any]:
    """``rayClusterSpec``: a head (runs the driver) and fixed-size worker groups (no
    autoscaling: Kueue admits a fixed shape and would reject in-tree autoscaling)."""
    return {
        "rayVersion": plan.kube.ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {
            "rayStartParams": {},
            "template": _pod_template(plan, plan.head, "ray-head"),
        },
        "workerGroupSpecs": [
            {
                "groupName": g.name,
                "replicas": g.replicas,
                "minReplicas": g.replicas,
                "maxReplicas": g.replicas,
                "rayStartParams": {},
                "template": _pod_template(plan, g, "ray-worker"),
            }
            for g in plan.groups
        ],
    }


def _metadata(plan: JobPlan, name: str) -> dict[str, Any]:
    ident = plan.identity
    return {
        "name": name,
        "namespace": plan.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "rayorch",
            "rayorch.io/pipeline": dns1035(plan.pipeline, 63),
            QUEUE_LABEL: plan.local_queue,
            PRIORITY_LABEL: plan.priority.value,
        },
        "annotations": {
            ANNOTATION_PREFIX + "backfill-params": json.dumps(ident.params, sort_keys=True),
            GRACE_ANNOTATION: str(plan.min_grace_s),
            ANNOTATION_PREFIX + "params-hash": ident.params_hash,
            ANNOTATION_PREFIX + "pipeline": plan.pipeline,
        },
    }


def render_rayjob(plan: JobPlan) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "entrypoint": plan.entrypoint,
        "jobId": plan.identity.job_id,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "backoffLimit": plan.kube.backoff_limit,
    }
    if plan.runtime_env_yaml:
        spec["runtimeEnvYAML"] = plan.runtime_env_yaml
    spec["rayClusterSpec"] = ray_cluster_spec(plan)
    return {
        "apiVersion": RAY_API,
        "kind": "RayJob",
        "metadata": _metadata(plan, plan.identity.name),
        "spec": spec,
    }


def raycluster_name(plan: JobPlan) -> str:
    return dns1035(f"{plan.pipeline}-{plan.namespace}-interactive", MAX_RAYCLUSTER_NAME)


def render_raycluster(plan: JobPlan) -> dict[str, Any]:
    """A standalone RayCluster of the same shape, for notebooks (``ray.init("ray://…")``);
    queued by Kueue like the RayJob, and kept until deleted."""
    meta = _metadata(plan, raycluster_name(plan))
    for key in ("backfill-params", "params-hash"):
        del meta["annotations"][ANNOTATION_PREFIX + key]
    return {
        "apiVersion": RAY_API,
        "kind": "RayCluster",
        "metadata": meta,
        "spec": ray_cluster_spec(plan),
    }
