"""A real rayorch backfill under the scheduler on a 2-node fake-GPU Ray cluster (8 GPUs each).

The backfill's training unit (1 worker x 8 GPUs, Ray Train on CPU torch with the gloo backend)
borrows GPUs in namespace ``backfill``; a production request for 2x8 GPUs then needs them. The
scheduler asks the unit to yield; it checkpoints and stops; production is admitted by the cycle
its release runs; once production ends, the unit is re-admitted and resumes from its
checkpoint in the same MLflow run; every unit is committed exactly once.

Like tests/test_scheduling_cluster.py the scenario runs in a subprocess with its own cluster,
so the session Ray of other tests cannot interfere. Alone: ``python tests/test_scheduling_backfill.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-10-01"
TRAIN_KEY = f"fraud/train/date={DAY}"


@pytest.fixture(scope="module")
def scenario() -> dict:
    from tests.helpers import run_scenario

    return run_scenario(__file__, timeout=300, unset=("RAYORCH_DB_URL", "MLFLOW_TRACKING_URI"))


def _events(s: dict, event: str, wid: str) -> list[dict]:
    return [e for e in s["events"] if e["event"] == event and e["workload_id"] == wid]


@pytest.mark.slow
def test_training_unit_borrows_and_production_preempts_it(scenario):
    s = scenario
    [first] = _events(s, "admitted", TRAIN_KEY)[:1]
    assert s["train_borrowed"] is True  # namespace backfill has no GPU quota of its own
    assert s["prod_first"]["outcome"] == "PREEMPT"
    assert s["prod_first"]["victims"] == [TRAIN_KEY]
    assert first["nodes"] and len(first["nodes"]) == 1  # 1x8 packs on one node


@pytest.mark.slow
def test_production_admitted_by_the_cycle_after_the_yield(scenario):
    s = scenario
    [requeued] = _events(s, "requeued", TRAIN_KEY)
    [admitted] = _events(s, "admitted", "prod-daily")
    assert admitted["seq"] > requeued["seq"]
    assert admitted["cycle"] == requeued["cycle"] + 1  # the very cycle the release ran
    assert sorted(admitted["nodes"]) == sorted(s["node_ids"])  # 2x8 takes both nodes


@pytest.mark.slow
def test_backfill_unit_resumes_from_its_checkpoint(scenario):
    s = scenario
    assert s["state"] == "SUCCEEDED", s["summary"]
    # yielded while production needed the GPUs, re-admitted after production released them
    assert len(_events(s, "admitted", TRAIN_KEY)) == 2
    [prod_released] = _events(s, "released", "prod-daily")
    assert _events(s, "admitted", TRAIN_KEY)[1]["seq"] > prod_released["seq"]
    starts = s["progress"]["history"]
    assert len(starts) == 2 and starts[0]["from_step"] == 0
    assert starts[1]["from_step"] > 0  # the resumed run started from the yield checkpoint
    assert starts[1]["from_step"] >= s["step_at_preempt"]
    assert s["restart_from_step"] == [[0, 0.0], [1, float(starts[1]["from_step"])]]
    assert s["mlflow_runs_for_unit"] == 1  # the same MLflow run continued
    assert s["progress"]["status"] == "finished"


@pytest.mark.slow
def test_nothing_double_committed(scenario):
    s = scenario
    commits = s["commit_counts"]
    assert set(commits) == set(s["planned"])
    assert all(n == 1 for n in commits.values()), commits


@pytest.mark.slow
def test_every_unit_admitted_then_released_scheduler_left_empty(scenario):
    s = scenario
    feats = [k for k in s["planned"] if "/features/" in k]
    for k in feats:
        assert len(_events(s, "admitted", k)) == 1 and len(_events(s, "released", k)) == 1
    assert s["final_status"]["running"] == [] and s["final_status"]["queue"] == []


# --- the scenario (runs in the subprocess) ---------------------------------------------------
def _config(tmp: Path) -> Path:
    import yaml

    sys.path.insert(0, str(REPO))
    from tests.helpers import small_config

    # One city (2 feature units, not 6) with the rows of three: the same 24 steps an epoch.
    path = small_config(tmp, train=True, rows=60)
    cfg = yaml.safe_load(path.read_text())
    cfg["partitions"]["keys"] = {"city": ["SF"]}
    cfg.pop("registry")  # nothing here reads the registered model; log_model costs seconds
    cfg["train"].update(
        {
            "entrypoint": "rayorch.examples.testing:ft_train_loop",
            "epochs": 3,  # 24 steps each; the yield comes ~10 steps after step 8
            "batch_size": 16,
            "log_every_steps": 1,
            "yield_timeout_s": 30,
            # fake GPUs: Ray accounts 8 GPUs; torch (CPU build) trains on CPU over gloo
            "torch_backend": "gloo",
            "scaling": {"num_workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 8},
            "checkpoint": {"every_epochs": 1},
            "params": {"sleep_per_step_s": 0.05},
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


def _wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def main() -> dict:
    import ray
    from mlflow.tracking import MlflowClient

    from rayorch.api import generate_data, open_ledger, run_backfill
    from rayorch.scheduling.client import get_scheduler
    from rayorch.scheduling.model import Request
    from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
    from rayorch.scheduling.shapes import JobShape
    from rayorch.settings import load_settings
    from rayorch.spec import load_pipeline
    from rayorch.train.control import RunFiles
    from rayorch.train.runner import train_run_name
    from tests.helpers import fake_gpu_cluster

    tmp = Path(tempfile.mkdtemp())
    settings = load_settings(tmp / "home")
    spec = load_pipeline(_config(tmp))
    out: dict[str, Any] = {}
    with fake_gpu_cluster(2, num_cpus=4):
        out["node_ids"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        cs = ClusterSpec(
            namespaces={
                "production": NamespaceQuota(gpus=16, cpus=4, max_concurrent_units=4),
                "backfill": NamespaceQuota(gpus=0, cpus=4, max_concurrent_units=8, can_borrow=True),
            },
            scheduling_cycle_s=0.2,
        )
        sched = get_scheduler(cs)
        generate_data(spec, "2026-09-30", DAY, settings=settings)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["s"] = run_backfill(
                    spec, DAY, DAY, settings=settings, cluster=cs, namespace="backfill"
                )
            except BaseException as e:  # reported by the main thread
                box["error"] = repr(e)

        th = threading.Thread(target=run)
        th.start()
        storage = settings.resolve(spec.train.checkpoint.storage_path)
        files = RunFiles(storage, train_run_name(TRAIN_KEY, 0))
        _wait_for(
            lambda: (files.read_progress() or {}).get("step", 0) >= 8 or "error" in box,
            150,
            "training to reach step 8",
        )
        assert "error" not in box, box["error"]
        st = ray.get(sched.status.remote())
        out["train_borrowed"] = any(
            r["borrowed"] for r in st["running"] if r["workload_id"] == TRAIN_KEY
        )
        out["step_at_preempt"] = files.read_progress()["step"]
        prod = Request("prod-daily", "production", JobShape(2, 8, 0.5), PriorityClass.PRODUCTION)
        out["prod_first"] = ray.get(sched.submit.remote(prod)).to_dict()
        _wait_for(
            lambda: any(
                e["event"] == "admitted" and e["workload_id"] == "prod-daily"
                for e in ray.get(sched.events.remote())
            ),
            60,
            "production to be admitted",
        )
        _wait_for(  # production "runs"; the backfill unit waits in the queue
            lambda: any(
                q["workload_id"] == TRAIN_KEY for q in ray.get(sched.status.remote())["queue"]
            ),
            60,
            "the yielded unit to wait in the queue",
        )
        ray.get(sched.release.remote("prod-daily"))
        th.join(timeout=150)
        assert not th.is_alive(), "the backfill did not finish"
        assert "error" not in box, box["error"]
        s = box["s"]
        out["state"] = s.state.value
        out["summary"] = s.to_dict()
        out["planned"] = sorted(s.phases)
        out["events"] = ray.get(sched.events.remote())
        out["final_status"] = ray.get(sched.status.remote())
        out["progress"] = files.read_progress()
        run_id = s.outputs[TRAIN_KEY]["mlflow_run_id"]
        client = MlflowClient(settings.mlflow_uri)
        out["restart_from_step"] = sorted(
            [m.step, m.value] for m in client.get_metric_history(run_id, "restart_from_step")
        )
        exp = client.get_experiment_by_name(f"rayorch/{spec.name}")
        out["mlflow_runs_for_unit"] = len(
            client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`rayorch.run_key` = '{TRAIN_KEY}'"
            )
        )
        ledger = open_ledger(settings)
        counts: dict[str, int] = {}
        for e in ledger.events(event_name="COMMIT"):
            counts[e["run_key"]] = counts.get(e["run_key"], 0) + 1
        ledger.close()
        out["commit_counts"] = counts
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(json.dumps(main(), default=str))
