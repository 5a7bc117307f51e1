"""Dispatch overhead: 2,700 no-op units (30 keys x 90 days) through the backfill driver
(ledger claims + fenced commits on) versus the same work as plain Ray tasks, in one run.

    python benchmarks/bench_dispatch.py [--keys 30 --days 90] [--db-url URL]

Targets: rayorch <= 1.5x plain Ray; plan (dry run) < 1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
import yaml

from rayorch.backfill.driver import BackfillDriver, DriverOptions
from rayorch.backfill.executor import NoopExecutor, _noop
from rayorch.backfill.plan import annotate, plan_backfill
from rayorch.ledger.store import Ledger
from rayorch.spec import parse_pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=30)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--max-concurrency", type=int, default=512)
    args = ap.parse_args()
    data = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    data["partitions"]["keys"] = {"city": [f"c{i:02d}" for i in range(args.keys)]}
    data.pop("train")
    data.pop("registry")
    spec = parse_pipeline(data, source="bench")
    start = dt.date(2026, 1, 1)
    end = start + dt.timedelta(days=args.days - 1)
    tmp = tempfile.mkdtemp(prefix="rayorch-bench-")
    ledger = Ledger(args.db_url or f"sqlite:///{tmp}/ledger.db")

    t = time.perf_counter()
    plan = plan_backfill(spec, start, end)
    known = ledger.get_units(u.run_key for u in plan.units)
    annotate(plan, known, time.time())
    plan_s = time.perf_counter() - t
    n = len(plan.units)

    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    task = ray.remote(num_cpus=1, max_retries=0)(_noop)
    ray.get([task.remote(plan.units[0], 0) for _ in range(64)])  # warm the worker pool

    t = time.perf_counter()
    ray.get([task.remote(u, 0) for u in plan.units])
    plain_s = time.perf_counter() - t

    driver = BackfillDriver(
        plan, ledger, NoopExecutor(), DriverOptions(max_concurrency=args.max_concurrency)
    )
    t = time.perf_counter()
    summary = driver.run()
    orch_s = time.perf_counter() - t
    assert summary.counts()["done"] == n, summary.counts()
    commits = len(ledger.events(event_name="COMMIT"))
    assert commits == n
    ray.shutdown()
    print(f"units: {n} ({args.keys} keys x {args.days} days), ledger: {ledger.url.split(':')[0]}")
    print(f"plan + ledger annotation (dry run): {plan_s * 1000:.0f} ms   (target < 1000 ms)")
    print(f"plain Ray tasks:                     {plain_s:.2f} s  ({n / plain_s:.0f} units/s)")
    print(f"rayorch driver (claims+commits on):  {orch_s:.2f} s  ({n / orch_s:.0f} units/s)")
    print(f"ratio rayorch / plain Ray:           {orch_s / plain_s:.2f}x  (target <= 1.5x)")


if __name__ == "__main__":
    main()
