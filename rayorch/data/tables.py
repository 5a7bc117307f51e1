"""Each step's output is an Apache Iceberg table, its catalog kept in rayorch's own database.

The catalog is pyiceberg's ``SqlCatalog`` on the ledger's URL (SQLite by default, PostgreSQL
by URL): its tables are pyiceberg's own, beside the ledger's. A table commit is a
compare-and-set of the table's metadata location in that database, so correctness never
depends on object-store conditional writes. Data files live at the table's location (local
or ``s3://``); one table per pipeline step, ``<pipeline>.<step>``, partitioned by identity on
each key dimension and the date.

Order of a publish (see docs/tables.md), crash-safe at every point:

1. a feature unit writes its data file(s) under the table location, named
   ``t<token>-<nonce>.parquet`` -- no snapshot refers to them, so no reader sees them;
2. the driver commits the unit in the ledger, fenced by its token (the ledger decides who may
   write);
3. :meth:`StepTable.publish_many` replaces exactly those partitions in ONE table commit:
   against the snapshot it is based on, a partition whose live token is higher than the
   item's is skipped (a stale attempt never replaces a newer one), an equal token is already
   published; the rest drop their old files and add the new ones. The snapshot summary
   records every (partition, run key, token) it published. A concurrent commit makes the
   compare-and-set fail; the batch is re-planned against the new snapshot and retried.

A crash between 2 and 3 leaves the ledger ahead of the table; resuming compares the two
(:meth:`StepTable.live`) and rolls the commit forward, or re-runs the unit if its files are
gone. pyiceberg's own commit retry is switched off on these tables: it would re-apply a
planned replace on a newer base without the token check.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data import storage
from rayorch.errors import ConflictError, NotFoundError
from rayorch.partitions import PartitionKey
from rayorch.settings import Settings

CATALOG_NAME = "rayorch"
SUMMARY_UNITS = "rayorch.units"  # JSON [[partition, run_key, token], ...] published by a commit
_FILE_RE = re.compile(r"/t(\d{12})-[0-9a-f]{16}\.parquet$")
_COMMIT_ATTEMPTS = 20
_TABLE_PROPERTIES = {
    "commit.retry.num-retries": "0",  # our retry re-checks tokens; pyiceberg's would not
    "format-version": "2",
}


def data_file_name(token: int, nonce: str) -> str:
    """The name a staged data file gets: its fencing token is part of the table state."""
    return f"t{token:012d}-{nonce}.parquet"


def token_of(path: str) -> int:
    """The fencing token in a data file's name (0: not written by rayorch)."""
    m = _FILE_RE.search(path)
    return int(m.group(1)) if m else 0


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


def catalog_uri(settings: Settings) -> str:
    """The ledger's database as a SQLAlchemy URL pyiceberg opens (busy timeout on SQLite)."""
    url = settings.db_url
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite") and "timeout=" not in url:
        return url + ("&" if "?" in url else "?") + "timeout=60"
    return url


def display_uri(settings: Settings) -> str:
    """The catalog URI to print or record: no password, no driver options."""
    from sqlalchemy.engine import make_url

    return make_url(settings.db_url).render_as_string(hide_password=True)


def warehouse(settings: Settings) -> str:
    return settings.resolve("warehouse")


_CATALOG_LOCK = threading.Lock()


def catalog_properties(settings: Settings) -> dict[str, str]:
    """What ``pyiceberg.catalog.load_catalog`` (or Ray Data's ``read_iceberg``) needs to open
    rayorch's catalog: ``load_catalog(**catalog_properties(settings))``."""
    return {
        "name": CATALOG_NAME,
        "type": "sql",
        "uri": catalog_uri(settings),
        "warehouse": warehouse(settings),
        **storage.iceberg_io_properties(settings),
    }


def catalog(settings: Settings) -> Any:
    """The SQL catalog in rayorch's database (one per process and settings)."""
    with _CATALOG_LOCK:
        return _catalog(settings)


@functools.lru_cache(maxsize=8)
def _catalog(settings: Settings) -> Any:
    from pathlib import Path

    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # the ledger's home
    for attempt in range(5):
        try:
            props = catalog_properties(settings)
            props.pop("type")
            return SqlCatalog(props.pop("name"), **props)
        except DBAPIError:  # another process created the catalog tables at the same moment
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def identifier(pipeline: str, step: str = "features") -> str:
    return f"{pipeline}.{step}"


def partition_filter(keys: Iterable[PartitionKey]) -> Any:
    """A pyiceberg row filter selecting exactly ``keys`` (an OR of per-key ANDs)."""
    from pyiceberg.expressions import AlwaysFalse, And, EqualTo, Or

    expr: Any = AlwaysFalse()
    for k in keys:
        term: Any = None
        for dim, value in k.items:
            eq = EqualTo(dim, value)
            term = eq if term is None else And(term, eq)
        if term is not None:
            expr = Or(expr, term)
    return expr


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
        table = table.append_column(dim, pa.array([value] * table.num_rows, pa.string()))
    return table


class StepTable:
    """One step's Iceberg table: created on first publish, replaced partition by partition."""

    def __init__(
        self, settings: Settings, pipeline: str, location: str, dims: Sequence[str], step: str
    ) -> None:
        self.settings = settings
        self.identifier = identifier(pipeline, step)
        self.location = location.rstrip("/")
        self.dims = tuple(dims)
        self._table: Any = None  # last loaded/committed; a stale one only costs a retry
        self._lock = threading.Lock()  # one publish at a time per instance (it reuses _table)
        # (snapshot id, its live files by partition): manifests are immutable, so an index
        # keyed by snapshot id is exact; after our own commit it is advanced, not re-read.
        self._index: tuple[int, dict[str, list[Any]]] | None = None

    @classmethod
    def for_spec(cls, spec: Any, settings: Settings, step: str = "features") -> StepTable:
        dims = sorted([*spec.key_dims, spec.time_dim])
        return cls(settings, spec.name, settings.resolve(spec.features.output), dims, step)

    @property
    def catalog(self) -> Any:
        return catalog(self.settings)

    def data_dir(self, key: PartitionKey) -> str:
        """Where a unit writes the files of ``key`` (hive-style, under the table location)."""
        return storage.join(self.location, "data", key.path())

    # -- reading -----------------------------------------------------------------------------
    def load(self) -> Any | None:
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        try:
            return self.catalog.load_table(self.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            return None

    def require(self) -> Any:
        table = self.load()
        if table is None:
            raise NotFoundError(
                f"table {self.identifier} does not exist in the catalog at "
                f"{catalog_uri(self.settings)}: nothing was published yet (run a backfill)",
                table=self.identifier,
            )
        return table

    def live(
        self,
        keys: Iterable[PartitionKey] | None = None,
        *,
        table: Any = None,
        snapshot_id: int | None = None,
    ) -> dict[str, LivePartition]:
        """Partitions at a snapshot (current when None): files, rows, publishing token."""
        table = table if table is not None else self.load()
        if table is None:
            return {}
        if snapshot_id is None:
            snap = table.current_snapshot()
            if snap is None:
                return {}
            snapshot_id = snap.snapshot_id
        elif table.snapshot_by_id(snapshot_id) is None:
            raise NotFoundError(
                f"table {self.identifier} has no snapshot {snapshot_id}: it was expired "
                "(rayorch tables expire) and its data may be gone",
                table=self.identifier,
                snapshot_id=snapshot_id,
            )
        wanted = None if keys is None else list(keys)
        grouped = self._files_by_partition(table, snapshot_id)
        if wanted is not None:
            allowed = {str(k) for k in wanted}
            grouped = {k: v for k, v in grouped.items() if k in allowed}
        return {
            k: LivePartition(
                k,
                max(token_of(f.file_path) for f in files),
                tuple(LiveFile(f.file_path, f.record_count, f.file_size_in_bytes) for f in files),
                tuple(files),
            )
            for k, files in grouped.items()
        }

    def _files_by_partition(self, table: Any, snapshot_id: int) -> dict[str, list[Any]]:
        """The snapshot's live data files grouped by partition, read from its manifests (no
        row-filter binding: a publish needs every file of a few partitions, fast)."""
        from pyiceberg.manifest import ManifestContent

        index = self._index
        if index is not None and index[0] == snapshot_id:
            return index[1]
        snap = table.snapshot_by_id(snapshot_id)
        names_by_spec = {sid: [f.name for f in spec.fields] for sid, spec in table.specs().items()}
        manifests = [m for m in snap.manifests(table.io) if m.content == ManifestContent.DATA]

        def entries(m: Any) -> list[Any]:
            return m.fetch_manifest_entry(table.io, discard_deleted=True)

        if len(manifests) > 2:
            with ThreadPoolExecutor(max_workers=8) as pool:
                per_manifest = list(pool.map(entries, manifests))
        else:
            per_manifest = [entries(m) for m in manifests]
        grouped: dict[str, list[Any]] = {}
        for m, found in zip(manifests, per_manifest, strict=True):
            names = names_by_spec[m.partition_spec_id]
            for e in found:
                values = dict(zip(names, e.data_file.partition, strict=True))
                key = PartitionKey.of({n: str(values[n]) for n in names})
                grouped.setdefault(str(key), []).append(e.data_file)
        self._index = (snapshot_id, grouped)
        return grouped

    def _advance_index(
        self, base: int | None, new: int | None, replaced: list[tuple[str, list[Any]]]
    ) -> None:
        """The index of the snapshot we just committed: the base's, with our partitions."""
        index = self._index
        if new is None or index is None or index[0] != base:
            self._index = None
            return
        grouped = dict(index[1])
        grouped.update(replaced)
        self._index = (new, grouped)

    def info(self) -> TableInfo | None:
        table = self.load()
        if table is None:
            return None
        snap = table.current_snapshot()
        return TableInfo(
            self.identifier,
            display_uri(self.settings),
            warehouse(self.settings),
            table.location(),
            snap.snapshot_id if snap else None,
            len(table.snapshots()),
        )

    def refuse_old_layout(self) -> None:
        """Stop with a way forward when the location still holds the pre-Iceberg layout
        (``<partition>/_manifest.json`` with ``_data/`` versions beside it)."""
        from rayorch.errors import ConfigError

        fs, base = storage.filesystem_for(self.location, self.settings)
        old = [e.name for e in storage.list_dir(fs, base) if "=" in e.name and e.is_dir]
        if old and self.load() is None:
            raise ConfigError(
                f"{self.location} holds feature partitions in the old manifest layout "
                f"({old[0]}/.../_manifest.json); rayorch now publishes Iceberg tables there. "
                f"Move it away (e.g. `mv {self.location} {self.location}.old`) and run the "
                "backfill again: committed units whose output predates the tables are re-run "
                "on resume, nothing else changes",
                location=self.location,
                field="features.output",
            )

    # -- writing -----------------------------------------------------------------------------
    def ensure(self, sample_file: str) -> Any:
        """The table, created from a staged file's schema when it does not exist yet."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
        from sqlalchemy.exc import DBAPIError

        table = self.load()
        if table is not None:
            return table
        fs, path = storage.filesystem_for(sample_file, self.settings)
        schema = pq.read_schema(path, filesystem=fs)
        namespace = self.identifier.split(".")[0]
        try:
            self.catalog.create_namespace_if_not_exists(namespace)
        except DBAPIError:  # created by another driver between its check and its insert
            if (namespace,) not in self.catalog.list_namespaces():
                raise
        try:
            tx = self.catalog.create_table_transaction(
                self.identifier, schema=schema, location=self.location, properties=_TABLE_PROPERTIES
            )
            with tx.update_spec() as spec:
                for dim in self.dims:
                    spec.add_identity(dim)
            mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
            tx.set_properties(**{"schema.name-mapping.default": mapping})
            tx.commit_transaction()
            return self.require()  # the catalog's table (a create transaction's is "staged")
        except (TableAlreadyExistsError, CommitFailedException):
            if self.load() is None:  # not the race we expected: say what failed
                raise
            return self.require()  # another driver created it first

    def publish_many(
        self, items: Sequence[PublishItem], *, properties: dict[str, str] | None = None
    ) -> list[PublishResult]:
        """Replace each item's partition in one table commit, skipping stale tokens."""
        if not items:
            return []
        with self._lock:
            return self._publish(items, properties)

    def _publish(
        self, items: Sequence[PublishItem], properties: dict[str, str] | None
    ) -> list[PublishResult]:
        from pyiceberg.exceptions import CommitFailedException

        sample = next((f for it in items for f in it.files), None)
        table = self._table
        if table is None:
            table = self.ensure(sample) if sample is not None else self.require()
        keys = [PartitionKey.parse(it.partition) for it in items]
        for attempt in range(_COMMIT_ATTEMPTS):
            base = table.current_snapshot()
            live_sid = base.snapshot_id if base is not None else None
            live = self.live(keys, table=table)
            results: dict[str, PublishResult] = {}
            todo: list[tuple[PublishItem, LivePartition | None]] = []
            for it in _newest_per_partition(items, results):
                cur = live.get(it.partition)
                if cur is not None and cur.token > it.token:
                    results[it.run_key] = PublishResult(
                        it.run_key, Published.STALE, cur.token, None
                    )
                elif cur is not None and cur.token == it.token:
                    results[it.run_key] = PublishResult(
                        it.run_key, Published.ALREADY, cur.token, None
                    )
                else:
                    todo.append((it, cur))
            if not todo:
                return [results[it.run_key] for it in items]
            summary = {
                **(properties or {}),
                SUMMARY_UNITS: json.dumps([[it.partition, it.run_key, it.token] for it, _ in todo]),
            }
            tx = table.transaction()
            files = [(p, it.sizes.get(p)) for it, _ in todo for p in it.files]
            described = _data_files(table.io, tx.table_metadata, files)
            data_files = dict(zip([p for p, _ in files], described, strict=True))
            with tx.update_snapshot(snapshot_properties=summary).overwrite() as ow:
                for it, cur in todo:
                    for df in cur.data_files if cur is not None else ():
                        ow.delete_data_file(df)
                    for p in it.files:
                        ow.append_data_file(data_files[p])
            try:
                table = self._table = tx.commit_transaction()
            except CommitFailedException:
                time.sleep(min(0.01 * (2**attempt), 0.5))  # back off, then re-plan
                table = self._table = self.require()
                continue
            snap = table.current_snapshot()
            sid = snap.snapshot_id if snap else None
            self._advance_index(
                live_sid, sid, [(it.partition, [data_files[p] for p in it.files]) for it, _ in todo]
            )
            for it, _ in todo:
                results[it.run_key] = PublishResult(it.run_key, Published.REPLACED, it.token, sid)
            return [results[it.run_key] for it in items]
        raise ConflictError(
            f"table {self.identifier}: {_COMMIT_ATTEMPTS} commits lost to concurrent writers; "
            "the ledger has the commits and resuming the backfill publishes them",
            table=self.identifier,
        )


def _data_files(io: Any, meta: Any, files: list[tuple[str, int | None]]) -> list[Any]:
    """Iceberg descriptions (statistics, partition values) of staged files, one footer read
    each. pyiceberg's ``parquet_file_to_data_file`` checks the first file of each parquet
    schema against the table schema; files with a schema already checked skip that check
    and the per-file statistics plan (the same public steps, done once per batch)."""
    from pyiceberg.io.pyarrow import (
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_file_to_data_file,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

    schema, spec = meta.schema(), meta.spec()
    plan = compute_statistics_plan(schema, meta.properties)
    mapping = parquet_path_to_id_mapping(schema)
    checked: list[Any] = []  # parquet schemas pyiceberg has validated in this batch

    def one(item: tuple[str, int | None]) -> Any:
        path, size = item
        src = io.new_input(path)
        with src.open() as stream:
            md = pq.read_metadata(stream)
        if not any(md.schema.equals(c) for c in checked):
            df = parquet_file_to_data_file(io, meta, path)  # the full, checked path
            checked.append(md.schema)
        else:
            stats = data_file_statistics_from_parquet_metadata(
                parquet_metadata=md, stats_columns=plan, parquet_column_mapping=mapping
            )
            df = DataFile.from_args(
                content=DataFileContent.DATA,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=stats.partition(spec, schema),
                file_size_in_bytes=size if size is not None else len(src),
                sort_order_id=None,
                spec_id=meta.default_spec_id,
                equality_ids=None,
                key_metadata=None,
                **stats.to_serialized_dict(),
            )
        df.spec_id = meta.default_spec_id  # as a manifest read sets it (the index reuses these)
        return df

    if len(files) < 4:
        return [one(f) for f in files]
    first = one(files[0])  # validates the batch's (usually only) schema once
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [first, *pool.map(one, files[1:])]


def _newest_per_partition(
    items: Sequence[PublishItem], results: dict[str, PublishResult]
) -> list[PublishItem]:
    """Of several items for one partition in a batch, only the highest token is published."""
    best: dict[str, PublishItem] = {}
    for it in items:
        cur = best.get(it.partition)
        if cur is None or it.token > cur.token:
            best[it.partition] = it
    for it in items:
        if best[it.partition] is not it:
            results[it.run_key] = PublishResult(
                it.run_key, Published.STALE, best[it.partition].token, None
            )
    return list(best.values())


def write_data_file(
    step_table: StepTable, key: PartitionKey, table: pa.Table, *, token: int, nonce: str
) -> tuple[str, int]:
    """Write one partition's output where no snapshot refers to it yet; (URI, bytes)."""
    fs, base = storage.filesystem_for(step_table.data_dir(key), step_table.settings)
    fs.create_dir(base, recursive=True)
    path = f"{base}/{data_file_name(token, nonce)}"
    pq.write_table(with_partition_columns(table, key), path, filesystem=fs)
    return storage.to_uri(fs, path), fs.get_file_info(path).size


def open_table(config: Any, step: str = "features", settings: Settings | None = None) -> Any:
    """The pyiceberg table of a pipeline step, for any reader (pandas, DuckDB, Ray Data)::

        t = rayorch.open_table("configs/pricing.yaml")
        t.scan(row_filter="city == 'SF'").to_pandas()

    ``config``: a :class:`~rayorch.spec.PipelineSpec` or the path of its YAML file.
    """
    from rayorch.settings import load_settings
    from rayorch.spec import PipelineSpec, load_pipeline

    spec = config if isinstance(config, PipelineSpec) else load_pipeline(config)
    if step != "features":
        raise NotFoundError(
            f"pipeline {spec.name!r} has no table for step {step!r}: only 'features' writes one",
            step=step,
        )
    return StepTable.for_spec(spec, settings or load_settings(), step).require()


def committed_rows(
    spec: Any, settings: Settings, keys: Iterable[PartitionKey] | None = None, **scan: Any
) -> pa.Table:
    """The current snapshot's rows (of ``keys`` when given) through pyiceberg's own scan."""
    table = StepTable.for_spec(spec, settings).load()
    if table is None:
        return pa.table({})
    if keys is not None:
        scan["row_filter"] = partition_filter(list(keys))
    return table.scan(**scan).to_arrow()


def list_tables(settings: Settings) -> list[TableInfo]:
    """Every table in rayorch's catalog, with where it lives and its current snapshot."""
    cat = catalog(settings)
    out = []
    for ns in cat.list_namespaces():
        for ident in cat.list_tables(ns):
            t = cat.load_table(ident)
            snap = t.current_snapshot()
            out.append(
                TableInfo(
                    ".".join(ident),
                    display_uri(settings),
                    warehouse(settings),
                    t.location(),
                    snap.snapshot_id if snap else None,
                    len(t.snapshots()),
                )
            )
    return sorted(out, key=lambda i: i.identifier)


def expire_snapshots(
    step_table: StepTable, protected: Iterable[int], *, older_than_ms: int, retain_last: int
) -> Any:
    """Expire old snapshots from the table's metadata, never a protected one (see
    :mod:`rayorch.data.retention`). Data files stay where they are."""
    from rayorch.data.retention import SnapshotRef, plan_expiry

    table = step_table.require()
    snaps = [SnapshotRef(s.snapshot_id, s.timestamp_ms) for s in table.snapshots()]
    cur = table.current_snapshot()
    plan = plan_expiry(
        snaps,
        cur.snapshot_id if cur else None,
        protected,
        older_than_ms=older_than_ms,
        retain_last=retain_last,
    )
    if plan.expire:
        table.maintenance.expire_snapshots().by_ids(list(plan.expire)).commit()
    return plan
