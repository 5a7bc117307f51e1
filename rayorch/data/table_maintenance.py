"""Table maintenance: expire old snapshots, then delete the files nothing retained refers to.

Both decisions are pure (:mod:`rayorch.data.retention`, :mod:`rayorch.data.table_orphans`);
this module observes the table and the storage, and applies them through pyiceberg's public
API and the same pyarrow filesystems every other location uses (local disk or ``s3://``).

Order, safe against concurrent publishers: list the stored files FIRST, then read what the
table refers to. A file staged after the listing is not in it; one staged before it is
younger than the grace period (publishes happen within a driver turn of staging); a publish
that lands after the references were read only refers to such young files -- or, for a
roll-forward of a commit older than the grace period, to a file that may just have been
deleted: that is checked after deleting, and reported loudly with the partition to re-run.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from rayorch.data import storage
from rayorch.data.table_orphans import OrphanPlan, StoredFile, plan_orphans
from rayorch.data.table_snapshots import files_by_partition, referenced_files

if TYPE_CHECKING:
    from rayorch.data.retention import ExpiryPlan
    from rayorch.data.tables import StepTable

_SWEPT = ("data", "metadata")  # the table's own folders; nothing else under it is touched


def expire_snapshots(
    step_table: StepTable,
    protected: Iterable[int],
    *,
    older_than_ms: int,
    retain_last: int,
    dry_run: bool = False,
) -> ExpiryPlan:
    """Expire old snapshots from the table's metadata, never a protected one (see
    :mod:`rayorch.data.retention`). Their files are left to :func:`remove_orphan_files`."""
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
    if plan.expire and not dry_run:
        table.maintenance.expire_snapshots().by_ids(list(plan.expire)).commit()
    return plan


@dataclass(frozen=True, slots=True)
class OrphanSweep:
    """What a sweep found and did."""

    table: str
    plan: OrphanPlan
    deleted: tuple[str, ...]  # empty on a dry run
    dry_run: bool


def stored_files(step_table: StepTable) -> list[StoredFile]:
    """Every file under the table's ``data/`` and ``metadata/`` folders, with its age."""
    fs, base = storage.filesystem_for(step_table.location, step_table.settings)
    out = []
    for sub in _SWEPT:
        sel = pafs.FileSelector(f"{base}/{sub}", allow_not_found=True, recursive=True)
        for info in fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime_ns // 1_000_000 if info.mtime_ns is not None else 0
            out.append(StoredFile(storage.to_uri(fs, info.path), info.size or 0, mtime))
    return out


def _normalizer(step_table: StepTable) -> Any:
    def norm(uri: str) -> str:
        fs, path = storage.filesystem_for(uri, step_table.settings)
        return storage.to_uri(fs, path)

    return norm


def remove_orphan_files(
    step_table: StepTable,
    *,
    cutoff_ms: int,
    dry_run: bool = False,
    excluding: Iterable[int] = (),
) -> OrphanSweep:
    """Delete table files no retained snapshot refers to and modified before ``cutoff_ms``.

    ``excluding``: snapshot ids to treat as gone already (a dry run of expire + sweep)."""
    from rayorch.errors import DataError

    stored = stored_files(step_table)  # list first: see the module docstring
    table = step_table.require()
    norm = _normalizer(step_table)
    refs = {norm(p) for p in referenced_files(table, excluding=set(excluding))}
    plan = plan_orphans(stored, refs, cutoff_ms=cutoff_ms)
    if dry_run or not plan.delete:
        return OrphanSweep(step_table.identifier, plan, (), dry_run)
    fs, _ = storage.filesystem_for(step_table.location, step_table.settings)

    def delete(f: StoredFile) -> str:
        fs.delete_file(storage.filesystem_for(f.path, step_table.settings)[1])
        return f.path

    with ThreadPoolExecutor(max_workers=8) as pool:
        deleted = tuple(pool.map(delete, plan.delete))
    # A roll-forward that committed meanwhile must not be left pointing at a deleted file.
    after = step_table.require()
    snap = after.current_snapshot()
    if snap is not None and snap.snapshot_id != (table.current_snapshot() or snap).snapshot_id:
        gone = set(deleted)
        hit = [
            (part, norm(df.file_path))
            for part, dfs in files_by_partition(after, snap.snapshot_id).items()
            for df in dfs
            if norm(df.file_path) in gone
        ]
        if hit:
            raise DataError(
                f"table {step_table.identifier}: a publish that committed during the sweep "
                f"refers to {len(hit)} deleted file(s), e.g. {hit[0][1]} of {hit[0][0]}; "
                "re-run those partitions (rayorch backfill --reprocess all)",
                table=step_table.identifier,
                partitions=sorted({p for p, _ in hit}),
            )
    return OrphanSweep(step_table.identifier, plan, deleted, dry_run)
