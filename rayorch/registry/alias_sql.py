"""A real compare-and-set of an MLflow alias, on MLflow's SQL store.

MLflow's alias API is last-writer-wins: ``set_registered_model_alias`` overwrites whatever the
alias names. The coordinator serializes rayorch's promotions, but between its read of the alias
and its write, anything outside rayorch (the MLflow UI, a script) could still move it and be
silently overwritten. Where the registry is MLflow's SQL store (the embedded default, SQLite),
this module moves the alias with one conditional statement in MLflow's own database::

    UPDATE registered_model_aliases SET version = :target
     WHERE workspace = :ws AND name = :model AND alias = :alias AND version = :expected
       AND EXISTS (the target version, not deleted)

(an ``INSERT … SELECT … WHERE EXISTS`` when the alias is expected to be unset, which the
table's primary key makes conditional too). It is atomic in the database: it moves the alias
only if it still names what the coordinator read, and never to a version deleted meanwhile.

It goes through MLflow's own engine and MLflow's own table objects (the ORM classes' tables, so
column names follow MLflow's migrations), the same rows the public API reads and writes; it is
also ~10x cheaper than the public calls, which load the model, the version with its tags and
all aliases (~10 ORM statements) to read or write one number. Where the store is anything else
(a tracking server), ``SqlAliases.of`` returns None and the public API is used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, exists, insert, literal, select, update
from sqlalchemy.exc import IntegrityError


@dataclass(frozen=True, slots=True)
class AliasMove:
    """The result of a compare-and-set: moved, or why not (the alias's actual version)."""

    moved: bool
    actual: str | None = None
    reason: str = ""


class SqlAliases:
    """Alias rows of MLflow's SQL model registry, read and compare-and-set in place."""

    def __init__(self, store: Any) -> None:
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import (
            SqlModelVersion,
            SqlRegisteredModelAlias,
        )

        self.store = store
        self.engine = store.engine
        self.aliases = SqlRegisteredModelAlias.__table__
        self.versions = SqlModelVersion.__table__
        self.deleted = STAGE_DELETED_INTERNAL
        self.sqlite = self.engine.dialect.name == "sqlite"
        for t, cols in ((self.aliases, ("workspace", "name", "alias", "version")),
                        (self.versions, ("workspace", "name", "version", "current_stage"))):  # fmt: skip
            missing = [c for c in cols if c not in t.c]
            if missing:
                raise LookupError(f"MLflow's {t.name} has no column(s) {missing}")
        self._build()
        self._mutex = threading.Lock()
        self._conn: Any = None

    @classmethod
    def of(cls, client: Any) -> SqlAliases | None:
        """For an ``MlflowClient`` on a SQL store; None for any other store or MLflow layout."""
        try:
            from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

            store = client._get_registry_client().store
            if not isinstance(store, SqlAlchemyStore) or not hasattr(
                store, "_get_active_workspace"
            ):
                return None
            return cls(store)
        except Exception:
            return None

    def _build(self) -> None:
        """The three statements, built once with bind parameters (SQLAlchemy caches them)."""
        a, v = self.aliases.c, self.versions.c
        ws, model, alias = bindparam("b_ws"), bindparam("b_model"), bindparam("b_alias")
        target = bindparam("b_target", type_=Integer)
        self._read = select(a.version).where(a.workspace == ws, a.name == model, a.alias == alias)
        target_exists = exists(
            select(literal(1)).where(
                v.workspace == ws,
                v.name == model,
                v.version == target,
                v.current_stage != self.deleted,
            )
        )
        self._set = (
            update(self.aliases)
            .where(a.workspace == ws, a.name == model, a.alias == alias)
            .where(a.version == bindparam("b_expected", type_=Integer), target_exists)
            .values(version=target)
        )
        self._add = insert(self.aliases).from_select(
            ["workspace", "name", "alias", "version"],
            select(ws, model, alias, target).where(target_exists),
        )

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """One connection kept open across calls (no pool checkout, ping or PRAGMAs per call);
        each use ends its transaction; on any error it is dropped and the next use reconnects.
        """
        with self._mutex:
            if self._conn is None:
                conn = self.engine.connect()
                if self.sqlite:  # as MLflow's own sessions do: wait on locks, enforce FKs
                    conn.exec_driver_sql("PRAGMA busy_timeout = 20000")
                    conn.exec_driver_sql("PRAGMA foreign_keys = ON")
                    conn.commit()
                self._conn = conn
            try:
                yield self._conn
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with suppress(Exception):
                conn.close()

    def _where(self, model: str, alias: str) -> dict[str, Any]:
        return {"b_ws": self.store._get_active_workspace(), "b_model": model, "b_alias": alias}

    def read(self, model: str, alias: str) -> str | None:
        with self._connection() as conn:
            v = conn.execute(self._read, self._where(model, alias)).scalar()
            conn.rollback()  # hold no read transaction between calls
        return None if v is None else str(v)

    def compare_and_set(
        self, model: str, alias: str, expected: str | None, target: str
    ) -> AliasMove:
        """Point ``alias`` at ``target`` only if it names ``expected`` (None: unset) now."""
        params = {**self._where(model, alias), "b_target": int(target)}
        if expected is None:
            stmt = self._add
        else:
            stmt, params["b_expected"] = self._set, int(expected)
        try:
            with self._connection() as conn:
                done = conn.execute(stmt, params).rowcount
                conn.commit()
        except IntegrityError:  # the alias row exists: it was set meanwhile
            done = 0
        if done == 1:
            return AliasMove(True, target)
        actual = self.read(model, alias)
        if actual != expected:
            why = f"the alias was moved outside rayorch to {actual or 'none'} meanwhile"
        else:
            why = f"version {target} was deleted meanwhile"
        return AliasMove(False, actual, why)

    def prefer_wal(self) -> bool:
        """Put a local SQLite MLflow database in WAL mode (persistent; True if it is now).

        In its default rollback-journal mode every MLflow commit, the alias move among them,
        costs several fsyncs (journal, database, journal delete: 3-5 ms here); in WAL mode one,
        with the same durability (MLflow leaves ``synchronous`` at FULL), and readers such as
        ``mlflow ui`` no longer block writers. MLflow's own file-store migration creates its
        SQLite databases in WAL mode. Set ``RAYORCH_MLFLOW_SQLITE_WAL=0`` to leave the mode
        alone (e.g. a database on a network file system, where WAL does not work).
        """
        if not self.sqlite or os.environ.get("RAYORCH_MLFLOW_SQLITE_WAL", "1") == "0":
            return False
        if (self.engine.url.database or ":memory:") == ":memory:":
            return False
        try:
            with self._connection() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                if str(mode).lower() != "wal":
                    mode = conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
                conn.commit()
        except Exception:
            return False  # busy or read-only: keep the current mode, correctness is unchanged
        return str(mode).lower() == "wal"
