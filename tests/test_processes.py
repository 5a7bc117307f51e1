"""Separate driver processes (as `ray job submit` would start them) against one Ray cluster:
concurrent overlapping backfills, SIGKILL at named points and resume, training end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayorch.data.tables import StepTable, committed_rows
from rayorch.ledger.store import Ledger
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline
from tests.helpers import REPO, json_out, run_cli, small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CITIES = ["SF", "NYC", "LA"]
# Every driver here attaches to the session's one-node Ray with a SQLite ledger (node-local
# state): --allow-local-state is what a single-node cluster passes.


@pytest.fixture()
def cluster_env(ray_session, home):
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAYORCH_HOME": str(home)}


def _cli_proc(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "rayorch.cli.app", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _settings(home, db_url=None):
    """The settings the CLI processes ran with (their ledger + catalog URL may be PostgreSQL)."""
    st = load_settings(home)
    return dataclasses.replace(st, db_url=db_url) if db_url else st


def _partition_digests(spec, home, days, db_url=None):
    st = _settings(home, db_url)
    keys = [PartitionKey.of(city=c, date=d) for d in days for c in CITIES]
    live = StepTable.for_spec(spec, st).live(keys)
    assert sorted(live) == sorted(map(str, keys))  # every partition is in the table
    out = {}
    for key in keys:  # the rows each partition holds now, read through the table
        t = committed_rows(spec, st, [key]).drop_columns(["city", "date"]).sort_by("transaction_id")
        out[str(key)] = hashlib.sha256(json.dumps(t.to_pylist(), default=str).encode()).hexdigest()
    return out


def _assert_exactly_once(spec, home, db_url, days):
    st = _settings(home, db_url)
    led = Ledger(db_url)
    commits = led.events(event_name="COMMIT")
    keys = sorted(e["run_key"] for e in commits)
    assert len(keys) == len(set(keys)) == len(days) * len(CITIES)  # one commit per unit
    led.close()
    seen: set[str] = set()
    for d in days:
        for c in CITIES:
            key = PartitionKey.of(city=c, date=d)
            ids = committed_rows(spec, st, [key]).column("transaction_id").to_pylist()
            raw = (
                pq.read_table(
                    f"{st.resolve(spec.source.path)}/{key.path()}", columns=["transaction_id"]
                )
                .column("transaction_id")
                .to_pylist()
            )
            assert sorted(ids) == sorted(raw)
            assert not seen & set(ids)
            seen |= set(ids)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_overlapping_backfills(backend, cluster_env, home, tmp_path, request):
    env = dict(cluster_env)
    db_url = f"sqlite:///{home / 'ledger.db'}"
    if backend == "postgres":
        db_url = request.getfixturevalue("pg_ledger_url")
        env["RAYORCH_DB_URL"] = db_url
    cfg = small_config(tmp_path, params={"sleep_s": 0.2})
    spec = load_pipeline(cfg)
    run_cli(
        "data",
        "generate",
        "-c",
        str(cfg),
        "--start",
        "2026-10-01",
        "--end",
        "2026-10-04",
        env=env,
        check=True,
    )
    ranges = [
        ("2026-10-01", "2026-10-03"),
        ("2026-10-02", "2026-10-04"),
        ("2026-10-01", "2026-10-04"),
    ]
    procs = [
        _cli_proc(
            [
                "backfill",
                "--allow-local-state",
                "-c",
                str(cfg),
                "--start",
                a,
                "--end",
                b,
                "--on-conflict",
                "wait",
                "--max-concurrency",
                "3",
                "--json",
            ],
            env,
        )
        for a, b in ranges
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    done = sum(r["counts"]["done"] for r in results)
    assert done == 12  # every unit ran exactly once across the three backfills
    assert sum(r["counts"]["skipped_done"] for r in results) == 3 * 3 + 3 * 3 + 4 * 3 - 12
    days = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]
    _assert_exactly_once(spec, home, db_url, days)


POINTS = ["after_stage", "after_commit:2", "kill_process_group", "kill_process_group_pg"]


def _wait_for_commit(db_url: str, n: int = 1, timeout: float = 120) -> None:
    led = Ledger(db_url)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(led.events(event_name="COMMIT")) >= n:
                return
            time.sleep(0.1)
        raise AssertionError(f"no {n} commit(s) within {timeout}s")
    finally:
        led.close()


def test_sigkill_then_the_same_command_at_once_completes(cluster_env, home, tmp_path, request):
    """Killed at a named point or as a whole process group (a pod eviction, `kill -9`), the
    same command run again right away takes the dead driver over and exits 0 - the default
    lease never has to run out."""
    cfg = small_config(tmp_path, params={"sleep_s": 0.3})
    spec = load_pipeline(cfg)
    days = ["2026-10-01", "2026-10-02"]
    args = ["backfill", "--allow-local-state", "-c", str(cfg), "--start", days[0], "--end", days[1]]
    args += ["--max-concurrency", "2", "--json"]
    gen = ["data", "generate", "-c", str(cfg), "--start", days[0], "--end", days[1]]
    clean_env = {**cluster_env, "RAYORCH_HOME": str(tmp_path / "clean")}
    run_cli(*gen, env=clean_env, check=True)
    run_cli(*args, env=clean_env, check=True)
    reference = _partition_digests(spec, tmp_path / "clean", days)
    for point in POINTS:
        h = tmp_path / point.replace(":", "_")
        env = {**cluster_env, "RAYORCH_HOME": str(h)}
        db_url = f"sqlite:///{h / 'ledger.db'}"
        if point.endswith("_pg"):
            db_url = request.getfixturevalue("pg_ledger_url")
            env["RAYORCH_DB_URL"] = db_url
        run_cli(*gen, env=env, check=True)
        if point.startswith("kill_process_group"):
            p = subprocess.Popen(
                [sys.executable, "-m", "rayorch.cli.app", *args],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _wait_for_commit(db_url)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        else:
            proc = run_cli(*args, env={**env, "RAYORCH_CRASH_AT": point})
            assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        proc = run_cli(*args, env=env)  # at once: no lease wait
        assert proc.returncode == 0, (point, proc.stderr[-2000:])
        summary = json_out(proc)
        assert summary["resumed"] is True and summary["took_over_from"], point
        assert summary["state"] == "SUCCEEDED" and summary["not_done"] == [], point
        assert summary["counts"]["failed"] == 0
        assert _partition_digests(spec, h, days, db_url) == reference, point
        _assert_exactly_once(spec, h, db_url, days)
        if point == "after_commit:2":
            assert summary["reconciled"], "the committed-but-unpublished unit was rolled forward"


def test_a_concurrent_driver_that_skips_is_not_success(cluster_env, tmp_path):
    """A second driver of the same command with --on-conflict skip while the first runs:
    it exits 4 (INCOMPLETE) and names the holder; the first completes with exit 0."""
    cfg = small_config(tmp_path, params={"sleep_s": 1.0})
    env = cluster_env
    days = ["2026-10-01", "2026-10-01"]
    run_cli("data", "generate", "-c", str(cfg), "--start", days[0], "--end", days[1], env=env,
            check=True)  # fmt: skip
    args = [
        "backfill",
        "--allow-local-state",
        "-c",
        str(cfg),
        "--start",
        days[0],
        "--end",
        days[1],
        "--json",
    ]
    first = _cli_proc([*args, "--max-concurrency", "3"], env)
    db_url = f"sqlite:///{env['RAYORCH_HOME']}/ledger.db"
    led = Ledger(db_url)
    deadline = time.time() + 60
    while time.time() < deadline and not led.list_backfills():
        time.sleep(0.1)
    while time.time() < deadline and led.unit_counts(led.list_backfills()[0].id)["RUNNING"] < 3:
        time.sleep(0.1)
    [bf] = led.list_backfills()
    led.close()
    second = run_cli(*args, "--on-conflict", "skip", env=env)
    assert second.returncode == 4, second.stderr[-2000:]
    doc = json_out(second)
    assert doc["state"] == "INCOMPLETE" and doc["ok"] is False
    held = [u for u in doc["not_done"] if u.get("held_by")]
    assert held and {u["held_by"] for u in held} == {bf.id}
    assert all(f":{first.pid}" in u["holder_driver"] for u in held)
    assert all(u["lease_expires_in_s"] > 0 for u in held)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out)["ok"] is True


def test_json_stdout_is_one_document_with_noisy_workers(cluster_env, tmp_path):
    """Attached to a cluster, worker prints and Ray's own lines go to stderr, not stdout."""
    cfg = small_config(tmp_path, params={"print_line": "hello from a feature worker"})
    env = cluster_env
    run_cli("data", "generate", "-c", str(cfg), "--start", "2026-10-01", "--end", "2026-10-01",
            env=env, check=True)  # fmt: skip
    proc = run_cli("backfill", "--allow-local-state", "-c", str(cfg), "--start", "2026-10-01", "--end", "2026-10-01",
                   "--json", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # the whole of stdout, strictly
    assert doc["ok"] is True
    assert "hello from a feature worker" not in proc.stdout
    for cmd in (["status", "--json"], ["plan", "-c", str(cfg), "--start", "2026-10-01",
                                        "--end", "2026-10-01", "--json"]):  # fmt: skip
        json.loads(run_cli(*cmd, env=env, check=True).stdout)


def test_changed_feature_code_marks_units_stale(cluster_env, tmp_path):
    cfg = small_config(tmp_path)
    env = cluster_env
    window = ["--start", "2026-10-01", "--end", "2026-10-01"]
    run_cli("data", "generate", "-c", str(cfg), *window, env=env, check=True)
    run_cli(
        "backfill", "--allow-local-state", "-c", str(cfg), *window, "--json", env=env, check=True
    )
    data = yaml.safe_load(cfg.read_text())
    data["features"]["code_version"] = "2"  # the feature function changed
    cfg.write_text(yaml.safe_dump(data))
    plan = json_out(run_cli("plan", "-c", str(cfg), *window, "--json", env=env, check=True))
    assert {u["status"] for u in plan["units"]} == {"stale"}
    assert all("another code" in u["detail"] for u in plan["units"])
    again = json_out(
        run_cli(
            "backfill",
            "--allow-local-state",
            "-c",
            str(cfg),
            *window,
            "--json",
            env=env,
            check=True,
        )
    )
    assert again["counts"]["skipped_done"] == 3  # stale is not re-run unless asked
    redo = run_cli(
        "backfill",
        "--allow-local-state",
        "-c",
        str(cfg),
        *window,
        "--reprocess",
        "stale",
        "--json",
        env=env,
    )
    assert redo.returncode == 0, redo.stderr[-2000:]
    assert json_out(redo)["counts"]["done"] == 3
    plan = json_out(run_cli("plan", "-c", str(cfg), *window, "--json", env=env, check=True))
    assert {u["status"] for u in plan["units"]} == {"already done"}


def test_train_end_to_end_through_cli(cluster_env, home, tmp_path):
    cfg = small_config(tmp_path, train=True, rows=20)
    env = cluster_env
    run_cli(
        "data",
        "generate",
        "-c",
        str(cfg),
        "--start",
        "2026-09-30",
        "--end",
        "2026-10-01",
        env=env,
        check=True,
    )
    plan = json_out(
        run_cli(
            "plan",
            "-c",
            str(cfg),
            "--start",
            "2026-10-01",
            "--end",
            "2026-10-01",
            "--json",
            env=env,
            check=True,
        )
    )
    assert plan["counts"] == {"features": 6, "train": 1}
    assert {u["status"] for u in plan["units"]} == {"new"}
    proc = run_cli(
        "backfill",
        "--allow-local-state",
        "-c",
        str(cfg),
        "--start",
        "2026-10-01",
        "--end",
        "2026-10-01",
        "--json",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json_out(proc)
    assert summary["counts"]["done"] == 7
    [trained] = summary["trained"]
    assert trained["model_version"] == "1" and trained["metrics"]["epoch"] == 2
    import mlflow

    st = load_settings(home)
    client = mlflow.tracking.MlflowClient(st.mlflow_uri)
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["rayorch.run_key"] == "fraud/train/date=2026-10-01"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    assert run.inputs.dataset_inputs[0].tags[0].value == "training"
    mv = client.get_model_version("fraud-detector", "1")
    assert mv.run_id == run.info.run_id and len(mv.tags["rayorch.artifact_digest"]) == 64
    # the logged manifest names exactly the committed feature files the unit read
    local = client.download_artifacts(run.info.run_id, "dataset_manifest.json", str(tmp_path))
    logged = json.loads(Path(local).read_text())
    spec = load_pipeline(cfg)
    keys = [PartitionKey.of(city=c, date=d) for d in ("2026-09-30", "2026-10-01") for c in CITIES]
    committed = StepTable.for_spec(spec, st).live(keys)
    assert sorted(f["path"] for p in logged["partitions"] for f in p["files"]) == sorted(
        f.path for p in committed.values() for f in p.files
    )
    assert logged["table"] == f"{spec.name}.features" and logged["snapshot_id"] != 0
    # a re-run does no work twice and opens no new MLflow run
    again = json_out(
        run_cli(
            "backfill",
            "--allow-local-state",
            "-c",
            str(cfg),
            "--start",
            "2026-10-01",
            "--end",
            "2026-10-01",
            "--json",
            env=env,
            check=True,
        )
    )
    assert again["counts"]["skipped_done"] == 7 and again["counts"]["done"] == 0
    exp = client.get_experiment_by_name("rayorch/fraud")
    assert len(client.search_runs([exp.experiment_id])) == 1
    status = json_out(run_cli("status", "--json", env=env, check=True))
    assert status["backfills"][0]["units"]["DONE"] == 7
