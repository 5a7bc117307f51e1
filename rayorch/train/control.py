"""A training unit's control files, next to its Ray Train checkpoints.

Ray Train needs shared storage for checkpoints anyway (a local path on one machine, NFS or an
object store on a cluster), so the unit's live progress and its yield flag live there too,
reachable by the workers, the driver and ``rayorch status`` without another service:

    <storage>/<run name>/rayorch/progress.json   epoch, step, last checkpoint, restarts, stragglers
    <storage>/<run name>/rayorch/YIELD           present: checkpoint at the next step and stop

Writes go to a temporary name and are moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from rayorch.data.storage import filesystem_for

PROGRESS = "progress.json"
YIELD = "YIELD"


def _fs(storage: str) -> tuple[pafs.FileSystem, str]:
    if "://" in storage:  # s3:// with the settings' credentials/endpoint; file:// as a path
        fs, path = filesystem_for(storage)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(storage)


@dataclass(frozen=True, slots=True)
class RunFiles:
    storage: str  # checkpoint root (path or URI)
    run_name: str  # the Ray Train run name (derived from run key and generation)

    @property
    def _where(self) -> tuple[pafs.FileSystem, str]:
        fs, root = _fs(self.storage)
        return fs, f"{root}/{self.run_name}/rayorch"

    def _path(self, name: str) -> tuple[pafs.FileSystem, str]:
        fs, d = self._where
        return fs, f"{d}/{name}"

    # -- progress ---------------------------------------------------------------------------
    def read_progress(self) -> dict[str, Any] | None:
        fs, path = self._path(PROGRESS)
        try:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write_progress(self, progress: dict[str, Any]) -> None:
        fs, d = self._where
        fs.create_dir(d, recursive=True)
        tmp = f"{d}/.{PROGRESS}.{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps({**progress, "updated_at": time.time()}, sort_keys=True).encode())
        fs.move(tmp, f"{d}/{PROGRESS}")

    # -- yield flag -------------------------------------------------------------------------
    def request_yield(self, why: str, token: int) -> None:
        """Ask the attempt holding claim ``token`` to checkpoint and stop at its next step."""
        fs, d = self._where
        fs.create_dir(d, recursive=True)
        tmp = f"{d}/.{YIELD}.{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps({"why": why, "token": token, "at": time.time()}).encode())
        fs.move(tmp, f"{d}/{YIELD}")

    def _yield_flag(self) -> dict[str, Any] | None:
        fs, path = self._path(YIELD)
        try:
            with fs.open_input_stream(path) as f:
                return dict(json.loads(f.read().decode()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"why": "yield requested", "token": None}

    def yield_requested(self) -> str | None:
        flag = self._yield_flag()
        return None if flag is None else str(flag.get("why") or "yield requested")

    def yield_requested_by(self) -> int | None:
        """The claim token the yield flag was written for (None: no flag)."""
        flag = self._yield_flag()
        if flag is None:
            return None
        token = flag.get("token")
        return int(token) if token is not None else 0

    def clear_yield(self) -> None:
        fs, path = self._path(YIELD)
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_file(path)

    def delete_all(self) -> None:
        """Remove the run's directory (checkpoints included): the next attempt starts fresh."""
        fs, root = _fs(self.storage)
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.delete_dir(f"{root}/{self.run_name}")
