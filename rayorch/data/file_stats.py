"""How Iceberg sees a data file: its schema's Iceberg form, and the statistics its writer
gathers from the parquet footer metadata (record count, per-column sizes, value and null
counts, lower and upper bounds) -- pyiceberg's own statistics, so a publish never reads the
file back (:mod:`rayorch.data.table_files`).

A description names the Iceberg schema and metrics settings it was computed against
(:func:`fingerprint`); a publish uses it only when both are exactly the table's.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

_METRICS_PREFIX = "write.metadata.metrics."
TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",  # our retry re-checks tokens; pyiceberg's would not
    "format-version": "2",
}


def iceberg_schema(arrow: pa.Schema) -> Any:
    """The Iceberg schema a table created from ``arrow`` has: field ids in the order
    pyiceberg assigns fresh ids (pre-order, each struct's fields before their children)."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.table.name_mapping import MappedField, NameMapping

    counter = iter(range(1, 1 << 30))

    def children(t: pa.DataType) -> list[tuple[str, pa.DataType]]:
        if pa.types.is_struct(t):
            return [(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]
        if pa.types.is_map(t):
            return [("key", t.key_type), ("value", t.item_type)]
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return [("element", t.value_type)]
        return []

    def level(fields: list[tuple[str, pa.DataType]]) -> list[Any]:
        ids = [next(counter) for _ in fields]
        return [
            MappedField(field_id=i, names=[name], fields=level(children(t)))
            for i, (name, t) in zip(ids, fields, strict=True)
        ]

    mapping = NameMapping(level([(f.name, f.type) for f in arrow]))
    return pyarrow_to_schema(arrow, name_mapping=mapping)


def fingerprint(schema: Any, properties: dict[str, str]) -> str:
    """What a description was computed against: the schema's fields and the metrics
    settings (``write.metadata.metrics.*``) that shape pyiceberg's statistics."""
    fields = [f.model_dump(mode="json") for f in schema.fields]
    metrics = sorted((k, v) for k, v in properties.items() if k.startswith(_METRICS_PREFIX))
    doc = json.dumps([fields, metrics], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Column:
    """How one parquet column is described: its field id and Iceberg type, the parquet
    physical type planned for it, what its metrics mode keeps (``counts``: value and null
    counts; ``bounds``: lower and upper bounds) and the bounds' truncation length."""

    field_id: int
    iceberg_type: Any
    physical: str
    counts: bool
    bounds: bool
    length: int | None
    text: bool  # a string column: its upper bound is truncated as text, a binary one as bytes


@dataclass(frozen=True, slots=True)
class _StatsPlan:
    """What describing a file of one arrow schema needs, computed once per schema."""

    fingerprint: str
    stats_columns: Any
    column_mapping: Any
    columns: dict[str, _Column] | None  # parquet path -> column; None: pyiceberg's path only


@functools.lru_cache(maxsize=64)
def _stats_plan(arrow: pa.Schema) -> _StatsPlan | None:
    from pyiceberg.io.pyarrow import compute_statistics_plan, parquet_path_to_id_mapping

    try:
        schema = iceberg_schema(arrow)
    except (ValueError, TypeError, NotImplementedError):  # no Iceberg form: publish reads it
        return None
    stats = compute_statistics_plan(schema, TABLE_PROPERTIES)
    mapping = parquet_path_to_id_mapping(schema)
    return _StatsPlan(
        fingerprint(schema, TABLE_PROPERTIES), stats, mapping, _columns(stats, mapping)
    )


def _physical_types() -> dict[Any, str]:
    """The parquet physical type of each Iceberg type the quick description handles (the
    spec's mapping; decimals, UUIDs, fixed, time and nanosecond types take pyiceberg's path)."""
    from pyiceberg import types as t

    return {
        t.BooleanType(): "BOOLEAN",
        t.IntegerType(): "INT32",
        t.LongType(): "INT64",
        t.FloatType(): "FLOAT",
        t.DoubleType(): "DOUBLE",
        t.DateType(): "INT32",
        t.TimestampType(): "INT64",
        t.TimestamptzType(): "INT64",
        t.StringType(): "BYTE_ARRAY",
        t.BinaryType(): "BYTE_ARRAY",
    }


def _columns(stats: Any, mapping: dict[str, int]) -> dict[str, _Column] | None:
    from pyiceberg.io.pyarrow import MetricModeTypes
    from pyiceberg.types import StringType

    physical = _physical_types()
    out = {}
    for path, field_id in mapping.items():
        col = stats[field_id]
        if col.iceberg_type not in physical:
            return None
        kind = col.mode.type
        out[path] = _Column(
            field_id,
            col.iceberg_type,
            physical[col.iceberg_type],
            counts=kind is not MetricModeTypes.NONE,
            bounds=kind in (MetricModeTypes.FULL, MetricModeTypes.TRUNCATE),
            length=col.mode.length if kind is MetricModeTypes.TRUNCATE else None,
            text=col.iceberg_type == StringType(),
        )
    return out


def describe(md: Any, table: pa.Table) -> dict[str, Any] | None:
    """pyiceberg's statistics of a written file, from its footer metadata, as JSON values.
    The schema conversion and statistics plan are cached per arrow schema (every partition
    of a step has the same one). For the usual column types the statistics are gathered
    here by the rules of pyiceberg's ``data_file_statistics_from_parquet_metadata``, with
    pyiceberg's own value serialization and bound truncation (the objects it builds per
    column cost more than the parquet write); any other file takes pyiceberg's path."""
    plan = _stats_plan(table.schema)
    if plan is None:
        return None
    quick = _quick_stats(md, plan.columns) if plan.columns is not None else None
    return {"schema": plan.fingerprint, **(quick or _pyiceberg_stats(md, plan))}


def _pyiceberg_stats(md: Any, plan: _StatsPlan) -> dict[str, Any]:
    from pyiceberg.io.pyarrow import data_file_statistics_from_parquet_metadata

    stats = data_file_statistics_from_parquet_metadata(
        parquet_metadata=md,
        stats_columns=plan.stats_columns,
        parquet_column_mapping=plan.column_mapping,
    )
    d = stats.to_serialized_dict()
    counts = ("column_sizes", "value_counts", "null_value_counts", "nan_value_counts")
    return {
        "record_count": d["record_count"],
        **{k: {str(i): int(v) for i, v in d[k].items()} for k in counts},
        **{k: {str(i): v.hex() for i, v in d[k].items()} for k in ("lower_bounds", "upper_bounds")},
        "split_offsets": list(d["split_offsets"] or []),
    }


def _quick_stats(md: Any, columns: dict[str, _Column]) -> dict[str, Any] | None:
    """The statistics pyiceberg gathers from ``md`` (sizes always; value and null counts
    unless the mode is none; bounds in full or truncate mode), or None when a column is
    not of its planned physical type or its chunk has no statistics: pyiceberg's path then
    raises or warns as it does."""
    from pyiceberg.conversions import to_bytes
    from pyiceberg.utils.truncate import (
        truncate_upper_bound_binary_string,
        truncate_upper_bound_text_string,
    )

    planned = [columns.get(md.schema.column(i).path) for i in range(md.num_columns)]
    if None in planned:
        return None
    sizes: dict[int, int] = {}
    values: dict[int, int] = {}
    nulls: dict[int, int] = {}
    lows: dict[int, Any] = {}
    highs: dict[int, Any] = {}
    splits: list[int] = []
    for r in range(md.num_row_groups):
        group = md.row_group(r)
        first = group.column(0)
        dict_at, data_at = first.dictionary_page_offset, first.data_page_offset
        splits.append(dict_at if first.has_dictionary_page and dict_at < data_at else data_at)
        for pos, col in enumerate(planned):
            chunk = group.column(pos)
            if chunk.physical_type != col.physical:
                return None
            fid = col.field_id
            sizes[fid] = sizes.get(fid, 0) + chunk.total_compressed_size
            if not col.counts:
                continue
            values[fid] = values.get(fid, 0) + chunk.num_values
            if not chunk.is_stats_set:
                return None
            st = chunk.statistics
            if st.has_null_count:
                nulls[fid] = nulls.get(fid, 0) + st.null_count
            if col.bounds:
                lo, hi = st.min, st.max
                if lo is not None:
                    lows[fid] = lo if fid not in lows else min(lo, lows[fid])
                if hi is not None:
                    highs[fid] = hi if fid not in highs else max(hi, highs[fid])
    by_id = {c.field_id: c for c in planned}
    lower, upper = {}, {}
    for fid, lo in lows.items():
        c = by_id[fid]
        lower[str(fid)] = to_bytes(c.iceberg_type, lo if c.length is None else lo[: c.length]).hex()
    for fid, hi in highs.items():
        c = by_id[fid]
        if c.physical == "BYTE_ARRAY":
            cut = truncate_upper_bound_text_string if c.text else truncate_upper_bound_binary_string
            hi = cut(hi, c.length)
            if hi is None:  # no upper bound of that length exists
                continue
        upper[str(fid)] = to_bytes(c.iceberg_type, hi).hex()
    return {
        "record_count": md.num_rows,
        "column_sizes": {str(i): v for i, v in sizes.items()},
        "value_counts": {str(i): v for i, v in values.items()},
        "null_value_counts": {str(i): v for i, v in nulls.items()},
        "nan_value_counts": {},
        "lower_bounds": lower,
        "upper_bounds": upper,
        "split_offsets": sorted(splits),
    }
