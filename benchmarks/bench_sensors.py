"""Sensor cost: metadata-only validation of N partitions x 24 hourly sub-partitions versus
reading every row of the same files; and a validated Ray Data read (the manifest's explicit
file list, footers re-verified) versus a plain `ray.data.read_parquet` of the same directories.

    python benchmarks/bench_sensors.py [--partitions 2700] [--rows-per-hour 20000]
        [--threads 4] [--ray-partitions 20] [--no-ray]

The data is realistic per file (an hour of the example fraud transactions: 20,000 rows x 7
columns, about 0.6 MB) without writing 64,800 distinct files: one file is generated per
distinct shape (one per hour of the day) and hard-linked into every partition's hour
directory, each with its own `_SUCCESS` marker. Every sub-partition is therefore a real
directory with a real parquet file and marker, and both sides of the comparison open, read
and parse every one of them; disk use stays at 24 files. Page cache is warm for both sides.

Targets: validation >= 20x faster than the full read and >= 5,000 sub-partitions/s on 2 cores;
validated Ray Data read >= 0.9x the plain read's throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import pyarrow.parquet as pq
import yaml

from rayorch.data.layout import SUCCESS_MARKER, raw_hour_dir
from rayorch.data.sensors import (
    SensorPolicy,
    SensorStatus,
    evaluate,
    observe_partition,
    observe_partitions,
)
from rayorch.examples.fraud import generate_hour
from rayorch.partitions import PartitionKey
from rayorch.spec import parse_pipeline

REPO = Path(__file__).resolve().parents[1]
DAY0 = dt.date(2026, 1, 1)
CITIES = 30


def build(root: Path, n: int, rows: int) -> tuple[object, list[tuple[PartitionKey, dt.date]]]:
    data = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    data["partitions"]["keys"] = {"city": [f"c{i:02d}" for i in range(CITIES)]}
    spec = parse_pipeline(data, source="bench")
    seed_dir = root / "seed"
    seed_dir.mkdir(parents=True)
    seeds = []
    for hour in range(24):  # one realistic file per distinct shape (hour of day)
        table = generate_hour({"city": "c00"}, DAY0, hour, rows, np.random.default_rng(hour))
        path = seed_dir / f"hour={hour:02d}.parquet"
        pq.write_table(table, path)
        seeds.append(path)
    parts = []
    for i in range(n):
        day = DAY0 + dt.timedelta(days=i // CITIES)
        key = PartitionKey.of(city=f"c{i % CITIES:02d}", date=day.isoformat())
        for hour in range(24):
            hdir = raw_hour_dir(root / "raw", key, hour)
            hdir.mkdir(parents=True)
            os.link(seeds[hour], hdir / "part-0.parquet")
            (hdir / SUCCESS_MARKER).touch()
        parts.append((key, day))
    return spec, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=2700)
    ap.add_argument("--rows-per-hour", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--ray-partitions", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rayorch-sensors-"))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    spec, parts = build(root, args.partitions, args.rows_per_hour)
    subs = len(parts) * 24
    size = sum(p.stat().st_size for p in (root / "seed").iterdir()) / 24
    print(
        f"built {len(parts):,} partitions x 24 hours ({subs:,} sub-partitions, "
        f"{args.rows_per_hour:,} rows x 7 columns, {size / 1e6:.2f} MB per hourly file) "
        f"in {time.perf_counter() - t:.1f}s"
    )
    policy = SensorPolicy(
        spec.freshness.model_copy(update={"check_unique_keys": False}),
        dict(spec.source.schema_),
        tuple(spec.source.unique_key),
        "hour",
    )
    now = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    raw = root / "raw"

    t = time.perf_counter()
    serial = [evaluate(policy, observe_partition(raw, k, d, policy), now) for k, d in parts]
    serial_s = time.perf_counter() - t
    t = time.perf_counter()
    observed = observe_partitions(raw, parts, policy, workers=args.threads)
    results = [evaluate(policy, o, now) for o in observed]
    threaded_s = time.perf_counter() - t
    assert all(r.status is SensorStatus.READY for r in results)
    assert [r.manifest for r in results] == [r.manifest for r in serial]
    meta_s = min(serial_s, threaded_s)
    files = [f.path for r in results for f in r.manifest.files]

    def read_all(path: str) -> int:
        return pq.read_table(path).num_rows

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        rows = sum(pool.map(read_all, files))
    full_s = time.perf_counter() - t
    assert rows == sum(r.rows for r in results) == subs * args.rows_per_hour
    print(
        f"metadata-only validation, serial:      {serial_s:6.2f}s  "
        f"{subs / serial_s:9,.0f} sub-partitions/s"
    )
    print(
        f"metadata-only validation, {args.threads} threads:   {threaded_s:6.2f}s  "
        f"{subs / threaded_s:9,.0f} sub-partitions/s"
    )
    print(
        f"full read of all {rows:,} rows ({args.threads} threads): {full_s:6.2f}s  "
        f"{subs / full_s:9,.0f} sub-partitions/s"
    )
    print(
        f"=> validation: {subs / meta_s:,.0f} sub-partitions/s (target >= 5,000/s); "
        f"full read / validation: {full_s / meta_s:.1f}x (target >= 20x)"
    )

    ukey = SensorPolicy(
        spec.freshness, dict(spec.source.schema_), tuple(spec.source.unique_key), "hour"
    )
    sample = parts[: min(10, len(parts))]
    t = time.perf_counter()
    observe_partitions(raw, sample, ukey, workers=args.threads)
    print(
        f"with key uniqueness (reads the key column only): "
        f"{len(sample) * 24 / (time.perf_counter() - t):,.0f} sub-partitions/s"
    )
    if not args.no_ray:
        ray_read(root, parts, results, args.ray_partitions)


def ray_read(root: Path, parts: list, results: list, n: int) -> None:
    import ray

    from rayorch.data.reader import read_validated

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    manifests = [r.manifest for r in results[:n]]
    dirs = [str(root / "raw" / k.path()) for k, _ in parts[:n]]
    ray.data.read_parquet(dirs[:1]).materialize()  # warm up workers
    cases = (
        ("plain read_parquet(dirs)", lambda: ray.data.read_parquet(dirs)),
        ("validated read (manifest files)", lambda: read_validated(manifests)),
    )
    best = {name: float("inf") for name, _ in cases}
    counts = {}
    for _ in range(3):  # interleaved, best of 3: the shared machine's noise hits both
        for name, make in cases:
            t = time.perf_counter()
            counts[name] = make().materialize().count()
            best[name] = min(best[name], time.perf_counter() - t)
    assert len(set(counts.values())) == 1
    rows = next(iter(counts.values()))
    for name, _ in cases:
        print(
            f"Ray Data {name}: {rows:,} rows in {best[name]:.2f}s ({rows / best[name]:,.0f} rows/s)"
        )
    plain, validated = best.values()
    print(f"=> validated / plain throughput: {plain / validated:.2f}x  (target >= 0.9x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
