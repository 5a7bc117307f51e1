"""Rules the CRD schemas cannot express, checked by rayorch before anything is submitted.

* ObjectMeta (the server's own checks): names, namespaces, label keys and values.
* KubeRay's operator validation (``ray-operator/controllers/ray/utils/validation.go``): RayJob
  names <= 47 chars and DNS-1035 (the RayCluster is named ``<job>-<5>``, <= 53), at least one
  container per group, ``suspend`` needs ``shutdownAfterJobFinishes``, a TTL needs it too,
  ``backoffLimit`` >= 0 and not with InteractiveMode, ``runtimeEnvYAML`` must parse.
* Kueue's RayJob/RayCluster webhooks (``pkg/controller/jobs/rayjob``, ``.../raycluster``):
  ``shutdownAfterJobFinishes: true``, no ``clusterSelector``, no in-tree autoscaling, at most
  18 pod sets (head + worker groups), no worker group named ``head``, a queue name that is a
  DNS-1123 subdomain, at most one TAS annotation per pod template.
* rayorch's own: every job names a queue and a known priority class, has a fixed ``jobId``,
  a grace period no shorter than its yield timeout, GPUs as ``nvidia.com/gpu`` limits, images
  by digest where the namespace requires it, and secrets by reference (never a value).
* Across the objects validated together: queues, flavors, priority classes and topologies
  that are referenced exist (when the referenced kind is part of the set).

Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from rayorch.env.spec import parse_image_ref
from rayorch.kube.config import LABEL_KEY_RE, LABEL_VALUE_RE
from rayorch.kube.names import (
    MAX_RAYCLUSTER_NAME,
    MAX_RAYJOB_NAME,
    is_dns1035,
    is_dns1123_label,
    is_dns1123_subdomain,
)
from rayorch.kube.render_rayjob import (
    GPU_RESOURCE,
    GRACE_ANNOTATION,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    TAS_ANNOTATIONS,
)
from rayorch.kube.schema import Violation
from rayorch.scheduling.quota import ClusterSpec, PriorityClass

#: Kueue's ``jobframework.MaxPodSets``.
MAX_POD_SETS = 18
_MODES = ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
_CLUSTER_SCOPED = {"ClusterQueue", "ResourceFlavor", "WorkloadPriorityClass", "Topology", "Cohort"}
_SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY$|DB_URL|TRACKING_URI|CREDENTIAL)", re.I)
_USERINFO = re.compile(r"://[^/@\s]+:[^/@\s]+@")


def _v(ref: str, path: str, rule: str, msg: str) -> Violation:
    return Violation(ref, path, rule, msg)


def check_metadata(obj: dict[str, Any], ref: str) -> list[Violation]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [_v(ref, "metadata", "meta: required", "metadata must be a mapping with a name")]
    out = []
    name = meta.get("name")
    if not isinstance(name, str) or not is_dns1123_subdomain(name):
        out.append(
            _v(ref, "metadata.name", "meta: name", f"name {name!r} is not a DNS-1123 subdomain")
        )
    ns = meta.get("namespace")
    kind = obj.get("kind")
    if kind in _CLUSTER_SCOPED and ns is not None:
        out.append(
            _v(
                ref,
                "metadata.namespace",
                "meta: scope",
                f"{kind} is cluster-scoped; remove metadata.namespace",
            )
        )
    if kind not in _CLUSTER_SCOPED and (not isinstance(ns, str) or not is_dns1123_label(ns)):
        out.append(
            _v(
                ref,
                "metadata.namespace",
                "meta: namespace",
                f"namespace {ns!r} must be set to a DNS-1123 label",
            )
        )
    for field in ("labels", "annotations"):
        items = meta.get(field) or {}
        if not isinstance(items, dict):
            out.append(_v(ref, f"metadata.{field}", "meta: map", f"{field} must be a mapping"))
            continue
        for k, val in items.items():
            if not LABEL_KEY_RE.match(str(k)):
                out.append(
                    _v(ref, f"metadata.{field}.{k}", "meta: key", f"{k!r} is not a valid key")
                )
            if not isinstance(val, str):
                out.append(
                    _v(ref, f"metadata.{field}.{k}", "meta: value", "values must be strings")
                )
            elif field == "labels" and not LABEL_VALUE_RE.match(val):
                out.append(
                    _v(
                        ref,
                        f"metadata.labels.{k}",
                        "meta: label value",
                        f"{val!r} is not a label value (<= 63 chars, alphanumeric ends)",
                    )
                )
    return out


def pod_templates(
    cluster_spec: dict[str, Any], base: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(group name, path, pod template) of the head and each worker group."""
    head = cluster_spec.get("headGroupSpec") or {}
    yield "head", f"{base}.headGroupSpec.template", head.get("template") or {}
    for i, g in enumerate(cluster_spec.get("workerGroupSpecs") or []):
        yield (
            str(g.get("groupName")),
            f"{base}.workerGroupSpecs[{i}].template",
            g.get("template") or {},
        )


def check_cluster_spec(
    cs: dict[str, Any], base: str, ref: str, meta: dict[str, Any], policy: ClusterSpec | None
) -> list[Violation]:
    out = []
    if cs.get("enableInTreeAutoscaling") is True:
        out.append(
            _v(
                ref,
                f"{base}.enableInTreeAutoscaling",
                "kueue: no autoscaling",
                "a Kueue-managed job admits a fixed shape; set enableInTreeAutoscaling: false",
            )
        )
    workers = cs.get("workerGroupSpecs") or []
    if 1 + len(workers) > MAX_POD_SETS:
        out.append(
            _v(
                ref,
                f"{base}.workerGroupSpecs",
                "kueue: pod sets",
                f"{1 + len(workers)} pod sets (head + worker groups); Kueue allows {MAX_POD_SETS}",
            )
        )
    names: set[str] = set()
    for i, g in enumerate(workers):
        name = g.get("groupName")
        if name == "head":
            out.append(
                _v(
                    ref,
                    f"{base}.workerGroupSpecs[{i}].groupName",
                    "kueue: reserved name",
                    "'head' is reserved for the head group; rename the worker group",
                )
            )
        if name in names:
            out.append(
                _v(
                    ref,
                    f"{base}.workerGroupSpecs[{i}].groupName",
                    "kuberay: unique groups",
                    f"worker group {name!r} appears twice",
                )
            )
        names.add(str(name))
    min_grace = (meta.get("annotations") or {}).get(GRACE_ANNOTATION)
    namespace = meta.get("namespace")
    quota = policy.quota(namespace) if policy is not None and namespace else None
    for group, path, tpl in pod_templates(cs, base):
        spec = tpl.get("spec") or {}
        containers = spec.get("containers") or []
        if not containers:
            out.append(
                _v(
                    ref,
                    f"{path}.spec.containers",
                    "kuberay: containers",
                    f"group {group!r} needs at least one container",
                )
            )
        tas = [
            a
            for a in TAS_ANNOTATIONS.values()
            if a in ((tpl.get("metadata") or {}).get("annotations") or {})
        ]
        if len(tas) > 1:
            out.append(
                _v(
                    ref,
                    f"{path}.metadata.annotations",
                    "kueue: topology request",
                    f"only one of {', '.join(tas)} may be set",
                )
            )
        if min_grace is not None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if not isinstance(grace, int) or grace < int(float(min_grace)):
                out.append(
                    _v(
                        ref,
                        f"{path}.spec.terminationGracePeriodSeconds",
                        "rayorch: grace period",
                        f"{grace!r}s is shorter than the {min_grace}s a unit needs to checkpoint "
                        "and yield on preemption",
                    )
                )
        for j, c in enumerate(containers):
            out += _check_container(c, f"{path}.spec.containers[{j}]", ref, quota, namespace)
    return out


def _check_container(
    c: dict[str, Any], path: str, ref: str, quota: Any, namespace: str | None
) -> list[Violation]:
    out = []
    res = c.get("resources") or {}
    req = (res.get("requests") or {}).get(GPU_RESOURCE)
    lim = (res.get("limits") or {}).get(GPU_RESOURCE)
    if req is not None and str(req) != str(lim):
        out.append(
            _v(
                ref,
                f"{path}.resources.limits",
                "rayorch: gpu limits",
                f"GPUs go in limits ({GPU_RESOURCE}: {req}); requests must equal limits",
            )
        )
    if "GPU" in {**(res.get("limits") or {}), **(res.get("requests") or {})}:
        out.append(
            _v(
                ref,
                f"{path}.resources",
                "rayorch: gpu resource",
                f"'GPU' is Ray's name; Kubernetes counts {GPU_RESOURCE}",
            )
        )
    for k, e in enumerate(c.get("env") or []):
        name, value = str(e.get("name", "")), e.get("value")
        if value is not None and (_SECRETISH.search(name) or _USERINFO.search(str(value))):
            out.append(
                _v(
                    ref,
                    f"{path}.env[{k}].value",
                    "rayorch: secrets by reference",
                    f"{name} is set inline; use valueFrom.secretKeyRef",
                )
            )
    image = c.get("image")
    if quota is not None and quota.require_image_digest and isinstance(image, str):
        try:
            pinned = parse_image_ref(image).pinned
        except ValueError as err:
            out.append(_v(ref, f"{path}.image", "rayorch: image", str(err)))
            return out
        if not pinned:
            out.append(
                _v(
                    ref,
                    f"{path}.image",
                    "rayorch: image digest",
                    f"image {image!r} is a tag; namespace {namespace!r} requires "
                    "registry/name@sha256:<digest>",
                )
            )
    return out


def check_rayjob(obj: dict[str, Any], ref: str, policy: ClusterSpec | None) -> list[Violation]:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    out = []
    name = meta.get("name")
    if not isinstance(name, str) or not is_dns1035(name, MAX_RAYJOB_NAME):
        out.append(
            _v(
                ref,
                "metadata.name",
                "kuberay: name",
                f"RayJob name {name!r} must be a DNS-1035 label of at most {MAX_RAYJOB_NAME} "
                "chars (KubeRay appends 6 chars for its RayCluster)",
            )
        )
    out += _check_queue_labels(meta, ref)
    if spec.get("clusterSelector"):
        out.append(
            _v(
                ref,
                "spec.clusterSelector",
                "kueue: clusterSelector",
                "a Kueue-managed job cannot use an existing cluster; use rayClusterSpec",
            )
        )
    if not isinstance(spec.get("rayClusterSpec"), dict):
        out.append(
            _v(ref, "spec.rayClusterSpec", "kuberay: rayClusterSpec", "rayClusterSpec is required")
        )
    else:
        out += check_cluster_spec(spec["rayClusterSpec"], "spec.rayClusterSpec", ref, meta, policy)
    shutdown = spec.get("shutdownAfterJobFinishes") is True
    if not shutdown:
        out.append(
            _v(
                ref,
                "spec.shutdownAfterJobFinishes",
                "kueue: shutdownAfterJobFinishes",
                "must be true: Kueue releases quota only when the cluster is deleted",
            )
        )
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        out.append(
            _v(
                ref,
                "spec.ttlSecondsAfterFinished",
                "kuberay: ttl",
                "ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true",
            )
        )
    if spec.get("suspend") is True and not shutdown:
        out.append(
            _v(
                ref,
                "spec.suspend",
                "kuberay: suspend",
                "a RayJob with shutdownAfterJobFinishes false cannot be suspended",
            )
        )
    backoff = spec.get("backoffLimit")
    if isinstance(backoff, int) and backoff < 0:
        out.append(_v(ref, "spec.backoffLimit", "kuberay: backoffLimit", "must be >= 0"))
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in _MODES:
        out.append(
            _v(
                ref,
                "spec.submissionMode",
                "kuberay: submissionMode",
                f"{mode!r} is not one of {', '.join(_MODES)}",
            )
        )
    if mode == "InteractiveMode" and isinstance(backoff, int) and backoff > 0:
        out.append(
            _v(
                ref,
                "spec.backoffLimit",
                "kuberay: backoffLimit",
                "backoffLimit is incompatible with InteractiveMode",
            )
        )
    if mode == "InteractiveMode" or not spec.get("entrypoint"):
        out.append(
            _v(
                ref,
                "spec.entrypoint",
                "rayorch: entrypoint",
                "a backfill RayJob runs its entrypoint (K8sJobMode); set spec.entrypoint",
            )
        )
    if not spec.get("jobId"):
        out.append(
            _v(
                ref,
                "spec.jobId",
                "rayorch: jobId",
                "set a fixed jobId so one Ray cluster never runs the backfill twice",
            )
        )
    ads = spec.get("activeDeadlineSeconds")
    if isinstance(ads, int) and ads <= 0:
        out.append(_v(ref, "spec.activeDeadlineSeconds", "kuberay: deadline", "must be > 0"))
    renv = spec.get("runtimeEnvYAML")
    if renv is not None:
        try:
            parsed = yaml.safe_load(str(renv))
        except yaml.YAMLError as e:
            parsed = e
        if parsed is not None and not isinstance(parsed, dict):
            out.append(
                _v(
                    ref,
                    "spec.runtimeEnvYAML",
                    "kuberay: runtimeEnvYAML",
                    f"must be a YAML mapping (Ray runtime_env): {parsed}",
                )
            )
    return out


def _check_queue_labels(meta: dict[str, Any], ref: str) -> list[Violation]:
    labels = meta.get("labels") or {}
    out = []
    queue = labels.get(QUEUE_LABEL)
    if not queue:
        out.append(
            _v(
                ref,
                f"metadata.labels.{QUEUE_LABEL}",
                "kueue: queue label",
                f"label {QUEUE_LABEL} is missing: Kueue would not queue (or quota) this job",
            )
        )
    elif not is_dns1123_subdomain(str(queue)):
        out.append(
            _v(
                ref,
                f"metadata.labels.{QUEUE_LABEL}",
                "kueue: queue label",
                f"{queue!r} is not a DNS-1123 subdomain",
            )
        )
    prio = labels.get(PRIORITY_LABEL)
    known = [p.value for p in PriorityClass]
    if prio not in known:
        out.append(
            _v(
                ref,
                f"metadata.labels.{PRIORITY_LABEL}",
                "rayorch: priority class",
                f"priority class {prio!r}: use one of {', '.join(known)}",
            )
        )
    return out


def check_raycluster(obj: dict[str, Any], ref: str, policy: ClusterSpec | None) -> list[Violation]:
    meta = obj.get("metadata") or {}
    out = []
    name = meta.get("name")
    if not isinstance(name, str) or not is_dns1035(name, MAX_RAYCLUSTER_NAME):
        out.append(
            _v(
                ref,
                "metadata.name",
                "kuberay: name",
                f"RayCluster name {name!r} must be a DNS-1035 label of at most {MAX_RAYCLUSTER_NAME} chars",
            )
        )
    out += _check_queue_labels(meta, ref)
    if isinstance(obj.get("spec"), dict):
        out += check_cluster_spec(obj["spec"], "spec", ref, meta, policy)
    return out


def check_references(objs: list[tuple[str, dict[str, Any]]]) -> list[Violation]:
    """Names one object uses that another kind in the same set should define."""
    by_kind: dict[str, set[str]] = {}
    local: set[tuple[str, str]] = set()
    for _, o in objs:
        meta = o.get("metadata") or {}
        by_kind.setdefault(str(o.get("kind")), set()).add(str(meta.get("name")))
        if o.get("kind") == "LocalQueue":
            local.add((str(meta.get("namespace")), str(meta.get("name"))))
    out = []

    def need(kind: str, name: Any, ref: str, path: str) -> None:
        if kind in by_kind and name not in by_kind[kind]:
            out.append(_v(ref, path, "rayorch: reference", f"{kind} {name!r} is not defined here"))

    for ref, o in objs:
        kind, spec = o.get("kind"), o.get("spec") or {}
        meta = o.get("metadata") or {}
        if kind == "LocalQueue":
            need("ClusterQueue", spec.get("clusterQueue"), ref, "spec.clusterQueue")
        if kind == "ClusterQueue":
            for i, g in enumerate(spec.get("resourceGroups") or []):
                for j, f in enumerate(g.get("flavors") or []):
                    need(
                        "ResourceFlavor",
                        f.get("name"),
                        ref,
                        f"spec.resourceGroups[{i}].flavors[{j}].name",
                    )
        if kind == "ResourceFlavor" and spec.get("topologyName"):
            need("Topology", spec["topologyName"], ref, "spec.topologyName")
        if kind in ("RayJob", "RayCluster"):
            labels = meta.get("labels") or {}
            need(
                "WorkloadPriorityClass",
                labels.get(PRIORITY_LABEL),
                ref,
                f"metadata.labels.{PRIORITY_LABEL}",
            )
            queue = labels.get(QUEUE_LABEL)
            if (
                "LocalQueue" in by_kind
                and queue
                and (str(meta.get("namespace")), queue) not in local
            ):
                out.append(
                    _v(
                        ref,
                        f"metadata.labels.{QUEUE_LABEL}",
                        "rayorch: reference",
                        f"LocalQueue {queue!r} is not defined in namespace {meta.get('namespace')!r}",
                    )
                )
    return out


def check_rules(
    obj: dict[str, Any], ref: str, policy: ClusterSpec | None = None
) -> list[Violation]:
    """Every per-object rule for ``obj`` (metadata, KubeRay, Kueue, rayorch)."""
    out = check_metadata(obj, ref)
    if obj.get("kind") == "RayJob":
        out += check_rayjob(obj, ref, policy)
    elif obj.get("kind") == "RayCluster":
        out += check_raycluster(obj, ref, policy)
    return out
