"""What a table snapshot holds: its live data files, grouped by partition, from its manifests.

Manifests are immutable, so a grouping is exact for its snapshot id and can be cached by
it (:class:`rayorch.data.tables.StepTable` keeps one, advanced after its own commits).
Grouping reads the manifest entries directly (no row-filter binding): a publish needs every
file of a few partitions, fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rayorch.data.table_files import token_of
from rayorch.data.table_types import LiveFile, LivePartition
from rayorch.partitions import PartitionKey


def files_by_partition(table: Any, snapshot_id: int) -> dict[str, list[Any]]:
    """The snapshot's live DataFiles by canonical partition string."""
    from pyiceberg.manifest import ManifestContent

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
    return grouped


def live_partitions(
    grouped: dict[str, list[Any]], keys: Iterable[PartitionKey] | None
) -> dict[str, LivePartition]:
    """The partitions of a grouping (only ``keys`` when given), each with its token."""
    if keys is not None:
        allowed = {str(k) for k in keys}
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


def referenced_files(table: Any, excluding: set[int] | None = None) -> set[str]:
    """Every file a retained snapshot of ``table`` needs: its data files, manifests and
    manifest list, plus the current and logged metadata files and statistics files.
    ``excluding``: snapshots to count as expired already."""
    from pyiceberg.manifest import ManifestContent

    refs: set[str] = set()
    manifests: dict[str, Any] = {}
    for snap in table.snapshots():
        if excluding and snap.snapshot_id in excluding:
            continue
        refs.add(snap.manifest_list)
        for m in snap.manifests(table.io):
            manifests[m.manifest_path] = m
    refs.update(manifests)

    def entries(m: Any) -> list[str]:
        found = m.fetch_manifest_entry(table.io, discard_deleted=True)
        return [e.data_file.file_path for e in found]

    kinds = (ManifestContent.DATA, ManifestContent.DELETES)
    data = [m for m in manifests.values() if m.content in kinds]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for paths in pool.map(entries, data):
            refs.update(paths)
    meta = table.metadata
    if table.metadata_location:
        refs.add(table.metadata_location)
    refs.update(e.metadata_file for e in meta.metadata_log)
    refs.update(s.statistics_path for s in meta.statistics)
    refs.update(s.statistics_path for s in meta.partition_statistics)
    return refs
