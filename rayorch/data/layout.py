"""The raw input layout (a public contract) and what a validated partition consists of.

Raw: ``<source>/<key path>/hour=HH/part-*.parquet`` plus ``_SUCCESS`` per hour, where the key
path is the canonical partition key (``city=SF/date=2026-10-01``); the source may be a local
directory or ``s3://``, read through :mod:`rayorch.data.storage` only.

Committed outputs are Iceberg tables (:mod:`rayorch.data.tables`); a
:class:`PartitionManifest` here describes a validated raw partition (and, for lineage, the
files a training run read).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data import storage
from rayorch.partitions import PartitionKey

SUCCESS_MARKER = "_SUCCESS"
MANIFEST_VERSION = 1
_TAIL_READ = 16 * 1024  # one read holds the footer of most files


def hour_dirname(hour: int, sub_dim: str = "hour") -> str:
    return f"{sub_dim}={hour:02d}"


def raw_partition_dir(source_root: str | Path, key: PartitionKey) -> Path:
    return Path(source_root) / key.path()


def raw_hour_dir(
    source_root: str | Path, key: PartitionKey, hour: int, sub_dim: str = "hour"
) -> Path:
    return raw_partition_dir(source_root, key) / hour_dirname(hour, sub_dim)


def raw_partition_path(source_root: str, key: PartitionKey) -> str:
    """The partition's location as a URI or path (for :func:`storage.filesystem_for`)."""
    return storage.join(str(source_root), key.path())


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One parquet file as seen from its footer: no data pages are read."""

    path: str
    size: int
    rows: int
    content_hash: str


def read_footer(path: str | Path) -> tuple[FileEntry, pa.Schema]:
    """Describe a parquet file from one read of its tail: size, rows, schema, content hash.

    The content hash is sha256 over the file size and the serialized footer, which holds every
    column chunk's offsets, sizes and statistics: any rewrite of the data changes it, and it
    costs one small read instead of a scan.
    """
    entry, meta = _read_footer(path)
    return entry, meta.schema.to_arrow_schema()


def read_footer_columns(path: str | Path) -> tuple[FileEntry, tuple[tuple[str, str], ...]]:
    """Like :func:`read_footer`, with the schema as ``((column, arrow type name), ...)``.

    The sensors' hot path: files written by Arrow carry their Arrow schema serialized in the
    footer, and identical serialized schemas (every hour of a partition, usually) are converted
    once per process.
    """
    entry, meta = _read_footer(path)
    kv = meta.metadata or {}
    blob = kv.get(b"ARROW:schema")
    cols = _SCHEMA_CACHE.get(blob) if blob is not None else None
    if cols is None:
        cols = tuple((f.name, str(f.type)) for f in meta.schema.to_arrow_schema())
        if blob is not None and len(_SCHEMA_CACHE) < 1024:
            _SCHEMA_CACHE[blob] = cols
    return entry, cols


_SCHEMA_CACHE: dict[bytes, tuple[tuple[str, str], ...]] = {}


def _read_footer(path: str | Path) -> tuple[FileEntry, pq.FileMetaData]:
    """One ranged read of the file's tail through its filesystem (local disk or S3)."""
    p = str(path)
    fs, inner = storage.filesystem_for(p)
    with fs.open_input_file(inner) as f:
        size = f.size()
        if size < 12:
            raise ValueError(f"{p}: too small to be parquet ({size} bytes)")
        tail = f.read_at(min(size, _TAIL_READ), max(0, size - _TAIL_READ))
        if tail[-4:] != b"PAR1":
            raise ValueError(f"{p}: not a parquet file (no PAR1 footer magic)")
        (footer_len,) = struct.unpack("<I", tail[-8:-4])
        if footer_len + 8 > size - 4:
            raise ValueError(f"{p}: footer length {footer_len} exceeds the file")
        if footer_len + 8 > len(tail):
            tail = f.read_at(footer_len + 8, size - 8 - footer_len)
    footer = tail[-(footer_len + 8) : -8]
    meta = pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail[-8:]))
    digest = hashlib.sha256(str(size).encode() + b"\0" + footer).hexdigest()
    return FileEntry(path=p, size=size, rows=meta.num_rows, content_hash=digest), meta


def parquet_file_entry(path: str | Path) -> FileEntry:
    return read_footer(path)[0]


def combine_hashes(hashes: list[str]) -> str:
    h = hashlib.sha256()
    for x in sorted(hashes):
        h.update(x.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class PartitionManifest:
    """What a committed (or validated) partition consists of."""

    partition: str
    files: tuple[FileEntry, ...]
    rows: int
    content_hash: str
    run_key: str | None = None
    token: int | None = None
    committed_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    @classmethod
    def build(cls, partition: str, files: list[FileEntry], **kw: Any) -> PartitionManifest:
        files_sorted = tuple(sorted(files, key=lambda f: f.path))
        return cls(
            partition=partition,
            files=files_sorted,
            rows=sum(f.rows for f in files_sorted),
            content_hash=combine_hashes([f.content_hash for f in files_sorted]),
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [asdict(f) for f in self.files]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartitionManifest:
        d = dict(d)
        d["files"] = tuple(FileEntry(**f) for f in d["files"])
        return cls(**d)
