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

import json
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data import storage
from rayorch.data.file_stats import TABLE_PROPERTIES, iceberg_schema
from rayorch.data.table_catalog import (
    CATALOG_NAME,
    catalog,
    catalog_properties,
    catalog_uri,
    display_uri,
    identifier,
    list_tables,
    table_info,
    warehouse,
)
from rayorch.data.table_files import (
    FileToAdd,
    WrittenFile,
    data_file_name,
    token_of,
    with_partition_columns,
    write_file,
)
from rayorch.data.table_files import data_files as describe_files
from rayorch.data.table_maintenance import expire_snapshots, remove_orphan_files
from rayorch.data.table_snapshots import files_by_partition, live_partitions
from rayorch.data.table_types import (
    LiveFile,
    LivePartition,
    Published,
    PublishItem,
    PublishResult,
    TableInfo,
)
from rayorch.errors import ConflictError, NotFoundError
from rayorch.partitions import PartitionKey
from rayorch.settings import Settings

__all__ = [  # the table layer's public names, wherever they are defined
    "CATALOG_NAME",
    "SUMMARY_UNITS",
    "LiveFile",
    "LivePartition",
    "PublishItem",
    "PublishResult",
    "Published",
    "StepTable",
    "TableInfo",
    "WrittenFile",
    "catalog",
    "catalog_properties",
    "catalog_uri",
    "committed_rows",
    "data_file_name",
    "display_uri",
    "expire_snapshots",
    "identifier",
    "list_tables",
    "open_table",
    "partition_filter",
    "remove_orphan_files",
    "token_of",
    "warehouse",
    "with_partition_columns",
    "write_data_file",
]

SUMMARY_UNITS = "rayorch.units"  # JSON [[partition, run_key, token], ...] published by a commit
_COMMIT_ATTEMPTS = 20


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
        return live_partitions(self._files_by_partition(table, snapshot_id), keys)

    def _files_by_partition(self, table: Any, snapshot_id: int) -> dict[str, list[Any]]:
        index = self._index
        if index is not None and index[0] == snapshot_id:
            return index[1]
        grouped = files_by_partition(table, snapshot_id)
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
        return None if table is None else table_info(self.settings, self.identifier, table)

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
        arrow = pq.read_schema(path, filesystem=fs)
        try:  # the schema its writers described files against (see table_files)
            schema: Any = iceberg_schema(arrow)
        except (ValueError, TypeError, NotImplementedError):
            schema = arrow
        namespace = self.identifier.split(".")[0]
        try:
            self.catalog.create_namespace_if_not_exists(namespace)
        except DBAPIError:  # created by another driver between its check and its insert
            if (namespace,) not in self.catalog.list_namespaces():
                raise
        try:
            tx = self.catalog.create_table_transaction(
                self.identifier, schema=schema, location=self.location, properties=TABLE_PROPERTIES
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
        parsed = {it.partition: PartitionKey.parse(it.partition) for it in items}
        keys = list(parsed.values())
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
            files = [
                FileToAdd(p, parsed[it.partition], it.sizes.get(p), it.described.get(p))
                for it, _ in todo
                for p in it.files
            ]
            described = describe_files(table.io, table.metadata, files)
            data_files = dict(zip([f.path for f in files], described, strict=True))
            # Nothing live to drop (new partitions): an append, which need not open the
            # base's manifests. Either way the commit asserts the base snapshot.
            update = tx.update_snapshot(snapshot_properties=summary)
            replaces = any(cur is not None for _, cur in todo)
            with update.overwrite() if replaces else update.fast_append() as ow:
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
) -> WrittenFile:
    """Write one partition's output where no snapshot refers to it yet, described for
    Iceberg by its writer (:func:`rayorch.data.table_files.write_data_file`)."""
    return write_file(
        step_table.location, key, table, token=token, nonce=nonce, settings=step_table.settings
    )


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
