"""Fault-tolerant training on a real local Ray with torch (CPU, tiny MLP): a killed worker,
a SIGKILLed driver, a straggler and a yield request, each checked on the MLflow step history.

The tests share one home whose features are built once (``ft_home``); each trains the unit of
its own day, so no test sees another's ledger units, checkpoints or MLflow runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.machine import Phase
from rayorch.ledger.states import BackfillState, UnitState
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline
from rayorch.train.control import RunFiles
from rayorch.train.runner import train_run_name
from tests.helpers import REPO, invoke_cli, json_out, small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FIRST = "2026-09-30"  # raw data and features: FIRST .. the last test's day
DAYS = {
    "kill": "2026-10-01",
    "straggler": "2026-10-02",
    "yield": "2026-10-03",
    "sigkill": "2026-10-04",
}


def train_key(day: str) -> str:
    return f"fraud/train/date={day}"


def ft_config(tmp: Path, *, workers: int = 1, registry: bool = False, **train: Any) -> Path:
    """Features for 3 cities x 2 days (480 rows), then a tiny MLP with small batches. The
    model is registered only with ``registry`` (MLflow's log_model costs seconds)."""
    path = small_config(tmp, train=True, rows=20)
    cfg = yaml.safe_load(path.read_text())
    if not registry:
        cfg.pop("registry")
    cfg["train"].update(
        {
            "entrypoint": "rayorch.examples.testing:ft_train_loop",
            "epochs": 4,
            "batch_size": 16,
            "log_every_steps": 1,
            "scaling": {"num_workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 0},
        }
    )
    for k, v in train.items():
        cfg["train"][k] = {**cfg["train"].get(k, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ft_home(ray_session, tmp_path_factory):
    """One home for the module: raw data and every feature partition the tests' training
    windows read, built once by one backfill (tests then find their features DONE)."""
    home = tmp_path_factory.mktemp("ft") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("RAYORCH_HOME", str(home))
    mp.delenv("RAYORCH_DB_URL", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load_settings()
    spec = load_pipeline(ft_config(home.parent))
    last = max(DAYS.values())
    generate_data(spec, FIRST, last, settings=settings)
    s = run_backfill(spec, FIRST, last, steps="features", settings=settings)
    assert s.state is BackfillState.SUCCEEDED and s.counts()["done"] == 3 * 5, s.to_dict()
    yield settings
    mp.undo()


def _files(spec, settings, day: str, generation: int = 0) -> RunFiles:
    storage = settings.resolve(spec.train.checkpoint.storage_path)
    return RunFiles(storage, train_run_name(train_key(day), generation))


def _history(settings, run_id: str, metric: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def _runs_for_unit(settings, spec, day: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(f"rayorch/{spec.name}")
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`rayorch.run_key` = '{train_key(day)}'"
    )
    return [r.info.run_id for r in runs]


def _assert_no_duplicate_steps(settings, run_id: str, epochs: int) -> list[int]:
    assert [s for s, _ in _history(settings, run_id, "val_loss")] == list(range(epochs))
    steps = [s for s, _ in _history(settings, run_id, "step_loss")]
    assert steps == sorted(set(steps)), "a step was logged twice"
    assert steps == list(range(1, steps[-1] + 1)), "a step is missing from the history"
    return steps


def _wait_for(cond, timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_worker_killed_resumes_from_checkpoint(ft_home, tmp_path):
    settings, day = ft_home, DAYS["kill"]
    unit_key = train_key(day)
    marker = tmp_path / "killed"
    cfg = ft_config(
        tmp_path,
        workers=2,
        epochs=3,  # 12 steps an epoch per worker: the kill at step 18 lands mid-epoch 2
        max_failures=1,
        checkpoint={"every_epochs": 1, "every_steps": 5},
        params={"kill_rank": 1, "kill_at_step": 18, "kill_marker": str(marker)},
    )
    spec = load_pipeline(cfg)
    s = run_backfill(spec, day, day, settings=settings)
    assert s.state is BackfillState.SUCCEEDED, s.errors
    assert marker.exists(), "the injected worker kill did not happen"
    result = s.outputs[unit_key]
    assert result["training"]["restarts"] == 1
    run_id = result["mlflow_run_id"]
    # Each (re)start logs where it resumed: 0, then the last checkpoint before step 18.
    starts = _history(settings, run_id, "restart_from_step")
    assert [st for st, _ in starts] == [0, 1]
    resumed_from = int(starts[1][1])
    assert 15 <= resumed_from < 18, f"resumed from step {resumed_from}, not the last checkpoint"
    steps = _assert_no_duplicate_steps(settings, run_id, epochs=3)
    assert steps[-1] == result["training"]["step"]

    # Final metrics comparable to a clean run of the same unit on the same features: the
    # unit trained again (a new generation and MLflow run) without the fault.
    clean_cfg = yaml.safe_load(cfg.read_text())
    clean_cfg["train"]["params"] = {}
    clean_path = tmp_path / "clean.yaml"
    clean_path.write_text(yaml.safe_dump(clean_cfg))
    clean_spec = load_pipeline(clean_path)
    c = run_backfill(clean_spec, day, day, steps="train", reprocess="all", settings=settings)
    assert c.state is BackfillState.SUCCEEDED, c.errors
    assert c.outputs[unit_key]["training"]["restarts"] == 0
    assert c.outputs[unit_key]["mlflow_run_id"] != run_id
    clean = c.outputs[unit_key]["metrics"]
    got = result["metrics"]
    assert abs(got["val_auc"] - clean["val_auc"]) < 0.1
    assert abs(got["val_loss"] - clean["val_loss"]) < 0.25 * clean["val_loss"]


def test_straggler_flagged_naming_the_worker(ray_session, ft_home, tmp_path):
    settings, day = ft_home, DAYS["straggler"]
    unit_key = train_key(day)
    cfg = ft_config(
        tmp_path,
        workers=2,
        epochs=1,
        stragglers={"slowdown": 2.0, "consecutive_steps": 3, "min_step_s": 0.0},
        params={"straggler_rank": 1, "straggler_sleep_s": 0.08},
    )
    spec = load_pipeline(cfg)
    s = run_backfill(spec, day, day, settings=settings)
    assert s.state is BackfillState.SUCCEEDED, s.errors
    progress = _files(spec, settings, day).read_progress()
    assert progress is not None
    flags = progress["stragglers"]
    assert [f["rank"] for f in flags] == [1], flags  # the slow worker, not the one waiting
    node = ray_session.get_runtime_context().get_node_id()
    assert flags[0]["node"] == node and flags[0]["ratio"] > 2.0
    # judged from the first step after warm-up (2 by default): flagged exactly M=3 steps later
    assert flags[0]["step"] == 2 + 3, "not flagged within the configured number of steps"
    from mlflow.tracking import MlflowClient

    run = MlflowClient(settings.mlflow_uri).get_run(s.outputs[unit_key]["mlflow_run_id"])
    assert run.data.tags["rayorch.straggler"] == f"rank 1 on {node}"
    # rayorch status shows the flag for the unit (the command in this process)
    ledger = open_ledger(settings)
    [bf] = [b for b in ledger.list_backfills() if b.id == s.backfill_id]
    ledger.close()
    st = json_out(
        invoke_cli("status", "-b", bf.id, "--json", env={"RAYORCH_HOME": str(settings.home)})
    )
    [train] = [u for u in st["units"] if u["run_key"] == unit_key]
    assert train["training"]["stragglers"][0]["rank"] == 1
    assert train["training"]["status"] == "finished"


def test_yield_checkpoints_stops_within_bound_then_resumes(ft_home, tmp_path):
    settings, day = ft_home, DAYS["yield"]
    unit_key = train_key(day)
    cfg = ft_config(
        tmp_path,
        # 4 epochs of 24 steps: progress is written at checkpoints, so step >= 30 is seen at
        # the end of epoch 2 and the yield lands mid-epoch 3
        yield_timeout_s=30,
        checkpoint={"every_epochs": 1},
        params={"sleep_per_step_s": 0.05},
    )
    spec = load_pipeline(cfg)
    preempt = threading.Event()
    box: dict[str, Any] = {}
    th = threading.Thread(
        target=lambda: box.setdefault(
            "s", run_backfill(spec, day, day, settings=settings, preempt=preempt)
        )
    )
    th.start()
    files = _files(spec, settings, day)
    _wait_for(
        lambda: (files.read_progress() or {}).get("step", 0) >= 30, 240, "training to reach step 30"
    )
    t0 = time.time()
    preempt.set()
    th.join(timeout=60)
    stopped_in = time.time() - t0
    assert not th.is_alive() and stopped_in < 30, f"did not stop within the bound ({stopped_in})"
    s = box["s"]
    assert s.state is BackfillState.PREEMPTED
    assert s.phases[unit_key] is Phase.YIELDED
    progress = files.read_progress()
    assert progress["status"] == "yielded"
    ck = progress["last_checkpoint"]
    assert ck["reason"] == "yield" and ck["step"] >= 30 and not ck["epoch_complete"]
    ledger = open_ledger(settings)
    assert ledger.get_units([unit_key])[unit_key].state is UnitState.PENDING
    ledger.close()
    run_id = s.yielded[unit_key].mlflow_run_id

    s2 = run_backfill(spec, day, day, settings=settings)  # resumes the PREEMPTED backfill
    assert s2.resumed and s2.backfill_id == s.backfill_id
    assert s2.state is BackfillState.SUCCEEDED, s2.errors
    assert s2.outputs[unit_key]["mlflow_run_id"] == run_id  # same MLflow run continues
    starts = _history(settings, run_id, "restart_from_step")
    assert starts == [(0, 0.0), (1, float(ck["step"]))]
    _assert_no_duplicate_steps(settings, run_id, epochs=4)
    assert _runs_for_unit(settings, spec, day) == [run_id]


def test_driver_sigkill_mid_training_resumes_same_run(ray_session, ft_home, tmp_path):
    settings, day = ft_home, DAYS["sigkill"]
    cfg = ft_config(
        tmp_path,
        registry=True,  # the model is registered once, after the fenced commit
        epochs=3,  # 72 steps: the kill after the checkpoint at step 20 lands well before the end
        checkpoint={"every_epochs": 1, "every_steps": 10},
        params={"sleep_per_step_s": 0.05},
    )
    spec = load_pipeline(cfg)
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAYORCH_HOME": str(settings.home),
    }
    args = [sys.executable, "-m", "rayorch.cli.app", "backfill", "-c", str(cfg)]
    args += ["--allow-local-state"]  # SQLite + local files on this one-node cluster
    args += ["--start", day, "--end", day, "--json"]  # the default lease (60 s)
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    files = _files(spec, settings, day)
    _wait_for(
        lambda: ((files.read_progress() or {}).get("last_checkpoint") or {}).get("step", 0) >= 20,
        240,
        "a checkpoint at step 20",
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a pod eviction does
    proc.wait(timeout=30)
    killed_at = files.read_progress()["step"]
    [run_id] = _runs_for_unit(settings, spec, day)
    t0 = time.time()  # the same command again, at once: the dead driver is taken over
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json_out(again)  # stdout is exactly one JSON document, attached to a cluster
    assert summary["resumed"] is True and f":{proc.pid}" in summary["took_over_from"]
    assert summary["ok"] and summary["not_done"] == []
    assert time.time() - t0 < 240
    [trained] = summary["trained"]
    assert trained["mlflow_run_id"] == run_id  # the same MLflow run, not a second one
    assert _runs_for_unit(settings, spec, day) == [run_id]
    starts = _history(settings, run_id, "restart_from_step")
    assert [st for st, _ in starts] == [0, 1]
    assert 20 <= starts[1][1] <= killed_at  # continued from its checkpoint, not from step 0
    _assert_no_duplicate_steps(settings, run_id, epochs=3)
    assert trained["training"]["restarts"] == 1
    from mlflow.tracking import MlflowClient

    assert MlflowClient(settings.mlflow_uri).get_run(run_id).info.status == "FINISHED"
    assert trained["model_version"] is not None  # registered once, after the fenced commit
