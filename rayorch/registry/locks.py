"""The per-model promotion lock, held in the audit database's realm.

Promotions of one model are serialized across processes and hosts that share the ledger
database: a session-level advisory lock on PostgreSQL (on one autocommit session kept open), a
``flock`` on a file beside the SQLite database. So two coordinators that do not share a Ray
cluster still cannot interleave a compare-and-set.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text


class ModelLock:
    def __init__(self, engine: Any, url: str) -> None:
        self.engine = engine
        self._thread_lock = threading.Lock()
        self._path = _sqlite_lock_path(url)
        self._file: Any = None
        self._conn: Any = None

    @contextmanager
    def hold(self, registry: str, model: str) -> Iterator[None]:
        """Exclusive across processes and hosts sharing this database, for one model."""
        with self._thread_lock:
            if self.engine.dialect.name == "postgresql":
                with self._advisory(_lock_key(registry, model)):
                    yield
            elif self._path is not None:
                import fcntl

                if self._file is None:
                    self._file = open(self._path, "a+b")  # noqa: SIM115 (kept open)
                fd = self._file.fileno()
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            else:  # in-memory SQLite: one process only
                yield

    @contextmanager
    def _advisory(self, key: int) -> Iterator[None]:
        if self._conn is None:  # one autocommit session for the locks: two round trips a hold
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        c = self._conn
        try:
            c.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except Exception:
            self._drop()
            raise
        try:
            yield
        finally:
            try:
                c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception:
                self._drop()  # a closed session holds no locks

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.invalidate()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _lock_key(registry: str, model: str) -> int:
    h = hashlib.sha256(f"rayorch.registry\0{registry}\0{model}".encode()).digest()
    return int.from_bytes(h[:8], "big", signed=True)


def _sqlite_lock_path(url: str) -> str | None:
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1]
    if not path or path == ":memory:":
        return None
    return os.path.abspath(path) + ".registry-lock"
