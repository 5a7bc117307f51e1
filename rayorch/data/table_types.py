"""The values the table layer hands around: live files and partitions, publish items and
what a publish did with each, and what ``rayorch tables list`` shows.

Plain frozen records (no catalog, no I/O), shared by the publish, read and maintenance
modules of :mod:`rayorch.data.tables`.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LiveFile:
    """One data file of a partition at a snapshot."""

    path: str
    rows: int
    size: int

    @property
    def content_hash(self) -> str:
        """Data files are immutable and uniquely named: name, size and rows identify content."""
        return hashlib.sha256(f"{self.path}\0{self.size}\0{self.rows}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LivePartition:
    """A partition as a snapshot has it: its files and the token that published them."""

    partition: str
    token: int
    files: tuple[LiveFile, ...]
    data_files: tuple[Any, ...] = ()  # pyiceberg DataFile objects (for replacing them)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f.content_hash.encode())
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class PublishItem:
    """One committed unit's output to make live: exactly ``partition`` replaced by ``files``."""

    run_key: str
    token: int
    partition: str
    files: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)  # bytes per file, when the stager knew
    # Iceberg description per file, made where the file was written
    # (:func:`rayorch.data.file_stats.describe`); absent: the footer is read.
    described: dict[str, dict[str, Any]] = field(default_factory=dict)


class Published(str, enum.Enum):
    """What a publish did with one item, and why."""

    REPLACED = "partition replaced by this token's files"
    ALREADY = "this token is already the live version"
    STALE = "a higher token is live: this attempt's rows are never made visible"


@dataclass(frozen=True, slots=True)
class PublishResult:
    run_key: str
    outcome: Published
    live_token: int
    snapshot_id: int | None


@dataclass(frozen=True, slots=True)
class TableInfo:
    """What ``rayorch tables list`` prints for one table."""

    identifier: str
    catalog_uri: str
    warehouse: str
    location: str
    current_snapshot: int | None
    snapshots: int
