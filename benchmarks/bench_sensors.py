"""Sensor cost: metadata-only validation of N partitions x 24 hourly sub-partitions versus
reading every row of the same files; and a validated Ray Data read (explicit manifest file
list) versus a plain `ray.data.read_parquet` of the same directories.

    python benchmarks/bench_sensors.py [--partitions 2700] [--ray-partitions 100]

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow.parquet as pq
import yaml

from rayorch.data.generate import generate_raw
from rayorch.data.sensors import SensorPolicy, SensorStatus, evaluate, observe_partition
from rayorch.partitions import PartitionKey
from rayorch.spec import parse_pipeline

REPO = Path(__file__).resolve().parents[1]
DAY0 = dt.date(2026, 1, 1)


def build(root: Path, n: int) -> tuple[object, list[tuple[PartitionKey, dt.date]]]:
    data = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    data["partitions"]["keys"] = {"city": [f"c{i:02d}" for i in range(30)]}
    spec = parse_pipeline(data, source="bench")
    generate_raw(spec, root / "seed", DAY0, DAY0, {"city": ["c00"]})
    seed = root / "seed" / "city=c00" / f"date={DAY0}"
    parts = []
    for i in range(n):
        key = PartitionKey.of(city=f"c{i % 30:02d}", date=str(DAY0 + dt.timedelta(days=i // 30)))
        shutil.copytree(seed, root / "raw" / key.path())
        parts.append((key, DAY0 + dt.timedelta(days=i // 30)))
    return spec, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=2700)
    ap.add_argument("--ray-partitions", type=int, default=100)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rayorch-sensors-"))
    t = time.perf_counter()
    spec, parts = build(root, args.partitions)
    print(f"built {len(parts)} partitions x 24 hours in {time.perf_counter() - t:.1f}s")
    policy = SensorPolicy(
        spec.freshness.model_copy(update={"check_unique_keys": False}),
        dict(spec.source.schema_),
        tuple(spec.source.unique_key),
        "hour",
    )
    now = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    t = time.perf_counter()
    results = [
        evaluate(policy, observe_partition(root / "raw", k, d, policy), now) for k, d in parts
    ]
    meta_s = time.perf_counter() - t
    assert all(r.status is SensorStatus.READY for r in results)
    subs = len(parts) * 24
    files = [f.path for r in results for f in r.manifest.files]
    t = time.perf_counter()
    rows = sum(pq.read_table(f).num_rows for f in files)
    full_s = time.perf_counter() - t
    assert rows == sum(r.rows for r in results)
    print(
        f"metadata-only validation: {meta_s:.2f}s  {subs / meta_s:,.0f} sub-partitions/s "
        "(target >= 5,000/s)"
    )
    print(f"full read of all rows:    {full_s:.2f}s  {subs / full_s:,.0f} sub-partitions/s")
    print(f"ratio full read / validation: {full_s / meta_s:.1f}x  (target >= 20x)")
    ukey = SensorPolicy(
        spec.freshness, dict(spec.source.schema_), tuple(spec.source.unique_key), "hour"
    )
    t = time.perf_counter()
    for k, d in parts[:300]:
        observe_partition(root / "raw", k, d, ukey)
    print(
        f"with key-uniqueness (reads key columns only): "
        f"{300 * 24 / (time.perf_counter() - t):,.0f} sub-partitions/s"
    )

    import ray

    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    sub = results[: args.ray_partitions]
    mfiles = [f.path for r in sub for f in r.manifest.files]
    dirs = [str(root / "raw" / k.path()) for k, _ in parts[: args.ray_partitions]]
    ray.data.read_parquet(mfiles[:10]).count()  # warm up
    timings = {}
    for name, paths in (("plain read_parquet(dirs)", dirs), ("validated (manifest files)", mfiles)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            n = ray.data.read_parquet(paths).materialize().count()
            best = min(best, time.perf_counter() - t)
        timings[name] = (best, n)
        print(f"Ray Data {name}: {n} rows in {best:.2f}s ({n / best:,.0f} rows/s)")
    (pb, pn), (vb, vn) = timings.values()
    assert pn == vn
    print(f"validated / plain throughput: {pb / vb:.2f}x  (target >= 0.9x)")
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
