"""The durable ledger: backfills with one owner each, per-key claims with fencing tokens.

Every claim and commit is one conditional UPDATE, so correctness rests on the database's
row atomicity, not on any process being polite: under SQLite the write lock serializes them
(transactions start ``BEGIN IMMEDIATE``), under PostgreSQL the row locks and READ COMMITTED
re-check of the WHERE clause do. Tokens only grow per key; a commit is accepted only with the
current token of a RUNNING claim.

One owner per backfill: every write of a driver carries its :class:`Ownership` (backfill id +
owner epoch) and first reads the backfill row with a share lock (:meth:`Ledger._fence`); a
takeover increments the epoch under a row lock, so once it commits, no write of the previous
owner can succeed. Leases are judged by the database's clock and the lease length stored
with the backfill, never by a client's wall clock or a newcomer's own ``--lease`` setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, insert, literal_column, select, text, update
from sqlalchemy.exc import OperationalError

from rayorch.errors import (
    InfrastructureError,
    NotFoundError,
    OwnershipLostError,
)
from rayorch.ledger.backfills import DEFAULT_LEASE_S, BackfillsMixin
from rayorch.ledger.claims import ClaimsMixin, _sql_message
from rayorch.ledger.engine import _is_transient, _make_engine
from rayorch.ledger.liveness import observe as observe_owner
from rayorch.ledger.owners import Observation, OwnerInfo
from rayorch.ledger.rows import (
    BackfillRow,
    ClaimOutcome,
    ClaimResult,
    Opened,
    Ownership,
    UnitRow,
    UnitSpec,
    params_hash,
)
from rayorch.ledger.schema import (
    LEDGER_SCHEMA_VERSION,
    MIGRATIONS,
    backfills,
    meta_table,
    metadata,
)

__all__ = [
    "DEFAULT_LEASE_S",
    "BackfillRow",
    "ClaimOutcome",
    "ClaimResult",
    "Ledger",
    "Opened",
    "Ownership",
    "UnitRow",
    "UnitSpec",
    "params_hash",
]

_INIT_LOCK_KEY = 0x7261796F  # pg_advisory_xact_lock key serializing schema creation
_INIT_ATTEMPTS = 20  # transient "database is locked" on a fresh SQLite file (~30 s)

Observer = Callable[[OwnerInfo], Observation]


class Ledger(BackfillsMixin, ClaimsMixin):
    """Durable state behind a narrow interface. SQLite by default; any SQLAlchemy URL works.

    ``clock`` replaces the database clock (tests advance it instead of sleeping)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        observe: Observer = observe_owner,
    ) -> None:
        self.url = url
        self._clock = clock
        self.observe = observe
        self.engine = _make_engine(url)
        self._pg = self.engine.dialect.name == "postgresql"
        self._init_schema()

    # -- plumbing ---------------------------------------------------------------------------
    def _init_schema(self) -> None:
        """Create or migrate the schema, serialized across processes (first use of a fresh
        home by many processes at once): SQLite's write lock, PostgreSQL's advisory lock.

        SQLite can answer "database is locked" at once, without waiting out the busy timeout
        (switching a brand-new file to WAL while another process does the same): that is
        retried with backoff, for up to about half a minute, before it is an error."""
        try:
            for attempt in range(_INIT_ATTEMPTS):
                try:
                    self._init_schema_once()
                    return
                except OperationalError as e:
                    if attempt == _INIT_ATTEMPTS - 1 or not _is_transient(e):
                        raise
                    time.sleep(min(2.0, 0.05 * 2**attempt))
        except InfrastructureError:
            raise
        except Exception as e:
            raise InfrastructureError(
                f"cannot open ledger at {self.url}: {type(e).__name__}: {_sql_message(e)}. "
                "Check RAYORCH_DB_URL.",
                url=self.url,
            ) from e

    def _init_schema_once(self) -> None:
        with self.tx() as c:
            if self._pg:
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _INIT_LOCK_KEY})
            metadata.create_all(c, checkfirst=True)
            found = c.execute(
                select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar()
            if found is None:
                c.execute(
                    insert(meta_table).values(
                        key="schema_version", value=str(LEDGER_SCHEMA_VERSION)
                    )
                )
                return
            version = int(found)
            if version > LEDGER_SCHEMA_VERSION:
                raise InfrastructureError(
                    f"ledger {self.url} has schema version {version}, newer than this "
                    f"rayorch ({LEDGER_SCHEMA_VERSION}); upgrade rayorch or point "
                    "RAYORCH_DB_URL at another database.",
                    url=self.url,
                )
            while version < LEDGER_SCHEMA_VERSION:
                for ddl in MIGRATIONS[version]:
                    c.execute(text(ddl))
                version += 1
            c.execute(
                update(meta_table)
                .where(meta_table.c.key == "schema_version")
                .values(value=str(version))
            )

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def now(self, c: Connection | None = None) -> float:
        """The database's clock (epoch seconds), or the injected test clock."""
        if self._clock is not None:
            return self._clock()
        sql = f"SELECT {self._clock_sql()}"
        if c is not None:
            return float(c.execute(text(sql)).scalar())
        with self.engine.connect() as conn:
            return float(conn.execute(text(sql)).scalar())

    def _clock_sql(self) -> str:
        if self._pg:
            return "extract(epoch from clock_timestamp())"
        return "(julianday('now') - 2440587.5) * 86400.0"

    def _fence(self, c: Connection, owner: Ownership) -> float:
        """Refuse a write of a driver that no longer owns its backfill; return its lease.

        The share lock (PostgreSQL) makes a concurrent takeover wait for this transaction,
        and this transaction wait for a takeover in flight."""
        return self._fence_at(c, owner)[0]

    def _fence_at(self, c: Connection, owner: Ownership) -> tuple[float, float]:
        """:meth:`_fence`, and the database clock read in the same statement: (lease, now).
        A hot path's transaction (claims, commits) makes one round trip fewer."""
        cols = [backfills.c.owner_epoch, backfills.c.lease_s]
        if self._clock is None:  # an injected test clock is not the database's
            cols.append(literal_column(self._clock_sql()).label("now"))
        q = select(*cols).where(backfills.c.id == owner.backfill_id)
        if self._pg:
            q = q.with_for_update(read=True)
        row = c.execute(q).first()
        if row is None:
            raise NotFoundError(f"no backfill {owner.backfill_id!r} in the ledger")
        if row.owner_epoch != owner.epoch:
            raise OwnershipLostError(
                f"backfill {owner.backfill_id} was taken over by another driver (owner epoch "
                f"{row.owner_epoch}; this driver holds {owner.epoch}); this driver stops "
                "writing. `rayorch status -b " + owner.backfill_id + "` shows the new owner.",
                backfill_id=owner.backfill_id,
                epoch=owner.epoch,
                current_epoch=row.owner_epoch,
            )
        now = float(row.now) if self._clock is None else self._clock()
        return float(row.lease_s), now
