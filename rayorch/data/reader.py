"""Validated reads: a Ray Data dataset built only from the files a manifest names.

Never a directory glob, so a file that lands after validation is not read; and each named
file is re-checked from its footer (size, content hash: one small read, no data pages), so a
file rewritten after validation is refused instead of read as if it were the validated one.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rayorch.data.layout import FileEntry, PartitionManifest, parquet_file_entry
from rayorch.errors import DataNotReadyError

if TYPE_CHECKING:
    import ray.data


def verify_files(manifests: Sequence[PartitionManifest], workers: int = 4) -> list[str]:
    """The manifests' file paths, in order, after checking each still matches its entry."""
    entries = [f for m in manifests for f in m.files]

    def check(entry: FileEntry) -> str | None:
        try:
            now = parquet_file_entry(entry.path)
        except (OSError, ValueError) as e:
            return f"{entry.path}: {e}"
        if (now.size, now.content_hash) != (entry.size, entry.content_hash):
            return f"{entry.path}: changed after validation ({entry.size} -> {now.size} bytes)"
        return None

    if len(entries) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = [p for p in pool.map(check, entries) if p]
    else:
        problems = [p for p in map(check, entries) if p]
    if problems:
        raise DataNotReadyError(
            f"{len(problems)} validated file(s) no longer match their manifest: "
            + "; ".join(problems[:5])
            + ("; ..." if len(problems) > 5 else "")
            + ". Re-run the sensors (`rayorch sensors check`) and the unit.",
            files=problems,
        )
    return [f.path for f in entries]


def read_validated(
    manifests: Sequence[PartitionManifest], columns: list[str] | None = None, **kw: Any
) -> ray.data.Dataset:
    """``ray.data.read_parquet`` over exactly the manifests' files (verified first)."""
    import ray.data

    files = verify_files(manifests)
    if not files:
        raise DataNotReadyError("no validated files to read: the manifests are empty")
    return ray.data.read_parquet(files, columns=columns, **kw)
