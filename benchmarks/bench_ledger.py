"""Ledger throughput: claims + fenced commits per second, SQLite and PostgreSQL, with 1, 4
and 16 concurrent driver processes competing for the same keys.

    python benchmarks/bench_ledger.py [--units 2000] [--pg postgresql://postgres@127.0.0.1/test]

Each driver loops: claim a batch of keys (one transaction), commit the granted ones (one
transaction). Also reported: batch size 1 (one claim + one commit transaction per unit).
Checks as it goes: every unit is committed exactly once.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine

from rayorch.ledger.schema import metadata
from rayorch.ledger.store import ClaimOutcome, Ledger, UnitSpec


def _driver(url: str, bf_id: str, keys: list[str], batch: int, seed: int, barrier) -> None:
    led = Ledger(url)
    own = led.get_backfill(bf_id).ownership
    rnd = random.Random(seed)
    order = keys[:]
    rnd.shuffle(order)
    barrier.wait()
    for i in range(0, len(order), batch):
        chunk = order[i : i + batch]
        got = [r for r in led.claim_many(own, chunk) if r.outcome is ClaimOutcome.GRANTED]
        if got:
            errs = led.commit_many(own, [(r.run_key, r.token, {"ok": 1}) for r in got])
            assert not any(errs)
    led.close()


def run(url: str, drivers: int, units: int, batch: int) -> float:
    led = Ledger(url)
    keys = [f"bench/features/city=c{i % 30:02d}/date=d{i:05d}" for i in range(units)]
    specs = [UnitSpec(k, "bench", "features", k.split("/", 2)[2]) for k in keys]
    ids = [
        led.start_backfill("bench", {"d": d, "t": time.time()}, "fp", specs)[0].id
        for d in range(drivers)
    ]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(drivers + 1)
    procs = [
        ctx.Process(target=_driver, args=(url, ids[d], keys, batch, d, barrier))
        for d in range(drivers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t = time.perf_counter()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    wall = time.perf_counter() - t
    commits = led.events(event_name="COMMIT")
    assert len(commits) == units == len({e["run_key"] for e in commits}), "exactly once violated"
    led.close()
    return units / wall


def fresh(url: str | None) -> str:
    if url is None:
        return f"sqlite:///{tempfile.mkdtemp(prefix='rayorch-ledger-')}/ledger.db"
    eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    metadata.drop_all(eng)
    eng.dispose()
    return url


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pg", default=os.environ.get("RAYORCH_TEST_PG_URL"))
    args = ap.parse_args()
    backends = [("sqlite", None)] + ([("postgresql", args.pg)] if args.pg else [])
    print(f"{'backend':<11} {'drivers':>7} {'batch':>5} {'units/s (claim+commit)':>24}")
    for name, url in backends:
        for drivers in (1, 4, 16):
            rate = run(fresh(url), drivers, args.units, args.batch)
            print(f"{name:<11} {drivers:>7} {args.batch:>5} {rate:>24.0f}")
        rate = run(fresh(url), 1, min(args.units, 500), 1)
        print(f"{name:<11} {1:>7} {1:>5} {rate:>24.0f}")
    if not args.pg:
        print("(PostgreSQL skipped: pass --pg URL or set RAYORCH_TEST_PG_URL)")


if __name__ == "__main__":
    main()
