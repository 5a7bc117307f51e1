"""Deterministic example raw data in the public raw layout, with injectable faults.

Faults exist so later guards can be shown to catch them: dropped hours, missing markers,
empty hours (marker present, no rows), duplicated rows and a changed column type.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data import storage
from rayorch.data.layout import SUCCESS_MARKER, hour_dirname, raw_partition_path
from rayorch.errors import ConfigError
from rayorch.partitions import PartitionKey, date_range, key_product
from rayorch.spec import PipelineSpec
from rayorch.userfn import load_entrypoint

GENERATE_THREADS = 8
HourGenerator = Callable[[dict[str, str], dt.date, int, int, np.random.Generator], pa.Table]


@dataclass(frozen=True, slots=True)
class Faults:
    drop_hours: tuple[int, ...] = ()
    omit_marker_hours: tuple[int, ...] = ()
    empty_hours: tuple[int, ...] = ()
    duplicate_rows: int = 0
    change_type: dict[str, str] = field(default_factory=dict)

    def any(self) -> bool:
        return bool(
            self.drop_hours
            or self.omit_marker_hours
            or self.empty_hours
            or self.duplicate_rows
            or self.change_type
        )


@dataclass(frozen=True, slots=True)
class GenerateReport:
    root: str
    partitions: tuple[str, ...]
    files: int
    rows: int


def _seed(base: int, key: PartitionKey, hour: int) -> int:
    digest = hashlib.sha256(f"{base}|{key}|{hour}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def generate_raw(
    spec: PipelineSpec,
    root: str | Path,
    start: str | dt.date,
    end: str | dt.date,
    keys: dict[str, list[str]] | None = None,
    faults: Faults | None = None,
) -> GenerateReport:
    """Write raw hive partitions for every (key, day) in range; replaces existing partitions.

    Partitions are written concurrently (object-store round trips dominate on S3); each one's
    hours, in order, by one thread, so the result does not depend on the interleaving."""
    if spec.source.example is None:
        raise ConfigError(
            f"pipeline {spec.name!r} has no source.example section; cannot generate data",
            field="source.example",
        )
    faults = faults or Faults()
    gen: HourGenerator = load_entrypoint(spec.source.example.generator)
    selection = spec.select_keys(keys)
    parts = [(kv, day) for day in date_range(start, end) for kv in key_product(selection)]
    with ThreadPoolExecutor(max_workers=GENERATE_THREADS) as pool:
        counts = list(pool.map(lambda p: _write_partition(spec, gen, str(root), *p, faults), parts))
    return GenerateReport(
        root=str(root),
        partitions=tuple(str(c[2]) for c in counts),
        files=sum(c[0] for c in counts),
        rows=sum(c[1] for c in counts),
    )


def _write_partition(
    spec: PipelineSpec,
    gen: HourGenerator,
    root: str,
    kv: dict[str, str],
    day: dt.date,
    faults: Faults,
) -> tuple[int, int, PartitionKey]:
    """One partition's hours (replacing what was there); returns (files, rows, key)."""
    key = PartitionKey.of(kv, **{spec.time_dim: day.isoformat()})
    ex = spec.source.example
    assert ex is not None
    sub = spec.partitions.time.sub_partition
    fs, pdir = storage.filesystem_for(raw_partition_path(root, key))
    if storage.exists(fs, pdir):
        fs.delete_dir(pdir)
    n_files = n_rows = 0
    for hour in range(spec.freshness.expected_sub_partitions):
        if hour in faults.drop_hours:
            continue
        hdir = f"{pdir}/{hour_dirname(hour, sub)}"
        if not storage.is_remote(storage.to_uri(fs, hdir)):  # object stores have no dirs
            fs.create_dir(hdir, recursive=True)
        rng = np.random.default_rng(_seed(ex.seed, key, hour))
        n = 0 if hour in faults.empty_hours else ex.rows_per_hour
        table = gen(kv, day, hour, n, rng)
        if faults.duplicate_rows and hour == 0 and table.num_rows:
            k = min(faults.duplicate_rows, table.num_rows)
            table = pa.concat_tables([table, table.slice(0, k)])
        for col, typ in faults.change_type.items():
            i = table.schema.get_field_index(col)
            if i < 0:
                raise ConfigError(f"--change-type names unknown column {col!r}")
            table = table.set_column(i, col, table.column(i).cast(pa.type_for_alias(typ)))
        pq.write_table(table, f"{hdir}/part-0.parquet", filesystem=fs)
        if hour not in faults.omit_marker_hours:
            with fs.open_output_stream(f"{hdir}/{SUCCESS_MARKER}") as f:
                f.write(b"")
        n_files += 1
        n_rows += table.num_rows
    return n_files, n_rows, key
