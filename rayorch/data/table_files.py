"""Data files of a step table: their names, how a unit writes one, and how Iceberg sees it.

A unit writes its partition's output as ``t<token>-<nonce>.parquet`` under the table
location; the fencing token in the name is part of the table state. While writing, the
unit also **describes** the file to Iceberg (record count, per-column sizes, counts and
bounds -- pyiceberg's own statistics, computed from the parquet writer's footer metadata),
so publishing never reads the file back (:mod:`rayorch.data.file_stats`). The description
names the Iceberg schema it was computed against; a publish uses it only when that is
exactly the table's schema (and the table's metrics settings), otherwise it reads the
footer as pyiceberg's ``parquet_file_to_data_file`` does. Either way the DataFile is the
one pyiceberg would build.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data import storage
from rayorch.data.file_stats import describe, fingerprint
from rayorch.partitions import PartitionKey

_FILE_RE = re.compile(r"/t(\d{12})-[0-9a-f]{16}\.parquet$")


def data_file_name(token: int, nonce: str) -> str:
    """The name a staged data file gets: its fencing token is part of the table state."""
    return f"t{token:012d}-{nonce}.parquet"


def token_of(path: str) -> int:
    """The fencing token in a data file's name (0: not written by rayorch)."""
    m = _FILE_RE.search(path)
    return int(m.group(1)) if m else 0


def with_partition_columns(table: pa.Table, key: PartitionKey) -> pa.Table:
    """The output with each partition dimension as a constant string column (identity
    partitioning derives partition values from the data file's own columns)."""
    from rayorch.errors import DataError

    for dim, value in key.items:
        if dim in table.column_names:
            col = table.column(dim)
            if not pa.types.is_string(col.type) or set(col.to_pylist()) - {value}:
                raise DataError(
                    f"{key}: output column {dim!r} must be absent or the string {value!r} in "
                    f"every row (it is the partition's {dim}); drop it in the feature function",
                    partition=str(key),
                    column=dim,
                )
            continue
        table = table.append_column(dim, pa.repeat(pa.scalar(value, pa.string()), table.num_rows))
    return table


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """A data file a unit wrote: where, how big, and its Iceberg description (None when
    its schema has no Iceberg form rayorch derives; publishing then reads the footer)."""

    uri: str
    size: int
    rows: int
    description: dict[str, Any] | None


def write_file(
    location: str, key: PartitionKey, table: pa.Table, *, token: int, nonce: str, settings: Any
) -> WrittenFile:
    """Write one partition's output under ``location/data/<key>`` where no snapshot refers
    to it yet, describing it from the writer's own footer metadata (no read-back, no stat)."""
    fs, base = storage.filesystem_for(storage.join(location, "data", key.path()), settings)
    path = f"{base}/{data_file_name(token, nonce)}"
    out = with_partition_columns(table, key)
    collected: list[Any] = []
    with storage.open_output(fs, path) as stream:
        pq.write_table(out, stream, metadata_collector=collected)
        size = stream.tell()
    return WrittenFile(storage.to_uri(fs, path), size, out.num_rows, describe(collected[0], out))


@dataclass(frozen=True, slots=True)
class FileToAdd:
    """A staged file a publish adds: its partition, and what its writer knew about it."""

    path: str
    key: PartitionKey
    size: int | None = None
    description: dict[str, Any] | None = None


def data_files(io: Any, meta: Any, files: Sequence[FileToAdd]) -> list[Any]:
    """Iceberg DataFiles for staged files, as pyiceberg's ``parquet_file_to_data_file``
    would build them against ``meta``. A file whose writer described it against exactly
    this schema and metrics settings is built from that description (nothing is read);
    any other file has its footer read: the first of each parquet schema through pyiceberg's
    checked path, the rest with the same public steps, the schema check done once."""
    fp = fingerprint(meta.schema(), meta.properties)
    identity_spec = _identity_string_spec(meta)
    fast = [f.description is not None and f.description.get("schema") == fp for f in files]
    if identity_spec is None:
        fast = [False] * len(files)
    out: list[Any] = [None] * len(files)
    slow = [i for i, ok in enumerate(fast) if not ok]
    for i, ok in enumerate(fast):
        if ok:
            out[i] = _from_description(meta, files[i], identity_spec)
    for i, df in zip(slow, _read_footers(io, meta, [files[i] for i in slow]), strict=True):
        out[i] = df
    for df in out:
        df.spec_id = meta.default_spec_id  # as a manifest read sets it (the index reuses these)
    return out


def _identity_string_spec(meta: Any) -> list[str] | None:
    """The source column of each partition field when the spec is identity on strings (the
    spec rayorch creates): partition values are then the key's values. None otherwise."""
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import StringType

    schema, names = meta.schema(), []
    for f in meta.spec().fields:
        source = schema.find_field(f.source_id)
        if not isinstance(f.transform, IdentityTransform) or source.field_type != StringType():
            return None
        names.append(source.name)
    return names


def _from_description(meta: Any, f: FileToAdd, part_cols: list[str]) -> Any:
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    d = f.description or {}
    values = f.key.as_dict()
    counts = ("column_sizes", "value_counts", "null_value_counts", "nan_value_counts")
    return DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=f.path,
        file_format=FileFormat.PARQUET,
        partition=Record(*[values[c] for c in part_cols]),
        file_size_in_bytes=f.size,
        sort_order_id=None,
        spec_id=meta.default_spec_id,
        equality_ids=None,
        key_metadata=None,
        record_count=d["record_count"],
        **{k: {int(i): v for i, v in d[k].items()} for k in counts},
        lower_bounds={int(i): bytes.fromhex(v) for i, v in d["lower_bounds"].items()},
        upper_bounds={int(i): bytes.fromhex(v) for i, v in d["upper_bounds"].items()},
        split_offsets=d["split_offsets"],
    )


def _read_footers(io: Any, meta: Any, files: Sequence[FileToAdd]) -> list[Any]:
    """Describe files by reading their footers (one read each, in parallel)."""
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_file_to_data_file,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

    if not files:
        return []
    schema, spec = meta.schema(), meta.spec()
    plan = compute_statistics_plan(schema, meta.properties)
    mapping = parquet_path_to_id_mapping(schema)
    checked: list[Any] = []  # parquet schemas pyiceberg has validated in this batch

    def one(f: FileToAdd) -> Any:
        src = io.new_input(f.path)
        with src.open() as stream:
            md = pq.read_metadata(stream)
        if not any(md.schema.equals(c) for c in checked):
            df = parquet_file_to_data_file(io, meta, f.path)  # the full, checked path
            checked.append(md.schema)
            return df
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=md, stats_columns=plan, parquet_column_mapping=mapping
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=f.path,
            file_format=FileFormat.PARQUET,
            partition=stats.partition(spec, schema),
            file_size_in_bytes=f.size if f.size is not None else len(src),
            sort_order_id=None,
            spec_id=meta.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **stats.to_serialized_dict(),
        )

    if len(files) < 4:
        return [one(f) for f in files]
    first = one(files[0])  # validates the batch's (usually only) schema once
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [first, *pool.map(one, files[1:])]
