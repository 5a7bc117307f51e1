"""Feature tables: publish cost and read throughput, on local disk and on an S3 API.

    python benchmarks/bench_tables.py [--keys 30 --days 90 --rows 200] [--concurrency N]
                                      [--max-batch 65] [--repeat 3] [--s3] [--ray-read]

1. Publish: 2,700 partitions (30 keys x 90 days) through what the backfill driver does for
   feature units -- the plan persisted in the ledger, fenced claims within the concurrency
   limit (default: the driver's, max(8, 2 x CPUs)), staging in worker processes (a Ray
   task's place: unique-key check, writing the data file, describing it for Iceberg), and
   per loop turn every finished unit (at most ``--max-batch``) committed in one fenced
   ledger transaction, published in one table commit (stale-token check included) and its
   output amended with the snapshot -- vs the same data written once with plain
   ``pyarrow.dataset.write_dataset`` (hive partitioning). Both sides ``--repeat`` times in
   one run, medians; the table is read back (every row, no duplicates). Target: <= 2x.
   Ray's own dispatch overhead is bench_dispatch.py's subject, not this one's.
2. ``--ray-read``: a 30-day training window read at a pinned snapshot (rayorch's path:
   pin the snapshot, list its files, Ray Data over them) vs plain ``ray.data.read_parquet``
   of the same files (target >= 0.9x), and an old snapshot vs the current one (>= 0.9x).

``--s3`` runs against a moto S3 server on 127.0.0.1 started here (the test fixture's server).

Measured (2 cores shared with other sessions' test runs; docs/tables.md has the table):
local, 8 in flight: 478.8 s vs 1.74 s = 275x; 64 in flight: 59.6 s vs 6.74 s = 8.8x;
moto S3, 64 in flight: 173.0 s vs 269.7 s = 0.64x. Local
target not met: every pyiceberg commit deep-copies the table metadata ~15 times and the
metadata grows by a snapshot per commit (see docs/tables.md, "Where the time goes").
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from rayorch.data import outputs, storage
from rayorch.partitions import PartitionKey


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return proc, url


def partition_table(rng: np.random.Generator, key: PartitionKey, rows: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([f"{key}-{i}" for i in range(rows)]),
            "x1": pa.array(rng.random(rows), pa.float32()),
            "x2": pa.array(rng.random(rows), pa.float32()),
            "label": pa.array(rng.random(rows), pa.float32()),
        }
    )


_TABLE = None  # set before the stager processes fork (what a feature task has)
_DATA: dict = {}


def stage_one(job: tuple[str, str, int]) -> dict:
    """A feature unit's staging step, in a worker process (a Ray task's place)."""
    key = PartitionKey.parse(job[1])
    return outputs.stage(_TABLE, key, _DATA[key], run_key=job[0], token=job[2], unique_key=["id"])


def drive(table, ledger, keys, pool, concurrency: int, max_batch: int) -> dict:
    """What the backfill driver does for feature units, minus Ray: persist the plan, claim
    up to ``concurrency`` units (fenced tokens), hand them to the stagers, and per loop turn
    take every finished unit (up to ``max_batch``), commit them in one fenced ledger
    transaction, publish them in one table commit, and record the snapshot per unit."""
    from rayorch.data.tables import Published
    from rayorch.ledger.store import ClaimOutcome, UnitSpec

    name = table.identifier.split(".")[0]
    run_key = {k: f"{name}/features/{k}" for k in keys}
    specs = [UnitSpec(run_key[k], name, "features", str(k)) for k in keys]
    bf, _ = ledger.start_backfill(name, {"t": time.time()}, "fp", specs)
    own = bf.ownership
    pending = list(reversed(keys))
    inflight: dict = {}
    commits = 0
    t = {"ledger": 0.0, "table": 0.0, "amend": 0.0}
    while pending or inflight:
        free = concurrency - len(inflight)
        if free > 0 and pending:
            batch = [pending.pop() for _ in range(min(free, len(pending)))]
            t0 = time.perf_counter()
            got = ledger.claim_many(own, [run_key[k] for k in batch], take_own=True)
            t["ledger"] += time.perf_counter() - t0
            for k, r in zip(batch, got, strict=True):
                assert r.outcome is ClaimOutcome.GRANTED, r
                inflight[pool.submit(stage_one, (run_key[k], str(k), r.token))] = k
        done, _ = futures.wait(list(inflight), return_when=futures.FIRST_COMPLETED)
        finished = [f.result() for f in list(done)[:max_batch]]
        for f in list(done)[:max_batch]:
            del inflight[f]
        t0 = time.perf_counter()
        errs = ledger.commit_many(
            own, [(s["run_key"], s["token"], {"kind": "staged", "manifest": s}) for s in finished]
        )
        assert not any(errs), errs
        t1 = time.perf_counter()
        results = table.publish_many([outputs.publish_item(s) for s in finished])
        commits += 1
        t2 = time.perf_counter()
        for r in results:
            assert r.outcome is Published.REPLACED, r
            extra = {"snapshot_id": r.snapshot_id, "published": r.outcome.name}
            ledger.amend_output(own, r.run_key, r.live_token, extra)
        t3 = time.perf_counter()
        t["ledger"] += (t1 - t0) + (t3 - t2)
        t["amend"] += t3 - t2
        t["table"] += t2 - t1
    return {"commits": commits, **t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=30)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--rows", type=int, default=200)
    cpus = os.cpu_count() or 2
    ap.add_argument(
        "--concurrency",
        type=int,
        default=max(8, 2 * cpus),
        help="units in flight (the driver's default: max(8, 2 x cluster CPUs))",
    )
    ap.add_argument("--max-batch", type=int, default=65, help="most units per loop turn")
    ap.add_argument("--workers", type=int, default=cpus, help="stager processes (task slots)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side; medians")
    ap.add_argument("--s3", action="store_true")
    ap.add_argument("--ray-read", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="rayorch-bench-tables-")
    moto = None
    os.environ["RAYORCH_HOME"] = f"{tmp}/home"
    if args.s3:
        import boto3

        moto, url = start_moto()
        for k, v in {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": url,
        }.items():
            os.environ[k] = v
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="bench")
        os.environ["RAYORCH_STORAGE_URL"] = "s3://bench/rayorch"
    from rayorch.data.tables import StepTable
    from rayorch.ledger.store import Ledger
    from rayorch.settings import load_settings

    global _TABLE
    st = load_settings()
    try:
        rng = np.random.default_rng(0)
        days = [f"2026-{1 + d // 28:02d}-{1 + d % 28:02d}" for d in range(args.days)]
        keys = [PartitionKey.of(city=f"c{k:02d}", date=d) for d in days for k in range(args.keys)]
        _DATA.update({k: partition_table(rng, k, args.rows) for k in keys})
        where = "s3 (moto)" if args.s3 else "local disk"
        print(
            f"{len(keys)} partitions x {args.rows} rows, {where}; {args.workers} stager "
            f"processes, {args.concurrency} units in flight, <= {args.max_batch} per commit"
        )
        whole = pa.concat_tables(
            [storage_cols(t, k) for k, t in _DATA.items()], promote_options="default"
        )
        plain_walls, ours_walls, last = [], [], {}
        for rep in range(args.repeat):
            # plain pyarrow: everything written once, hive-partitioned
            fs, plain_path = storage.filesystem_for(st.resolve(f"plain{rep}"), st)
            t0 = time.perf_counter()
            pads.write_dataset(
                whole,
                plain_path,
                filesystem=fs,
                format="parquet",
                partitioning=["city", "date"],
                partitioning_flavor="hive",
                max_partitions=len(keys) + 1,
                existing_data_behavior="overwrite_or_ignore",
            )
            plain_walls.append(time.perf_counter() - t0)

            table = StepTable(
                st, f"bench{rep}", st.resolve(f"tables/b{rep}"), ["city", "date"], "f"
            )
            _TABLE = table
            ledger = Ledger(st.db_url)
            ctx = multiprocessing.get_context("fork")
            with futures.ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
                list(pool.map(abs, range(args.workers * 4)))  # workers up, like Ray's
                t0 = time.perf_counter()
                last = drive(table, ledger, keys, pool, args.concurrency, args.max_batch)
                ours_walls.append(time.perf_counter() - t0)
            got = table.require().scan().to_arrow()
            assert got.num_rows == len(keys) * args.rows, got.num_rows
            assert len(set(got["id"].to_pylist())) == got.num_rows, "duplicate rows"
            ledger.close()
            print(
                f"  run {rep + 1}: plain {plain_walls[-1]:6.2f} s   rayorch {ours_walls[-1]:6.2f} s"
                f"  ({last['commits']} table commits {last['table']:.2f} s, "
                f"ledger {last['ledger']:.2f} s of which per-unit amends {last['amend']:.2f} s)"
            )
        plain_s, ours = statistics.median(plain_walls), statistics.median(ours_walls)
        print(f"plain write_dataset      {plain_s:8.2f} s  (median of {args.repeat})")
        print(f"rayorch backfill publish {ours:8.2f} s  (median of {args.repeat})")
        print(f"ratio                    {ours / plain_s:8.2f} x   (target <= 2x)")

        if args.ray_read:
            bench_reads(table, keys, days, args)
    finally:
        if moto is not None:
            moto.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


def storage_cols(t: pa.Table, k: PartitionKey) -> pa.Table:
    for dim, value in k.items:
        t = t.append_column(dim, pa.array([value] * t.num_rows, pa.string()))
    return t


def bench_reads(table, keys, days, args) -> None:
    import ray
    import ray.data

    from rayorch.data.reader import pin_window, read_window

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    window_days = set(days[-30:])
    wkeys = [k for k in keys if k.as_dict()["date"] in window_days]
    old = pin_window(table, wkeys)
    # reprocess every partition of the window once: the old snapshot is now history
    redo = [
        outputs.stage(
            table,
            k,
            partition_table(np.random.default_rng(1), k, args.rows),
            run_key=f"f/{k}",
            token=2,
            unique_key=["id"],
        )
        for k in wkeys
    ]
    for i in range(0, len(redo), args.max_batch):
        table.publish_many([outputs.publish_item(s) for s in redo[i : i + args.max_batch]])
    fs, _ = storage.filesystem_for(old.files[0])

    def ours(snapshot_id=None) -> int:
        w = pin_window(table, wkeys, snapshot_id)
        return sum(b.num_rows for b in read_window(w).iter_batches(batch_format="pyarrow"))

    def plain(files) -> int:
        paths = [storage.filesystem_for(f)[1] for f in files]
        ds = ray.data.read_parquet(paths, filesystem=fs)
        return sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow"))

    cur = pin_window(table, wkeys)
    ours(), plain(cur.files)  # warm up
    results = {}
    for name, fn in [
        ("plain read_parquet (current files)", lambda: plain(cur.files)),
        ("rayorch pinned current snapshot", lambda: ours()),
        ("rayorch pinned old snapshot", lambda: ours(old.snapshot_id)),
    ]:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            n = fn()
            best = min(best, time.perf_counter() - t0)
        results[name] = n / best
        print(f"{name:38s} {n:8d} rows  {n / best:12.0f} rows/s")
    base = results["plain read_parquet (current files)"]
    cur_r = results["rayorch pinned current snapshot"]
    print(f"pinned / plain           {cur_r / base:6.2f} x   (target >= 0.9x)")
    print(
        f"old / current snapshot   {results['rayorch pinned old snapshot'] / cur_r:6.2f} x"
        "   (target >= 0.9x)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
