"""Concurrent first use of a fresh RAYORCH_HOME: many processes open the ledger and the
MLflow store at once, many times over (a `rayorch demo` whose two training units start
together did this, and one run in five lost both units to MLflow's racing migrations)."""

from __future__ import annotations

import multiprocessing as mp
import os

N_PROCS = 4
ROUNDS = 2


def _first_user(home: str, barrier, out) -> None:
    try:
        from rayorch.ledger.store import Ledger, UnitSpec
        from rayorch.lineage.tracking import Tracker

        barrier.wait()
        led = Ledger(f"sqlite:///{home}/ledger.db")
        led.start_backfill("p", {"pid": os.getpid()}, "fp", [UnitSpec("p/a", "p", "train", "k=a")])
        led.close()
        tracker = Tracker(f"sqlite:///{home}/mlflow.db", artifact_root=f"{home}/mlartifacts")
        run_id, _ = tracker.start_or_resume("rayorch/p", f"p/{os.getpid()}", 0, {"a": 1}, {})
        tracker.finish(run_id)
        out.put("ok")
    except Exception as e:  # the message is what the test shows
        out.put(f"{type(e).__name__}: {e}")


def test_many_first_users_of_a_fresh_home(tmp_path):
    ctx = mp.get_context("spawn")
    for i in range(ROUNDS):
        home = tmp_path / f"home{i}"
        barrier, out = ctx.Barrier(N_PROCS), ctx.Queue()
        procs = [
            ctx.Process(target=_first_user, args=(str(home), barrier, out)) for _ in range(N_PROCS)
        ]
        for p in procs:
            p.start()
        got = [out.get(timeout=180) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == ["ok"] * N_PROCS, got
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{home}/mlflow.db")
        exp = client.get_experiment_by_name("rayorch/p")
        assert len(client.search_runs([exp.experiment_id])) == N_PROCS
