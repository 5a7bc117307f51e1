"""Strict offline validation: each bad case is refused, naming object, field path and rule."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayorch.kube.manifests import dump_documents, load_documents
from rayorch.kube.roundtrip import check_pod_templates
from rayorch.kube.validate import ManifestInvalidError, validate_objects
from rayorch.scheduling.quota import load_cluster

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "cluster" / "examples"
POLICY = load_cluster(ROOT / "configs/cluster.yaml")


def example(name: str) -> list[dict[str, Any]]:
    return [d.obj for d in load_documents(EXAMPLES / name)]


RAYJOB = example("pricing/rayjob.yaml")[0]  # namespace backfill: digests required
KUEUE = example("pricing/kueue.yaml")


def worker(job: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][i]


def container(job: dict[str, Any]) -> dict[str, Any]:
    return worker(job)["template"]["spec"]["containers"][0]


def _unknown_field(j: dict[str, Any]) -> None:
    container(j)["imagePullPolicyy"] = "Always"


def _unknown_top_level(j: dict[str, Any]) -> None:
    j["spec"]["entryPoint"] = j["spec"]["entrypoint"]


def _tag_image(j: dict[str, Any]) -> None:
    container(j)["image"] = "registry.example.com/rayorch/ray:latest"


def _no_queue(j: dict[str, Any]) -> None:
    del j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]


def _long_name(j: dict[str, Any]) -> None:
    j["metadata"]["name"] = "p" * 48


def _shutdown_off(j: dict[str, Any]) -> None:
    j["spec"]["shutdownAfterJobFinishes"] = False


def _head_group(j: dict[str, Any]) -> None:
    worker(j)["groupName"] = "head"


def _cluster_selector(j: dict[str, Any]) -> None:
    j["spec"]["clusterSelector"] = {"ray.io/cluster": "shared"}


def _too_many_groups(j: dict[str, Any]) -> None:
    g = worker(j)
    j["spec"]["rayClusterSpec"]["workerGroupSpecs"] = [
        {**copy.deepcopy(g), "groupName": f"g{i}"} for i in range(18)
    ]


def _autoscaling(j: dict[str, Any]) -> None:
    j["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] = True


def _inline_secret(j: dict[str, Any]) -> None:
    container(j)["env"][1] = {"name": "RAYORCH_DB_URL", "value": "postgresql://u:pw@db/rayorch"}


def _short_grace(j: dict[str, Any]) -> None:
    worker(j)["template"]["spec"]["terminationGracePeriodSeconds"] = 30


def _bad_type(j: dict[str, Any]) -> None:
    worker(j)["replicas"] = "four"


def _bad_enum(j: dict[str, Any]) -> None:
    j["spec"]["submissionMode"] = "BatchMode"


def _bad_priority(j: dict[str, Any]) -> None:
    j["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"


def _no_job_id(j: dict[str, Any]) -> None:
    del j["spec"]["jobId"]


def _bad_runtime_env(j: dict[str, Any]) -> None:
    j["spec"]["runtimeEnvYAML"] = "- just\n- a list\n"


def _cel_deletion_strategy(j: dict[str, Any]) -> None:
    j["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}


def _gpu_in_requests_only(j: dict[str, Any]) -> None:
    container(j)["resources"]["requests"]["nvidia.com/gpu"] = "1"


def _two_topology_requests(j: dict[str, Any]) -> None:
    worker(j)["template"]["metadata"]["annotations"] = {
        "kueue.x-k8s.io/podset-preferred-topology": "rack",
        "kueue.x-k8s.io/podset-required-topology": "block",
    }


W0 = "spec.rayClusterSpec.workerGroupSpecs[0]"
C0 = f"{W0}.template.spec.containers[0]"


@pytest.mark.parametrize(
    ("mutate", "path", "rule"),
    [
        (_unknown_field, f"{C0}.imagePullPolicyy", "schema: unknown field"),
        (_unknown_top_level, "spec.entryPoint", "schema: unknown field"),
        (_tag_image, f"{C0}.image", "rayorch: image digest"),
        (_no_queue, "metadata.labels.kueue.x-k8s.io/queue-name", "kueue: queue label"),
        (_long_name, "metadata.name", "kuberay: name"),
        (_shutdown_off, "spec.shutdownAfterJobFinishes", "kueue: shutdownAfterJobFinishes"),
        (_head_group, f"{W0}.groupName", "kueue: reserved name"),
        (_cluster_selector, "spec.clusterSelector", "kueue: clusterSelector"),
        (_too_many_groups, "spec.rayClusterSpec.workerGroupSpecs", "kueue: pod sets"),
        (_autoscaling, "spec.rayClusterSpec.enableInTreeAutoscaling", "kueue: no autoscaling"),
        (_inline_secret, f"{C0}.env[1].value", "rayorch: secrets by reference"),
        (
            _short_grace,
            f"{W0}.template.spec.terminationGracePeriodSeconds",
            "rayorch: grace period",
        ),
        (_bad_type, f"{W0}.replicas", "schema: type"),
        (_bad_enum, "spec.submissionMode", "kuberay: submissionMode"),
        (_bad_priority, "metadata.labels.kueue.x-k8s.io/priority-class", "rayorch: priority class"),
        (_no_job_id, "spec.jobId", "rayorch: jobId"),
        (_bad_runtime_env, "spec.runtimeEnvYAML", "kuberay: runtimeEnvYAML"),
        (
            _cel_deletion_strategy,
            "spec.deletionStrategy",
            "cel: ((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))",
        ),
        (_gpu_in_requests_only, f"{C0}.resources.limits", "rayorch: gpu limits"),
        (_two_topology_requests, f"{W0}.template.metadata.annotations", "kueue: topology request"),
    ],
)
def test_each_bad_rayjob_is_refused(
    mutate: Callable[[dict[str, Any]], None], path: str, rule: str
) -> None:
    job = copy.deepcopy(RAYJOB)
    mutate(job)
    report = validate_objects([job], policy=POLICY, source="rayjob.yaml")
    hits = [v for v in report.violations if v.path == path and v.rule == rule]
    assert hits, [str(v) for v in report.violations]
    text = str(hits[0])
    assert "RayJob backfill/" in text and path in text and rule in text
    with pytest.raises(ManifestInvalidError) as e:
        report.raise_if_invalid()
    assert e.value.exit_code == 2
    assert any(v["path"] == path for v in e.value.fields["violations"])


def test_rendered_objects_pass_and_cel_rules_ran() -> None:
    report = validate_objects([*KUEUE, RAYJOB], policy=POLICY)
    assert report.ok, [str(v) for v in report.violations]
    assert report.cel_rules_evaluated > 10
    assert report.cel_rules_unevaluated == ()


@pytest.mark.parametrize(
    ("kind", "mutate", "path", "rule_part"),
    [
        # CEL: borrowingLimit must be nil when cohort is empty
        ("ClusterQueue", lambda o: o["spec"].pop("cohortName"), "spec", "borrowingLimit"),
        # CEL: at least one nodeLabel is required when topology is set
        (
            "ResourceFlavor",
            lambda o: o.setdefault("spec", {}).update({"topologyName": "t", "nodeLabels": {}}),
            "spec",
            "nodeLabels.size()",
        ),
        (
            "LocalQueue",
            lambda o: o["spec"].update({"clusterQueue": "nope"}),
            "spec.clusterQueue",
            "rayorch: reference",
        ),
        ("WorkloadPriorityClass", lambda o: o.update({"value": "high"}), "value", "schema: type"),
        (
            "ClusterQueue",
            lambda o: o["metadata"].update({"namespace": "x"}),
            "metadata.namespace",
            "meta: scope",
        ),
        (
            "LocalQueue",
            lambda o: o["spec"].update({"stopPolicy": "Later"}),
            "spec.stopPolicy",
            "schema: enum",
        ),
    ],
)
def test_bad_kueue_objects_are_refused(
    kind: str, mutate: Callable[[dict[str, Any]], Any], path: str, rule_part: str
) -> None:
    objs = copy.deepcopy(KUEUE)
    target = next(
        o
        for o in objs
        if o["kind"] == kind and (kind != "ClusterQueue" or o["metadata"]["name"] == "rayorch-risk")
    )
    if kind == "ClusterQueue" and "borrowingLimit" in rule_part:
        target = next(o for o in objs if o["metadata"]["name"] == "rayorch-default")  # limit 0
    mutate(target)
    report = validate_objects(objs)
    hits = [v for v in report.violations if v.path == path and rule_part in (v.rule + v.message)]
    assert hits, [str(v) for v in report.violations]


def test_nullable_is_honoured() -> None:
    job = copy.deepcopy(RAYJOB)
    job["status"] = {"rayClusterStatus": {"lastUpdateTime": None}}
    assert validate_objects([job], policy=POLICY).ok
    job["status"] = {"jobId": None}
    paths = [(v.path, v.rule) for v in validate_objects([job], policy=POLICY).violations]
    assert ("status.jobId", "schema: type") in paths


def test_unknown_kind_is_refused() -> None:
    obj = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x", "namespace": "d"}}
    report = validate_objects([obj])
    assert [v.rule for v in report.violations] == ["schema: known kind"]


def test_pod_templates_round_trip_through_the_client_models() -> None:
    job = copy.deepcopy(RAYJOB)
    assert check_pod_templates(job, "RayJob x") == []
    container(job)["notAField"] = 1
    container(job)["ports"] = [{"containerPort": "http"}]
    found = check_pod_templates(job, "RayJob x")
    assert found and all(v.rule == "kubernetes: V1PodTemplateSpec" for v in found)
    assert found[0].path.startswith(f"{W0}.template")


def test_validate_cli_names_file_object_path_and_rule(tmp_path: Path) -> None:
    job = copy.deepcopy(RAYJOB)
    _unknown_field(job)
    _no_queue(job)
    bad = tmp_path / "rayjob.yaml"
    bad.write_text(dump_documents([job]))
    good = EXAMPLES / "pricing" / "kueue.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayorch.cli.app",
            "kube",
            "validate",
            str(good),
            str(bad),
            "--cluster",
            str(ROOT / "configs/cluster.yaml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["ok"] is False
    got = {(v["source"], v["path"], v["rule"]) for v in doc["violations"]}
    assert (f"{bad}#0", f"{C0}.imagePullPolicyy", "schema: unknown field") in got
    assert (f"{bad}#0", "metadata.labels.kueue.x-k8s.io/queue-name", "kueue: queue label") in got
