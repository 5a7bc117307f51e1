"""What checkpoint/resume saves: one small training unit (tiny MLP, 1 worker, torch CPU) run

  1. clean, start to finish;
  2. preempted at ~60% of its steps (SIGTERM path: yield -> checkpoint -> stop; the backfill ends
     PREEMPTED) and resumed by re-running the backfill;
  3. the same preemption without checkpoints: the unit's checkpoints are deleted before the
     resume, so it restarts from step 0 (what happens without rayorch's resume).

All three in one Ray session; walls include each attempt's Ray Train/Data start-up.

    python benchmarks/bench_resume.py [--epochs 12 --sleep-per-step 0.5 --at 0.6]

Measured (2 shared cores): 12 epochs 212.5 s clean, 236.4 s resumed (1.11x), 324.9 s from
scratch (1.53x); the fixed restart (~30 s: Ray Train start-up, Ray Data split) dominates shorter
runs (6 epochs: 1.27x).

Target: (2) <= 1.15x (1); (3) shows what is saved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
import yaml

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.driver import BackfillSummary
from rayorch.settings import load_settings
from rayorch.spec import PipelineSpec, parse_pipeline
from rayorch.train.control import RunFiles
from rayorch.train.runner import train_run_name

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-10-01"
KEY = f"fraud/train/date={DAY}"


def make_spec(epochs: int, sleep: float, every_steps: int) -> PipelineSpec:
    data = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    data["source"]["example"]["rows_per_hour"] = 20
    data["freshness"] = {"expected_sub_partitions": 4, "lateness_hours": 0}
    data["train"].update(
        entrypoint="rayorch.examples.testing:ft_train_loop",
        epochs=epochs,
        batch_size=16,
        window_days=2,
        checkpoint={"every_epochs": 1, "every_steps": every_steps, "num_to_keep": 2},
        params={"sleep_per_step_s": sleep},
        yield_timeout_s=60,
    )
    data.pop("registry")
    return parse_pipeline(data, source="bench_resume")


def train_once(spec: PipelineSpec, settings: Any, preempt: threading.Event | None = None) -> Any:
    return run_backfill(
        spec, DAY, DAY, steps="train", settings=settings, reprocess="all", preempt=preempt
    )


def preempted_run(
    spec: PipelineSpec, settings: Any, at: float, total_steps: int, scratch: bool
) -> tuple[float, float, int]:
    """Returns (wall incl. resume, wall of the first attempt, step it yielded at)."""
    ledger = open_ledger(settings)
    generation = ledger.get_units([KEY])[KEY].committed_token or 0  # the re-run's run name
    ledger.close()
    storage = settings.resolve(spec.train.checkpoint.storage_path)
    files = RunFiles(storage, train_run_name(KEY, generation))
    preempt = threading.Event()
    target = int(at * total_steps)
    box: dict[str, BackfillSummary] = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: box.setdefault("s", train_once(spec, settings, preempt)))
    th.start()
    while th.is_alive():
        if (files.read_progress() or {}).get("step", 0) >= target:
            preempt.set()
            break
        time.sleep(0.1)
    t_ask = time.perf_counter()
    th.join()
    first = time.perf_counter() - t0
    yield_s = time.perf_counter() - t_ask
    s = box["s"]
    assert s.state.value == "PREEMPTED", s.to_dict()
    yielded_at = int((files.read_progress() or {}).get("step", 0))
    if scratch:
        files.delete_all()  # no checkpoints: the next attempt starts from step 0
    # resume: the same backfill again (missing units only: the yielded one)
    t_resume = time.time()
    s2 = run_backfill(spec, DAY, DAY, steps="train", settings=settings)
    assert s2.state.value == "SUCCEEDED", s2.to_dict()
    history = (files.read_progress() or {}).get("history") or [{}]
    restart_s = float(history[-1].get("at", t_resume)) - t_resume
    print(
        f"  yield took {yield_s:.1f} s (request -> driver returned); restart took {restart_s:.1f} s "
        "(resume call -> first step of the new worker group)"
    )
    return time.perf_counter() - t0, first, yielded_at


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--sleep-per-step", type=float, default=0.5)
    ap.add_argument("--every-steps", type=int, default=10)
    ap.add_argument("--at", type=float, default=0.6, help="preempt at this fraction of steps")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rayorch-bench-resume-"))
    settings = load_settings(home)
    spec = make_spec(args.epochs, args.sleep_per_step, args.every_steps)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    generate_data(spec, "2026-09-30", DAY, settings=settings)
    feats = run_backfill(spec, "2026-09-30", DAY, steps="features", settings=settings)
    assert feats.state.value == "SUCCEEDED", feats.to_dict()

    t0 = time.perf_counter()
    s = train_once(spec, settings)
    clean = time.perf_counter() - t0
    assert s.state.value == "SUCCEEDED", s.to_dict()
    total_steps = int(s.results[KEY]["training"]["step"])
    print(f"clean: {clean:.1f} s, {total_steps} steps ({args.sleep_per_step}s/step)")

    resumed, first, at_step = preempted_run(spec, settings, args.at, total_steps, False)
    print(
        f"preempted at step {at_step}/{total_steps}, resumed from checkpoint: {resumed:.1f} s "
        f"(first attempt {first:.1f} s)"
    )
    scratch, first2, at_step2 = preempted_run(spec, settings, args.at, total_steps, True)
    print(
        f"preempted at step {at_step2}/{total_steps}, restarted from scratch: {scratch:.1f} s "
        f"(first attempt {first2:.1f} s)"
    )
    print()
    print(f"{'scenario':<34}{'wall s':>10}{'x clean':>10}")
    for name, wall in (
        ("clean", clean),
        ("preempted + resume (rayorch)", resumed),
        ("preempted, no checkpoints", scratch),
    ):
        print(f"{name:<34}{wall:>10.1f}{wall / clean:>10.2f}")
    print(f"\ntarget: resume <= 1.15x clean -> {'OK' if resumed / clean <= 1.15 else 'MISSED'}")
    print(
        f"checkpoints saved {scratch - resumed:.1f} s ({(scratch - resumed) / clean:.0%} of clean)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
