"""Freshness sensors: observe a raw partition's metadata, then decide READY/PENDING/REJECTED.

``observe_partition`` touches only the file listing, markers and parquet footers (plus the key
columns when uniqueness is checked). ``evaluate`` is pure: observed facts + policy + clock ->
:class:`SensorResult` with every reason and the exact missing or bad sub-partitions. A READY
result carries the manifest that readers must use; nothing else is read.
"""

from __future__ import annotations

import datetime as dt
import enum
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from rayorch.data import storage
from rayorch.data.layout import (
    SUCCESS_MARKER,
    FileEntry,
    PartitionManifest,
    raw_partition_path,
    read_footer_columns,
)
from rayorch.data.storage import read_parquet
from rayorch.partitions import PartitionKey
from rayorch.spec import FreshnessSpec


class SensorStatus(str, enum.Enum):
    READY = "READY"
    PENDING = "PENDING"  # may still become READY by waiting
    REJECTED = "REJECTED"  # will not become valid by waiting


class ReasonCode(str, enum.Enum):
    PARTITION_MISSING = "PARTITION_MISSING"
    MISSING_SUB_PARTITIONS = "MISSING_SUB_PARTITIONS"
    MISSING_MARKER = "MISSING_MARKER"
    EMPTY_WITH_MARKER = "EMPTY_WITH_MARKER"
    TOO_FEW_ROWS = "TOO_FEW_ROWS"
    LOW_VOLUME = "LOW_VOLUME"
    SCHEMA_DRIFT = "SCHEMA_DRIFT"
    DUPLICATE_KEYS = "DUPLICATE_KEYS"
    UNREADABLE_FILE = "UNREADABLE_FILE"


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    message: str
    sub_partitions: tuple[int, ...] = ()
    pending: bool = False  # True: waiting may cure it

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code.value,
            "message": self.message,
            "sub_partitions": list(self.sub_partitions),
            "pending": self.pending,
        }


@dataclass(frozen=True, slots=True)
class HourObservation:
    hour: int
    marker: bool
    files: tuple[FileEntry, ...]
    schema: tuple[tuple[str, str], ...] | None
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True, slots=True)
class ObservedPartition:
    partition: str
    day: dt.date
    exists: bool
    hours: tuple[HourObservation, ...]
    duplicate_keys: tuple[str, ...] = ()
    duplicate_count: int = 0
    trailing_rows: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        return sum(h.rows for h in self.hours)


@dataclass(frozen=True, slots=True)
class SensorResult:
    partition: str
    status: SensorStatus
    reasons: tuple[Reason, ...]
    missing: tuple[int, ...] = ()
    bad: tuple[int, ...] = ()
    rows: int = 0
    manifest: PartitionManifest | None = None

    def summary(self) -> str:
        if not self.reasons:
            return f"{self.partition}: {self.status.value}"
        why = "; ".join(r.message for r in self.reasons)
        return f"{self.partition}: {self.status.value} ({why})"

    def to_dict(self) -> dict[str, object]:
        return {
            "partition": self.partition,
            "status": self.status.value,
            "reasons": [r.to_dict() for r in self.reasons],
            "missing_sub_partitions": list(self.missing),
            "bad_sub_partitions": list(self.bad),
            "rows": self.rows,
            "manifest": self.manifest.to_dict() if self.manifest else None,
        }


@dataclass(frozen=True, slots=True)
class SensorPolicy:
    """The freshness policy plus what the pipeline declares about its raw data."""

    freshness: FreshnessSpec
    schema: dict[str, str] = field(default_factory=dict)
    unique_key: tuple[str, ...] = ()
    sub_dim: str = "hour"


def _fmt_hours(hours: Sequence[int]) -> str:
    return ",".join(f"{h:02d}" for h in hours)


def evaluate(policy: SensorPolicy, obs: ObservedPartition, now: dt.datetime) -> SensorResult:
    """Pure decision over observed metadata. Every failing check adds a reason."""
    f = policy.freshness
    expected = list(range(f.expected_sub_partitions))
    day_end = dt.datetime.combine(obs.day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    within_lateness = now < day_end + dt.timedelta(hours=f.lateness_hours)
    reasons: list[Reason] = []
    if not obs.exists:
        reasons.append(
            Reason(
                ReasonCode.PARTITION_MISSING,
                "partition directory does not exist",
                tuple(expected),
                pending=within_lateness,
            )
        )
        return _result(obs, reasons, missing=tuple(expected))
    by_hour = {h.hour: h for h in obs.hours}
    missing = tuple(h for h in expected if h not in by_hour)
    if missing:
        reasons.append(
            Reason(
                ReasonCode.MISSING_SUB_PARTITIONS,
                f"{len(expected) - len(missing)} of {len(expected)} {policy.sub_dim}s present; "
                f"missing {policy.sub_dim}={_fmt_hours(missing)}",
                missing,
                pending=within_lateness,
            )
        )
    present = [by_hour[h] for h in expected if h in by_hour]
    unreadable = tuple(h.hour for h in present if h.error)
    if unreadable:
        reasons.append(
            Reason(
                ReasonCode.UNREADABLE_FILE,
                f"unreadable parquet in {policy.sub_dim}={_fmt_hours(unreadable)}",
                unreadable,
            )
        )
    no_marker = tuple(h.hour for h in present if not h.marker)
    if f.require_success_marker and no_marker:
        reasons.append(
            Reason(
                ReasonCode.MISSING_MARKER,
                f"no {SUCCESS_MARKER} marker in {policy.sub_dim}={_fmt_hours(no_marker)}",
                no_marker,
                pending=within_lateness,
            )
        )
    empty = tuple(h.hour for h in present if h.marker and h.rows == 0 and not h.error)
    if empty:
        reasons.append(
            Reason(
                ReasonCode.EMPTY_WITH_MARKER,
                f"marker present but no rows in {policy.sub_dim}={_fmt_hours(empty)}",
                empty,
            )
        )
    few = tuple(h.hour for h in present if 0 < h.rows < f.min_rows_per_sub_partition and h.marker)
    if few:
        reasons.append(
            Reason(
                ReasonCode.TOO_FEW_ROWS,
                f"fewer than {f.min_rows_per_sub_partition} rows in "
                f"{policy.sub_dim}={_fmt_hours(few)}",
                few,
            )
        )
    if policy.schema:
        drift: dict[int, list[str]] = {}
        for h in present:
            if h.schema is None:
                continue
            actual = dict(h.schema)
            diffs = [
                f"{c}: expected {t}, found {actual.get(c, 'missing')}"
                for c, t in policy.schema.items()
                if actual.get(c) != t
            ]
            if diffs:
                drift[h.hour] = diffs
        if drift:
            first = next(iter(drift.values()))
            reasons.append(
                Reason(
                    ReasonCode.SCHEMA_DRIFT,
                    f"schema differs in {policy.sub_dim}={_fmt_hours(sorted(drift))}: "
                    + "; ".join(first),
                    tuple(sorted(drift)),
                )
            )
    if obs.duplicate_count:
        shown = ", ".join(obs.duplicate_keys[:5])
        reasons.append(
            Reason(
                ReasonCode.DUPLICATE_KEYS,
                f"{obs.duplicate_count} duplicated key(s) on "
                f"{'+'.join(policy.unique_key)}, e.g. {shown}",
            )
        )
    if f.min_rows_ratio_to_median is not None and obs.trailing_rows and not missing:
        median = statistics.median(obs.trailing_rows)
        if median > 0 and obs.rows < f.min_rows_ratio_to_median * median:
            reasons.append(
                Reason(
                    ReasonCode.LOW_VOLUME,
                    f"{obs.rows} rows is below {f.min_rows_ratio_to_median}x the "
                    f"trailing median {median:g}",
                )
            )
    bad = tuple(sorted(set(unreadable) | set(empty) | set(few) | set(no_marker)))
    return _result(obs, reasons, missing=missing, bad=bad)


def _result(
    obs: ObservedPartition,
    reasons: list[Reason],
    missing: tuple[int, ...] = (),
    bad: tuple[int, ...] = (),
) -> SensorResult:
    if not reasons:
        files = [fe for h in obs.hours for fe in h.files]
        manifest = PartitionManifest.build(obs.partition, files)
        return SensorResult(obs.partition, SensorStatus.READY, (), rows=obs.rows, manifest=manifest)
    status = SensorStatus.PENDING if all(r.pending for r in reasons) else SensorStatus.REJECTED
    return SensorResult(obs.partition, status, tuple(reasons), missing, bad, rows=obs.rows)


def _arrow_type_name(t: pa.DataType) -> str:
    return str(t)


def observe_partition(
    source_root: str | Path,
    key: PartitionKey,
    day: dt.date,
    policy: SensorPolicy,
    trailing_rows: Sequence[int] = (),
) -> ObservedPartition:
    """Collect metadata for one raw partition: listing, markers, parquet footers.

    Everything goes through the source's filesystem (one LIST per directory, one ranged read
    per footer), so a local directory and an ``s3://`` prefix are observed the same way.
    """
    fs, pdir = storage.filesystem_for(raw_partition_path(str(source_root), key))
    prefix = f"{policy.sub_dim}="
    entries = list(storage.list_dir(fs, pdir))
    if not entries:
        return ObservedPartition(str(key), day, False, (), trailing_rows=tuple(trailing_rows))
    hours: list[HourObservation] = []
    data_files: list[str] = []
    subdirs = sorted((e.name, e.path) for e in entries if e.name.startswith(prefix) and e.is_dir)
    for dirname, dirpath in subdirs:
        try:
            hour = int(dirname[len(prefix) :])
        except ValueError:
            continue
        listed = sorted(storage.list_dir(fs, dirpath), key=lambda e: e.name)
        marker = any(e.name == SUCCESS_MARKER for e in listed)
        files: list[FileEntry] = []
        schema: tuple[tuple[str, str], ...] | None = None
        error = None
        for e in listed:
            name = e.name
            if not name.endswith(".parquet") or name.startswith((".", "_")) or e.is_dir:
                continue
            path = storage.to_uri(fs, e.path)
            try:
                entry_, cols = read_footer_columns(path)
            except Exception as exc:  # a corrupt file is a finding, not a crash
                error = f"{name}: {exc}"
                continue
            files.append(entry_)
            if schema is None:
                schema = cols
            data_files.append(path)
        hours.append(HourObservation(hour, marker, tuple(files), schema, error))
    dup_keys: tuple[str, ...] = ()
    dup_count = 0
    if policy.freshness.check_unique_keys and policy.unique_key and data_files:
        dup_keys, dup_count = duplicate_keys(data_files, list(policy.unique_key))
    return ObservedPartition(
        str(key), day, True, tuple(hours), dup_keys, dup_count, tuple(trailing_rows)
    )


def observe_partitions(
    source_root: str | Path,
    items: Sequence[tuple[PartitionKey, dt.date]],
    policy: SensorPolicy,
    workers: int | None = None,
) -> list[ObservedPartition]:
    """Observe many partitions, in order; ``workers > 1`` uses a thread pool.

    Serial by default: on 2 cores the footer parsing holds the GIL and threads measured ~3x
    slower (benchmarks/bench_sensors.py); threads pay off where listing waits on remote
    storage (object stores, NFS).
    """
    n = workers if workers is not None else 1
    if n <= 1 or len(items) < 2:
        return [observe_partition(source_root, k, d, policy) for k, d in items]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="rayorch-sensor") as pool:
        return list(
            pool.map(lambda kd: observe_partition(source_root, kd[0], kd[1], policy), items)
        )


def duplicate_keys(files: Sequence[str], key_columns: list[str]) -> tuple[tuple[str, ...], int]:
    """Read only the key columns and return (sample of duplicated keys, how many)."""
    try:
        table = pa.concat_tables(
            [read_parquet(f, columns=key_columns) for f in files], promote_options="permissive"
        )
    except (pa.ArrowInvalid, KeyError):
        return (), 0  # missing key columns show up as schema drift instead
    return table_duplicate_keys(table, key_columns)


def table_duplicate_keys(table: pa.Table, key_columns: list[str]) -> tuple[tuple[str, ...], int]:
    if table.num_rows == 0:
        return (), 0
    if len(key_columns) == 1:  # the common case: one distinct count, no grouping
        col = table.column(key_columns[0])
        if col.null_count == 0 and pc.count_distinct(col).as_py() == table.num_rows:
            return (), 0
    counts = table.group_by(key_columns).aggregate([([], "count_all")])
    dups = counts.filter(pc.greater(counts.column("count_all"), 1))
    sample = [
        "/".join(str(dups.column(c)[i].as_py()) for c in key_columns)
        for i in range(min(dups.num_rows, 10))
    ]
    return tuple(sample), dups.num_rows
