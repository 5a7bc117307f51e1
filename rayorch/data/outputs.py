"""A feature unit's output, staged as a data file of its step's Iceberg table.

Staging writes the partition's file under the table location, named with the unit's fencing
token (``t<token>-<nonce>.parquet``); no snapshot refers to it, so no reader sees it. The
driver commits the unit in the ledger (fenced), then publishes: one table commit replaces
exactly the committed partitions (:meth:`rayorch.data.tables.StepTable.publish_many`). A
partition is always replaced whole, never appended to. Files of attempts that never publish
stay unreferenced, so no reader sees them; ``rayorch tables expire`` deletes them once they
are older than its grace period (:mod:`rayorch.data.table_orphans`).
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa

from rayorch.data.sensors import table_duplicate_keys
from rayorch.data.tables import PublishItem, StepTable, write_data_file
from rayorch.errors import DuplicateKeysError
from rayorch.partitions import PartitionKey


def check_unique(table: pa.Table, unique_key: list[str], *, partition: str) -> None:
    """Refuse output with duplicate unique keys, naming the offending keys."""
    missing = [c for c in unique_key if c not in table.column_names]
    if missing:
        raise DuplicateKeysError(
            f"{partition}: output lacks unique key column(s) {missing}; "
            "fix features.unique_key or the feature function",
            partition=partition,
            missing_columns=missing,
        )
    sample, count = table_duplicate_keys(table.select(unique_key), unique_key)
    if count:
        raise DuplicateKeysError(
            f"{partition}: output has {count} duplicated key(s) on {'+'.join(unique_key)}, "
            f"e.g. {', '.join(sample[:5])}; the commit is refused",
            partition=partition,
            duplicate_count=count,
            duplicate_keys=list(sample),
        )


def stage(
    step_table: StepTable,
    key: PartitionKey,
    table: pa.Table,
    *,
    run_key: str,
    token: int,
    unique_key: list[str],
) -> dict[str, Any]:
    """Write the partition's new version where no reader looks; return what the ledger
    records for it (the driver publishes exactly these files after the fenced commit)."""
    check_unique(table, unique_key, partition=str(key))
    written = write_data_file(step_table, key, table, token=token, nonce=uuid.uuid4().hex[:16])
    described = {"iceberg": written.description} if written.description is not None else {}
    return {
        "table": step_table.identifier,
        "partition": str(key),
        "run_key": run_key,
        "token": token,
        "rows": table.num_rows,
        "files": [{"path": written.uri, "size": written.size, "rows": table.num_rows, **described}],
    }


def publish_item(staged: dict[str, Any]) -> PublishItem:
    """The publish of a staged (and committed) output, from what the ledger recorded."""
    return PublishItem(
        staged["run_key"],
        int(staged["token"]),
        staged["partition"],
        tuple(f["path"] for f in staged["files"]),
        {f["path"]: int(f["size"]) for f in staged["files"] if f.get("size") is not None},
        {f["path"]: f["iceberg"] for f in staged["files"] if f.get("iceberg")},
    )
