"""cluster/examples/ is current (re-rendering gives the same bytes) and valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayorch.kube.bundle import render_bundle
from rayorch.kube.manifests import dump_documents, load_documents
from rayorch.kube.render_rayjob import RenderRequest
from rayorch.kube.validate import validate_documents
from rayorch.scheduling.quota import load_cluster
from rayorch.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "cluster" / "examples"
# (directory, config, start, end, namespace, cluster_only): what cluster/README.md renders
CASES = [
    ("fraud", "configs/fraud.yaml", "2026-10-01", "2026-10-03", None, False),
    ("pricing", "configs/pricing.yaml", "2026-10-01", "2026-10-07", "backfill", False),
    ("fraud-notebook", "configs/fraud.yaml", "2026-10-01", "2026-10-03", None, True),
]


@pytest.mark.parametrize(("name", "config", "start", "end", "namespace", "cluster_only"), CASES)
def test_examples_are_current(
    name: str, config: str, start: str, end: str, namespace: str | None, cluster_only: bool
) -> None:
    req = RenderRequest(
        spec=load_pipeline(ROOT / config),
        cluster=load_cluster(ROOT / "configs/cluster.yaml"),
        config_ref=config,
        cluster_ref="configs/cluster.yaml",
        start=start,
        end=end,
        namespace=namespace,
    )
    bundle = render_bundle(req, cluster_only=cluster_only)
    on_disk = sorted(p.name for p in (EXAMPLES / name).glob("*.yaml"))
    assert on_disk == sorted(bundle.files)
    for file, objs in bundle.files.items():
        assert (EXAMPLES / name / file).read_text() == dump_documents(objs), (
            f"cluster/examples/{name}/{file} is stale: re-render it with `rayorch kube render "
            f"-c {config} --start {start} --end {end}"
            f"{' --namespace ' + namespace if namespace else ''}"
            f"{' --cluster-only' if cluster_only else ''} -o cluster/examples/{name}`"
        )


def test_examples_are_valid() -> None:
    docs = [d for p in sorted(EXAMPLES.glob("*/*.yaml")) for d in load_documents(p)]
    assert {d.obj["kind"] for d in docs} >= {
        "RayJob",
        "RayCluster",
        "ClusterQueue",
        "LocalQueue",
        "ResourceFlavor",
        "WorkloadPriorityClass",
    }
    report = validate_documents(docs, policy=load_cluster(ROOT / "configs/cluster.yaml"))
    assert report.ok, [str(v) for v in report.violations]
