"""Rendering RayJobs, RayClusters and Kueue objects: table-driven, pure, no Ray."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayorch.env.errors import ImageNotPinnedError
from rayorch.errors import ConfigError
from rayorch.kube.bundle import render_bundle
from rayorch.kube.manifests import dump_documents
from rayorch.kube.names import job_identity
from rayorch.kube.render_kueue import split_gpus
from rayorch.kube.render_rayjob import PRIORITY_LABEL, QUEUE_LABEL, RenderRequest
from rayorch.scheduling.quota import parse_cluster
from rayorch.spec import parse_pipeline

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "registry.example.com/rayorch/ray@sha256:" + "ab" * 32
TAG = "registry.example.com/rayorch/ray:2.60.0"


def pipeline(**train: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "configs/fraud.yaml").read_text())
    data["train"]["scaling"].update(train)
    return data


def cluster(nodes: list[str] | None = None, **kube: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "configs/cluster.yaml").read_text())
    if nodes is not None:
        data["nodes"] = [{"shape": s, "count": 2, "cpus": 64} for s in nodes]
    data["kubernetes"].update(kube)
    return data


def render(p: dict[str, Any], c: dict[str, Any], **kw: Any) -> Any:
    cluster_only = kw.pop("cluster_only", False)
    req = RenderRequest(
        spec=parse_pipeline(p),
        cluster=parse_cluster(c),
        config_ref="configs/fraud.yaml",
        cluster_ref="configs/cluster.yaml",
        start=kw.pop("start", "2026-10-01"),
        end=kw.pop("end", "2026-10-03"),
        **kw,
    )
    return render_bundle(req, cluster_only=cluster_only)


def job_of(bundle: Any) -> dict[str, Any]:
    return bundle.files.get("rayjob.yaml", bundle.files.get("raycluster.yaml"))[0]


def workers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = job["spec"].get("rayClusterSpec", job["spec"])
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


@pytest.mark.parametrize(
    ("scaling", "nodes", "group", "replicas", "gpus", "accel_label"),
    [
        ({"num_workers": 4, "gpus_per_worker": 2}, ["A100:8"], "gpu-a100", 1, 8, "A100"),
        ({"num_workers": 16, "gpus_per_worker": 1}, ["A100:8"], "gpu-a100", 2, 8, "A100"),
        ({"num_workers": 3, "gpus_per_worker": 8}, ["A100:8"], "gpu-a100", 3, 8, "A100"),
        ({"num_workers": 1, "gpus_per_worker": 2}, ["A100:8"], "gpu-a100", 1, 2, "A100"),
        # best fit: 4-GPU H100 nodes hold a 4-GPU worker more tightly than 8-GPU A100s
        ({"num_workers": 2, "gpus_per_worker": 4}, ["A100:8", "H100:4"], "gpu-h100", 2, 4, None),
        ({"num_workers": 2, "gpus_per_worker": 1}, ["8"], "gpu", 1, 2, None),
    ],
)
def test_gpu_shapes_become_worker_groups(
    scaling: dict[str, Any],
    nodes: list[str],
    group: str,
    replicas: int,
    gpus: int,
    accel_label: str | None,
) -> None:
    b = render(pipeline(**scaling), cluster(nodes))
    groups = workers(job_of(b))
    assert list(groups) == ["cpu", group]
    g = groups[group]
    assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (replicas,) * 3
    c = g["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    tol = g["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tol
    selector = g["template"]["spec"].get("nodeSelector")
    if accel_label:  # configured in cluster.yaml's kubernetes.accelerators
        assert selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    else:
        assert selector is None
    # the CPU group never asks for GPUs
    assert (
        "nvidia.com/gpu"
        not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    assert b.report.ok


def test_cpu_training_has_no_gpu_group() -> None:
    groups = workers(job_of(render(pipeline(), cluster())))
    assert list(groups) == ["cpu"]
    # risk: 4 concurrent feature tasks x 1 CPU -> one 4-CPU pod
    assert groups["cpu"]["replicas"] == 1


def test_worker_larger_than_any_node_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        render(pipeline(num_workers=1, gpus_per_worker=16), cluster(["A100:8"]))
    assert e.value.fields["field"] == "train.scaling.gpus_per_worker"
    assert "A100:8" in e.value.message


@pytest.mark.parametrize(
    ("namespace", "priority", "want_ns", "want_prio", "image"),
    [
        (None, None, "risk", "backfill", TAG),  # risk does not require digests
        ("production", "production", "production", "production", DIGEST),
        ("backfill", None, "backfill", "backfill", DIGEST),
        ("default", "production", "default", "production", TAG),
    ],
)
def test_namespaces_and_priorities_become_labels(
    namespace: str | None, priority: str | None, want_ns: str, want_prio: str, image: str
) -> None:
    b = render(pipeline(), cluster(image=image), namespace=namespace, priority=priority)
    job = job_of(b)
    meta = job["metadata"]
    assert meta["namespace"] == want_ns
    assert meta["labels"][QUEUE_LABEL] == "rayorch"
    assert meta["labels"][PRIORITY_LABEL] == want_prio
    assert f"--namespace {want_ns} --priority {want_prio}" in job["spec"]["entrypoint"]
    local = [o for o in b.files["kueue.yaml"] if o["kind"] == "LocalQueue"]
    assert [(o["metadata"]["namespace"], o["spec"]["clusterQueue"]) for o in local] == [
        (want_ns, f"rayorch-{want_ns}")
    ]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == image


@pytest.mark.parametrize(
    ("pipeline_image", "cluster_image", "namespace", "field"),
    [
        (TAG, DIGEST, "production", "environment.image"),
        (None, TAG, "backfill", "kubernetes.image"),
        ("registry.example.com/rayorch/ray", DIGEST, "production", "environment.image"),
    ],
)
def test_tag_only_images_are_refused_where_digests_are_required(
    pipeline_image: str | None, cluster_image: str, namespace: str, field: str
) -> None:
    p = pipeline()
    if pipeline_image:
        p["environment"] = {"image": pipeline_image}
    with pytest.raises(ImageNotPinnedError) as e:
        render(p, cluster(image=cluster_image), namespace=namespace)
    assert e.value.fields["field"] == field
    assert e.value.fields["namespace"] == namespace


def test_pipeline_image_wins_and_runtime_env_is_rendered() -> None:
    p = pipeline()
    p["environment"] = {"image": DIGEST, "runtime_env": {"env_vars": {"B": "2", "A": "1"}}}
    job = job_of(render(p, cluster(image=TAG), namespace="production"))
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"env_vars": {"A": "1", "B": "2"}}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == DIGEST


def test_rayjob_spec_invariants() -> None:
    job = job_of(render(pipeline(), cluster(), keys={"city": ["SF", "NYC"]}))
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] == 3
    assert "clusterSelector" not in spec
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is False
    assert spec["entrypoint"] == (
        "python jobs/backfill.py --config configs/fraud.yaml --start 2026-10-01 --end "
        "2026-10-03 --keys city=SF,NYC --cluster configs/cluster.yaml --namespace risk "
        "--priority backfill"
    )
    # grace >= max(train.yield_timeout_s=120, yield_grace_s=300) + margin, on every pod
    for g in [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]:
        assert g["template"]["spec"]["terminationGracePeriodSeconds"] == 330
        for c in g["template"]["spec"]["containers"]:
            assert all("value" not in e for e in c["env"])  # secrets by reference only
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
            assert refs["RAYORCH_DB_URL"] == {"name": "rayorch-cluster", "key": "db-url"}


def test_grace_period_follows_a_long_yield_timeout() -> None:
    p = pipeline()
    p["train"]["yield_timeout_s"] = 900.5
    job = job_of(render(p, cluster()))
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["terminationGracePeriodSeconds"] == 901 + 30


@pytest.mark.parametrize("topology", [False, True])
def test_topology_on_and_off(topology: bool) -> None:
    levels = ["example.com/block", "example.com/rack", "kubernetes.io/hostname"]
    kube = {"topology_levels": levels} if topology else {}
    b = render(pipeline(num_workers=4, gpus_per_worker=2), cluster(["A100:8"], **kube))
    kueue = b.files["kueue.yaml"]
    topo = [o for o in kueue if o["kind"] == "Topology"]
    flavor = next(o for o in kueue if o["metadata"]["name"] == "gpu-a100")
    gpu_tpl = workers(job_of(b))["gpu-a100"]["template"]
    cpu_tpl = workers(job_of(b))["cpu"]["template"]
    annotation = gpu_tpl["metadata"].get("annotations", {})
    if topology:
        assert topo[0]["spec"]["levels"] == [{"nodeLabel": x} for x in levels]
        assert flavor["spec"]["topologyName"] == "rayorch-topology"
        assert annotation == {"kueue.x-k8s.io/podset-preferred-topology": "example.com/rack"}
    else:
        assert topo == []
        assert "topologyName" not in flavor["spec"]
        assert annotation == {}
    assert "annotations" not in cpu_tpl["metadata"]
    assert b.report.ok


def test_required_topology_level() -> None:
    kube = {"topology_levels": ["example.com/rack"], "topology_mode": "required"}
    b = render(pipeline(num_workers=2, gpus_per_worker=4), cluster(["A100:8"], **kube))
    ann = workers(job_of(b))["gpu-a100"]["template"]["metadata"]["annotations"]
    assert ann == {"kueue.x-k8s.io/podset-required-topology": "example.com/rack"}


def test_cluster_queues_mirror_rayorch_quotas() -> None:
    c = cluster(["A100:8", "H100:8"])
    c["nodes"][1]["count"] = 1  # 16 A100 + 8 H100
    c["namespaces"]["risk"]["can_borrow"] = False
    c["namespaces"]["backfill"]["borrowing_limit_gpus"] = 4
    kueue = render(pipeline(), c).files["kueue.yaml"]
    cqs = {o["metadata"]["name"]: o["spec"] for o in kueue if o["kind"] == "ClusterQueue"}
    assert set(cqs) == {"rayorch-production", "rayorch-backfill", "rayorch-risk", "rayorch-default"}
    prod = cqs["rayorch-production"]
    gpu = {f["name"]: f["resources"][0] for f in prod["resourceGroups"][1]["flavors"]}
    # 16 guaranteed GPUs split 2:1 over the A100 and H100 flavors, no borrowing limit
    assert gpu == {
        "gpu-a100": {"name": "nvidia.com/gpu", "nominalQuota": "11"},
        "gpu-h100": {"name": "nvidia.com/gpu", "nominalQuota": "5"},
    }
    assert prod["preemption"] == {
        "withinClusterQueue": "LowerPriority",
        "reclaimWithinCohort": "Any",
        "borrowWithinCohort": {"policy": "LowerPriority", "maxPriorityThreshold": 100},
    }
    backfill_gpu = cqs["rayorch-backfill"]["resourceGroups"][1]["flavors"][0]["resources"][0]
    assert backfill_gpu["borrowingLimit"] == "4"
    risk = cqs["rayorch-risk"]
    assert risk["preemption"]["borrowWithinCohort"] == {"policy": "Never"}
    assert all(
        r["borrowingLimit"] == "0"
        for g in risk["resourceGroups"]
        for f in g["flavors"]
        for r in f["resources"]
    )
    assert {
        o["metadata"]["name"]: o["value"] for o in kueue if o["kind"] == "WorkloadPriorityClass"
    } == {
        "production": 1000,
        "backfill": 100,
    }


@pytest.mark.parametrize(
    ("total", "capacity", "want"),
    [
        (16, {"A100": 16, "H100": 8}, {"A100": 11, "H100": 5}),
        (8, {"A100": 24}, {"A100": 8}),
        (0, {"A100": 8, "H100": 8}, {"A100": 0, "H100": 0}),
        (3, {"A": 8, "B": 8, "C": 8}, {"A": 1, "B": 1, "C": 1}),
        (5, {}, {}),
    ],
)
def test_split_gpus(total: int, capacity: dict[str, int], want: dict[str, int]) -> None:
    assert split_gpus(total, capacity) == want


def test_cluster_only_renders_a_raycluster() -> None:
    b = render(pipeline(), cluster(), cluster_only=True)
    rc = job_of(b)
    assert rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"] == "fraud-risk-interactive"
    assert rc["metadata"]["labels"][QUEUE_LABEL] == "rayorch"
    assert "entrypoint" not in rc["spec"]
    assert b.report.ok


def test_rendering_is_deterministic_and_ids_follow_the_parameters() -> None:
    a = render(pipeline(), cluster())
    b = render(copy.deepcopy(pipeline()), cluster())
    assert dump_documents(a.objects()) == dump_documents(b.objects())
    other = render(pipeline(), cluster(), keys={"city": ["SF"]})
    assert job_of(a)["metadata"]["name"] != job_of(other)["metadata"]["name"]
    assert job_of(a)["spec"]["jobId"] != job_of(other)["spec"]["jobId"]
    # the same backfill under another priority is the same job (one backfill, one RayJob)
    prod = render(pipeline(), cluster(), priority="production")
    assert job_of(prod)["spec"]["jobId"] == job_of(a)["spec"]["jobId"]


@pytest.mark.parametrize("pipeline_name", ["a" * 60, "9lives", "Fraud_Detector-v2-"])
def test_names_are_short_dns1035_labels(pipeline_name: str) -> None:
    ident = job_identity(
        {
            "pipeline": pipeline_name,
            "start": "2026-10-01",
            "end": "2026-12-31",
            "keys": {},
            "steps": ["features"],
        }
    )
    assert len(ident.name) <= 47
    assert ident.name[0].isalpha() and ident.name[-1].isalnum()
    assert ident.name == ident.name.lower()
    assert ident.name.endswith("-20261001-20261231-" + ident.params_hash[:8])


def test_unknown_namespace_and_priority_are_config_errors() -> None:
    with pytest.raises(ConfigError) as e:
        render(pipeline(), cluster(), namespace="nope")
    assert e.value.fields["field"] == "namespace"
    with pytest.raises(ConfigError) as e:
        render(pipeline(), cluster(), priority="urgent")
    assert e.value.fields["field"] == "priority"
