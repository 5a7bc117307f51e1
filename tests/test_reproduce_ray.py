"""Fingerprints from Ray Train workers, `env diff` between runs, `reproduce` (check and re-run).

One module-scoped training run (A) with tabulate 0.8.10 on the workers' path, set only through
the pipeline's runtime_env; a second run (B) of the same unit with tabulate 0.10.0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
import yaml

from tests.helpers import invoke_cli, json_out, small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
PKG_CACHE = Path(os.environ.get("RAYORCH_TEST_PKG_CACHE", "/tmp/rayorch-test-pkgs"))
DAY, PREV = "2026-10-01", "2026-09-30"
MARK = "from-runtime-env"


def tabulate_dir(version: str) -> str:
    """A `pip install --target` dir holding one version of a small pure-Python package."""
    target = PKG_CACHE / f"tabulate-{version}"
    if not (target / f"tabulate-{version}.dist-info").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             f"tabulate=={version}"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return str(target)


def _spec_data(cfg: Path, version: str) -> dict[str, Any]:
    data = yaml.safe_load(cfg.read_text())
    data["partitions"]["keys"] = {"city": ["SF"]}
    data["train"]["epochs"] = 2
    data.pop("registry")
    data["environment"] = {
        "runtime_env": {
            "env_vars": {"PYTHONPATH": tabulate_dir(version), "RAYORCH_TEST_MARK": MARK}
        },
        "env_vars_to_record": ["RAYORCH_TEST_MARK"],
    }
    return data


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    from rayorch.api import generate_data, run_backfill
    from rayorch.settings import load_settings
    from rayorch.spec import parse_pipeline

    tmp = tmp_path_factory.mktemp("repro")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAYORCH_HOME", str(tmp / "home"))
    mp.delenv("RAYORCH_DB_URL", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("RAYORCH_GIT_COMMIT", "test-commit")  # the repo's HEAD may move during the run
    mp.delenv("RAYORCH_TEST_MARK", raising=False)
    settings = load_settings()
    cfg = small_config(tmp, train=True)
    spec = parse_pipeline(_spec_data(cfg, "0.8.10"))
    generate_data(spec, PREV, DAY, settings=settings)
    s = run_backfill(spec, DAY, DAY, settings=settings)
    assert s.counts()["done"] == 3, s.to_dict()
    (run,) = s.to_dict()["trained"]
    yield {"settings": settings, "spec": spec, "run_a": run["mlflow_run_id"], "tmp": tmp,
           "cfg": cfg, "summary": s}  # fmt: skip
    mp.undo()


def _client(settings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.mlflow_uri)


def test_fingerprint_logged_from_train_worker(trained):
    from rayorch.lineage.tracking import Tracker

    st, run_a = trained["settings"], trained["run_a"]
    run = _client(st).get_run(run_a)
    tags = run.data.tags
    fp = json.loads(Tracker(st.mlflow_uri).read_artifact(run_a, "environment/fingerprint.json"))
    # Set only via the runtime_env of the training task: it reached the Ray Train worker, so
    # the Train workers inherit the task's runtime_env and the capture ran there.
    assert fp["env_vars"] == {"RAYORCH_TEST_MARK": MARK}
    assert fp["packages"]["tabulate"] == "0.8.10"  # only on the workers' PYTHONPATH
    assert fp["worker"] == "rank0" and fp["pid"] != os.getpid()
    assert "RAYORCH_TEST_MARK" not in os.environ
    assert tags["rayorch.env_digest"] == fp["digest"] == tags["rayorch.env_digest.rank0"]
    assert tags["rayorch.env.ray"].startswith("2.60") and tags["rayorch.env.torch"]
    assert tags["rayorch.env.git_commit"] == "test-commit"
    # the dataset input is searchable by digest, and the config is there for reproduce
    digest = tags["rayorch.dataset_digest"]
    found = _client(st).search_runs(
        [run.info.experiment_id], f"tags.`rayorch.dataset_digest` = '{digest}'"
    )
    assert [r.info.run_id for r in found] == [run_a]
    assert run.inputs.dataset_inputs[0].dataset.digest == digest[:32]
    # per-unit digests in the ledger: feature tasks and the train worker agree
    from rayorch.env.store import EnvStore

    store = EnvStore(st.db_url)
    caps = store.captures(backfill_id=trained["summary"].backfill_id)
    store.close()
    assert {c["worker"] for c in caps} == {"task", "rank0"}
    assert {c["digest"] for c in caps} == {fp["digest"]}


def test_check_of_an_unchanged_run_finds_it_the_same(trained):
    from rayorch.lineage.reproduce import check_run

    st, run_a = trained["settings"], trained["run_a"]
    chk = check_run(run_a, st)
    assert chk.same and chk.partitions_checked == 2 and chk.env is not None and chk.env.equal
    assert chk.current_dataset_digest == chk.recorded_dataset_digest
    assert chk.env.a_digest == _client(st).get_run(run_a).data.tags["rayorch.env_digest"]


def test_env_diff_names_package_version_change(trained):
    from rayorch.api import run_backfill
    from rayorch.spec import parse_pipeline

    st, run_a = trained["settings"], trained["run_a"]
    spec_b = parse_pipeline(_spec_data(trained["cfg"], "0.10.0"))
    s = run_backfill(spec_b, DAY, DAY, settings=st, steps="train", reprocess="all")
    (run,) = s.to_dict()["trained"]
    run_b = run["mlflow_run_id"]
    assert run_b != run_a
    env = {"RAYORCH_HOME": str(st.home)}
    proc = invoke_cli("env", "diff", run_a, run_b, "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    d = json_out(proc)
    assert [c["line"] for c in d["packages"]["changed"]] == ["tabulate 0.8.10 → 0.10.0"]
    assert d["packages"]["added"] == d["packages"]["removed"] == []
    assert d["image"] == d["python"] == d["env_vars"] == []
    human = invoke_cli("env", "diff", run_a, run_b, env=env)
    assert human.returncode == 1 and "tabulate 0.8.10 → 0.10.0" in human.stdout
    same = invoke_cli("env", "diff", run_a, run_a, "--json", env=env)
    assert same.returncode == 0 and json_out(same)["lines"] == []
    missing = invoke_cli("env", "diff", run_a, "0" * 32, env=env)
    assert missing.returncode == 2 and "no MLflow run" in missing.stderr


def test_reproduce_check_names_changed_partition(trained):

    from rayorch.data import outputs
    from rayorch.data.tables import StepTable, committed_rows
    from rayorch.partitions import PartitionKey

    st, spec, run_a = trained["settings"], trained["spec"], trained["run_a"]
    key = PartitionKey.parse(f"city=SF/date={PREV}")
    step = StepTable.for_spec(spec, st)
    table = committed_rows(spec, st, [key]).drop_columns(["city", "date"])
    changed = table.set_column(
        table.column_names.index("amount_log"),
        "amount_log",
        pc.add(table.column("amount_log"), 1.0).cast("float32"),
    )
    staged = outputs.stage(step, key, changed, run_key="manual", token=10_000,
                           unique_key=list(spec.features.unique_key))  # fmt: skip
    [published] = step.publish_many([outputs.publish_item(staged)])
    assert published.outcome.name == "REPLACED"
    new_hash = step.live([key])[str(key)].content_hash

    env = {"RAYORCH_HOME": str(st.home)}
    proc = invoke_cli("reproduce", run_a, "--check", "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    d = json_out(proc)
    assert [c["partition"] for c in d["partitions_changed"]] == [str(key)]
    assert d["partitions_changed"][0]["status"] == "CHANGED"
    assert d["partitions_changed"][0]["current_hash"] == new_hash
    assert d["packages_changed"] == [] and d["environment"]["equal"]
    # time travel: the re-run reads the snapshot the run read, not the reprocessed partition
    from rayorch.lineage.reproduce import reproduce_run

    doc = reproduce_run(run_a, st)
    assert doc["reran"] and doc["inputs_same"] and doc["metrics_match"], doc
    assert doc["snapshot_id"] == int(_client(st).get_run(run_a).data.tags["rayorch.snapshot_id"])
    assert doc["check"]["partitions_changed"][0]["partition"] == str(key)
    assert {m["metric"] for m in doc["metrics"]} >= {"train_loss", "val_loss", "val_auc"}
    # the re-run is a new MLflow run that names what it reproduces, in the same environment
    new = _client(st).get_run(doc["new_run_id"])
    assert doc["new_run_id"] != run_a
    assert new.data.tags["rayorch.reproduces"] == run_a
    assert new.data.tags["rayorch.reproduce.metrics_match"] == "true"
    assert (
        new.data.tags["rayorch.env_digest"]
        == _client(st).get_run(run_a).data.tags["rayorch.env_digest"]
    )
    # the unit's own run is still the one found again on resume
    from rayorch.lineage.tracking import Tracker

    t = Tracker(st.mlflow_uri)
    exp = t.experiment_id(f"rayorch/{spec.name}")
    assert t.find_run(exp, new.data.tags["rayorch.run_key"], 0) == run_a
