"""Staged, fenced, atomically published partition outputs.

Order of a commit (crash-safe at every point):

1. ``stage``: write files under ``<partition>/_data/t<token>-<nonce>/`` — invisible to readers,
   who only follow ``_manifest.json``.
2. the ledger accepts the commit only with the current fencing token (the driver does this).
3. ``publish``: under a per-partition lock, replace ``_manifest.json`` atomically with the
   committed manifest — unless a higher token is already published — then delete versions with
   lower tokens. A crash between 2 and 3 is rolled forward from the ledger on resume.

The partition is replaced whole, never appended to.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rayorch.data.layout import (
    MANIFEST_NAME,
    PartitionManifest,
    atomic_write_text,
    output_partition_dir,
    parquet_file_entry,
    read_committed_manifest,
)
from rayorch.data.sensors import table_duplicate_keys
from rayorch.errors import DataNotReadyError, DuplicateKeysError
from rayorch.partitions import PartitionKey

DATA_DIR = "_data"


def _version_dir(token: int) -> str:
    return f"t{token:08d}-{uuid.uuid4().hex[:8]}"


def _token_of(dirname: str) -> int | None:
    try:
        return int(dirname[1:9]) if dirname.startswith("t") else None
    except ValueError:
        return None


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
    output_root: str | Path,
    key: PartitionKey,
    table: pa.Table,
    *,
    run_key: str,
    token: int,
    unique_key: list[str],
) -> PartitionManifest:
    """Write a new version of the partition where no reader looks; return its manifest."""
    check_unique(table, unique_key, partition=str(key))
    vdir = output_partition_dir(output_root, key) / DATA_DIR / _version_dir(token)
    vdir.mkdir(parents=True, exist_ok=False)
    path = vdir / "part-0.parquet"
    pq.write_table(table, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return PartitionManifest.build(
        str(key),
        [parquet_file_entry(path)],
        run_key=run_key,
        token=token,
        committed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )


def publish(output_root: str | Path, key: PartitionKey, manifest: PartitionManifest) -> bool:
    """Make ``manifest`` the live version unless a higher token is live. Idempotent."""
    pdir = output_partition_dir(output_root, key)
    pdir.mkdir(parents=True, exist_ok=True)
    with open(pdir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_committed_manifest(output_root, key)
        if current is not None and (current.token or 0) > (manifest.token or 0):
            return False
        if current is None or current.to_dict() != manifest.to_dict():
            for f in manifest.files:
                if not os.path.exists(f.path):
                    raise DataNotReadyError(
                        f"{key}: committed file {f.path} is missing; cannot publish",
                        partition=str(key),
                        path=f.path,
                    )
            atomic_write_text(pdir / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=1))
        _collect_garbage(pdir, manifest.token or 0)
    return True


def _collect_garbage(pdir: Path, live_token: int) -> None:
    """Delete versions with a lower token than the live one: their commits can never succeed."""
    data = pdir / DATA_DIR
    if not data.is_dir():
        return
    for entry in os.scandir(data):
        tok = _token_of(entry.name)
        if tok is not None and tok < live_token:
            shutil.rmtree(entry.path, ignore_errors=True)


def read_manifests(
    output_root: str | Path, keys: Iterable[PartitionKey]
) -> tuple[list[PartitionManifest], list[str]]:
    """Committed manifests for ``keys`` and the partitions that have none."""
    found, missing = [], []
    for k in keys:
        m = read_committed_manifest(output_root, k)
        if m is None:
            missing.append(str(k))
        else:
            found.append(m)
    return found, missing


def read_table(manifests: Iterable[PartitionManifest]) -> pa.Table:
    """Read exactly the files the manifests name (never a directory listing)."""
    files = [f.path for m in manifests for f in m.files]
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
