"""The promotion audit log: durable, write-ahead, in the ledger's database.

Every promotion attempt is one row of ``registry_promotions``. An attempt that will move the
alias is written ``STARTED`` *before* MLflow is touched, then moved to ``FINISHED`` (the alias
names the target) or ``ROLLED_BACK`` (it does not). Attempts that move nothing (ALREADY_TARGET,
CONFLICT, REJECTED) are written ``FINISHED`` at once. A ``STARTED`` row with no live writer is
settled by reading the real alias (see ``coordinator.settle``): never left half-done.

An APPLIED attempt's ``STARTED`` row and its claim of the alias row (``alias_rows``: the
compare-and-set) commit in one transaction; its completion and the claim's settlement in
another. Promotions of one model are also serialized by a lock held in the same database's
realm (``locks.ModelLock``), so two coordinators that do not share a Ray cluster still cannot
interleave a compare-and-set; the row's revision check holds even where the lock is lost.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    select,
    update,
)

from rayorch.errors import IllegalTransitionError, InfrastructureError
from rayorch.ledger.engine import _make_engine
from rayorch.ledger.schema import metadata as ledger_metadata
from rayorch.registry import alias_rows
from rayorch.registry.alias_rows import AliasKey, RecordedAlias
from rayorch.registry.decisions import (
    AppliedStep,
    PromotionDecision,
    PromotionOutcome,
    PromotionRequest,
)
from rayorch.registry.errors import AliasRowMovedError
from rayorch.registry.locks import ModelLock
from rayorch.spec import GatesSpec

AUDIT_SCHEMA_VERSION = 1

metadata = MetaData()

promotions = Table(
    "registry_promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("registry", String(512), nullable=False),  # MLflow tracking URI
    Column("model", String(256), nullable=False),
    Column("alias", String(256), nullable=False),
    Column("kind", String(16), nullable=False),  # promote | rollback
    Column("expected", String(64)),  # NULL: the caller expected the alias to be unset
    Column("from_version", String(64)),  # the alias's version when the decision was taken
    Column("to_version", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("reasons", Text, nullable=False),  # JSON list
    Column("gates", Text, nullable=False),  # JSON of the GatesSpec applied
    Column("who", Text, nullable=False),  # JSON {user, host, pid, via}
    Column("artifact_digest", String(64)),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("schema_version", Integer, nullable=False),
    Index("ix_registry_promotions_alias", "registry", "model", "alias", "id"),
    Index("ix_registry_promotions_phase", "registry", "phase"),
)


class Phase(str, enum.Enum):
    STARTED = "STARTED"
    FINISHED = "FINISHED"
    ROLLED_BACK = "ROLLED_BACK"

    @property
    def is_terminal(self) -> bool:
        return self is not Phase.STARTED


#: The only legal phase moves; terminal phases have none.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTED: frozenset({Phase.FINISHED, Phase.ROLLED_BACK}),
    Phase.FINISHED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
}


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    id: int
    registry: str
    model: str
    alias: str
    kind: str
    expected: str | None
    from_version: str | None
    to_version: str
    outcome: PromotionOutcome
    phase: Phase
    reasons: tuple[str, ...]
    gates: dict[str, Any]
    who: dict[str, Any]
    artifact_digest: str | None
    started_at: float
    finished_at: float | None

    @property
    def moved_alias(self) -> bool:
        return self.outcome is PromotionOutcome.APPLIED and self.phase is Phase.FINISHED

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "alias": self.alias,
            "kind": self.kind,
            "expected": self.expected,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "outcome": self.outcome.value,
            "phase": self.phase.value,
            "moved_alias": self.moved_alias,
            "reasons": list(self.reasons),
            "gates": self.gates,
            "who": self.who,
            "artifact_digest": self.artifact_digest,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _row(r: Any) -> PromotionRecord:
    return PromotionRecord(
        id=int(r.id),
        registry=r.registry,
        model=r.model,
        alias=r.alias,
        kind=r.kind,
        expected=r.expected,
        from_version=r.from_version,
        to_version=r.to_version,
        outcome=PromotionOutcome(r.outcome),
        phase=Phase(r.phase),
        reasons=tuple(json.loads(r.reasons)),
        gates=json.loads(r.gates),
        who=json.loads(r.who),
        artifact_digest=r.artifact_digest,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One promotion attempt as decided, ready to be written."""

    request: PromotionRequest
    decision: PromotionDecision
    gates: GatesSpec
    artifact_digest: str | None

    @property
    def applied(self) -> bool:
        return self.decision.outcome is PromotionOutcome.APPLIED

    def key(self, registry: str) -> AliasKey:
        return AliasKey(registry, self.request.model, self.request.alias)


def _values(registry: str, a: Attempt, now: float) -> dict[str, Any]:
    request, decision = a.request, a.decision
    return {
        "registry": registry,
        "model": request.model,
        "alias": request.alias,
        "kind": request.kind,
        "expected": request.expected_current,
        "from_version": decision.current,
        "to_version": decision.target,
        "outcome": decision.outcome.value,
        "phase": (Phase.STARTED if a.applied else Phase.FINISHED).value,
        "reasons": json.dumps(list(decision.reasons)),
        "gates": json.dumps(a.gates.model_dump(mode="json"), sort_keys=True),
        "who": json.dumps(dict(request.who), sort_keys=True, default=str),
        "artifact_digest": a.artifact_digest,
        "started_at": now,
        "finished_at": None if a.applied else now,
        "schema_version": AUDIT_SCHEMA_VERSION,
    }


def _insert(conn: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows in order, one statement; their ids in the same order."""
    if not rows:
        return []
    if len(rows) == 1:
        return [int(conn.execute(insert(promotions).values(**rows[0])).inserted_primary_key[0])]
    stmt = insert(promotions).returning(promotions.c.id, sort_by_parameter_order=True)
    return [int(r.id) for r in conn.execute(stmt, rows)]


class AuditLog:
    """The ``registry_promotions`` table plus the per-model promotion lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _fsync_every_commit)
        self._lock = ModelLock(self.engine, url)
        try:
            metadata.create_all(self.engine, checkfirst=True)
            ledger_metadata.create_all(
                self.engine, tables=[alias_rows.registry_aliases], checkfirst=True
            )
        except Exception as e:
            if "already exists" not in str(e) and "UniqueViolation" not in type(e).__name__:
                raise InfrastructureError(
                    f"cannot open the promotion audit log at {url}: {e}. Check RAYORCH_DB_URL.",
                    url=url,
                ) from e  # else: another process created the tables concurrently

    def close(self) -> None:
        self._lock.close()
        self.engine.dispose()

    # -- writes -----------------------------------------------------------------------------
    def record(self, *args: Any) -> int:
        """``begin`` (same arguments), returning the new row's id only."""
        return self.begin(*args)[0]

    def begin(
        self,
        registry: str,
        request: PromotionRequest,
        decision: PromotionDecision,
        gates: GatesSpec,
        artifact_digest: str | None,
        seen: RecordedAlias | None = None,
    ) -> tuple[int, list[PromotionRecord]]:
        """``begin_batch`` for one attempt: its row id and the orphans."""
        ids, orphans = self.begin_batch(
            registry, [Attempt(request, decision, gates, artifact_digest)], seen
        )
        return ids[0], orphans

    def begin_batch(
        self, registry: str, attempts: Sequence[Attempt], seen: RecordedAlias | None = None
    ) -> tuple[list[int], list[PromotionRecord]]:
        """Write attempts of one model (an APPLIED one is written STARTED: the alias has not
        moved yet) and, in the same transaction, return the model's attempts still STARTED
        before them. The caller holds the model's lock, so those have no live writer: settle
        them before moving.

        At most one attempt may be APPLIED; it also claims its alias row from ``seen`` (the
        row as the caller read it) in the same transaction; if the row changed since, nothing
        is written and :class:`AliasRowMovedError` is raised."""
        applied = [a for a in attempts if a.applied]
        if len(applied) > 1 or len({a.request.model for a in attempts}) != 1:
            raise ValueError("a batch is one model's attempts, with at most one APPLIED")
        model = attempts[0].request.model
        now = time.time()
        orphans = select(promotions).where(
            promotions.c.registry == registry,
            promotions.c.model == model,
            promotions.c.phase == Phase.STARTED.value,
        )
        with self.engine.begin() as c:
            left = [_row(r) for r in c.execute(orphans.order_by(promotions.c.id))]
            ids = _insert(c, [_values(registry, a, now) for a in attempts])
            for a, new_id in zip(attempts, ids, strict=True):
                if a.applied and not alias_rows.claim(
                    c, a.key(registry), seen, a.decision.target, new_id
                ):
                    raise AliasRowMovedError(
                        f"another promoter moved {a.request.alias} of {model!r} in rayorch's "
                        "alias row meanwhile (a coordinator without the model's lock?); nothing "
                        "was written. Retry for a fresh decision.",
                        model=model,
                        alias=a.request.alias,
                    )
        return ids, left

    def recorded(self, key: AliasKey) -> RecordedAlias | None:
        """rayorch's row for the alias: what it last set, and whether a move is unsettled."""
        with self.engine.connect() as c:
            found = alias_rows.read(c, key)
            c.rollback()
        return found

    def transition(
        self,
        record_id: int,
        to: Phase,
        note: str | None = None,
        key: AliasKey | None = None,
        followers: Sequence[Attempt] = (),
        registry: str | None = None,
    ) -> list[int]:
        """Move a STARTED attempt to a terminal phase: one conditional UPDATE; with ``key``,
        its claim of the alias row is settled in the same transaction (kept when FINISHED,
        reverted when ROLLED_BACK).

        ``followers`` are attempts decided after this one's move (they moved nothing, e.g.
        CONFLICTs of a batch that expected what this attempt replaced): they are written,
        FINISHED, in the same transaction, which is then durable like ``begin``'s (every
        attempt a caller is answered for is on disk). Their new ids are returned."""
        if to not in TRANSITIONS[Phase.STARTED]:
            raise IllegalTransitionError(f"no promotion may become {to.value}", to=to.value)
        if any(f.applied for f in followers) or (followers and registry is None):
            raise ValueError("followers move nothing, and need their registry")
        now = time.time()
        values: dict[str, Any] = {"phase": to.value, "finished_at": now}
        tx = self.engine.begin() if followers else self._completion_tx()
        with tx as c:
            if note:
                old = c.execute(
                    select(promotions.c.reasons).where(promotions.c.id == record_id)
                ).scalar()
                values["reasons"] = json.dumps([*json.loads(old or "[]"), note])
            done = c.execute(
                update(promotions)
                .where(promotions.c.id == record_id, promotions.c.phase == Phase.STARTED.value)
                .values(**values)
            ).rowcount
            if done == 1 and key is not None:
                alias_rows.settle(c, key, record_id, moved=to is Phase.FINISHED)
            ids = _insert(c, [_values(registry or "", f, now) for f in followers])
        if done != 1:
            phase = self.get(record_id).phase
            raise IllegalTransitionError(
                f"promotion {record_id} is {phase.value}; it cannot become {to.value}",
                id=record_id,
                phase=phase.value,
                to=to.value,
            )
        return ids

    @contextmanager
    def _completion_tx(self) -> Iterator[Any]:
        """A transaction for a completion (FINISHED / ROLLED_BACK), not fsynced on SQLite:
        lost to a power cut, the row is STARTED again and is settled by reading the alias, to
        the same phase (and the next STARTED row's fsync syncs the whole WAL anyway)."""
        if self.engine.dialect.name != "sqlite":
            with self.engine.begin() as c:
                if self.engine.dialect.name == "postgresql":  # PostgreSQL's NORMAL
                    c.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                yield c
            return
        with self.engine.connect() as c:
            raw = c.connection.driver_connection
            raw.execute("PRAGMA synchronous=NORMAL")
            try:
                with c.begin():
                    yield c
            finally:
                try:
                    raw.execute("PRAGMA synchronous=FULL")
                except Exception:
                    c.invalidate()  # never hand a NORMAL connection back to the pool
                    raise

    # -- reads ------------------------------------------------------------------------------
    def get(self, record_id: int) -> PromotionRecord:
        with self.engine.connect() as c:
            r = c.execute(select(promotions).where(promotions.c.id == record_id)).one_or_none()
        if r is None:
            raise InfrastructureError(f"promotion {record_id} is not in the audit log")
        return _row(r)

    def started(self, registry: str, model: str | None = None) -> list[PromotionRecord]:
        q = select(promotions).where(
            promotions.c.registry == registry, promotions.c.phase == Phase.STARTED.value
        )
        if model is not None:
            q = q.where(promotions.c.model == model)
        with self.engine.connect() as c:
            return [_row(r) for r in c.execute(q.order_by(promotions.c.id))]

    def history(
        self, registry: str, model: str, alias: str | None = None, limit: int | None = None
    ) -> list[PromotionRecord]:
        """Attempts, oldest first (the last ``limit`` of them when given)."""
        q = select(promotions).where(promotions.c.registry == registry, promotions.c.model == model)
        if alias is not None:
            q = q.where(promotions.c.alias == alias)
        q = q.order_by(promotions.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as c:
            rows = [_row(r) for r in c.execute(q)]
        return rows[::-1]

    def applied_steps(self, registry: str, model: str, alias: str) -> list[AppliedStep]:
        q = (
            select(promotions.c.kind, promotions.c.from_version, promotions.c.to_version)
            .where(
                promotions.c.registry == registry,
                promotions.c.model == model,
                promotions.c.alias == alias,
                promotions.c.outcome == PromotionOutcome.APPLIED.value,
                promotions.c.phase == Phase.FINISHED.value,
            )
            .order_by(promotions.c.id)
        )
        with self.engine.connect() as c:
            return [AppliedStep(r.kind, r.from_version, r.to_version) for r in c.execute(q)]

    # -- the per-model promotion lock -------------------------------------------------------
    def lock(self, registry: str, model: str) -> Any:
        """Exclusive across processes and hosts sharing this database, for one model."""
        return self._lock.hold(registry, model)


def _fsync_every_commit(dbapi_conn: Any, _: Any) -> None:
    """SQLite: audit commits are fsynced (``synchronous=FULL``; the ledger runs NORMAL).

    In WAL mode NORMAL survives a process crash but not a power cut or OS crash: MLflow's
    fully synced alias move could survive while the STARTED row announcing it does not. With
    FULL the row is on disk before MLflow is touched (one WAL fsync, ~0.4 ms here).
    PostgreSQL commits are durable by default."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def who_am_i(via: str = "api") -> Mapping[str, Any]:
    """Who is promoting: recorded with every attempt."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(), "via": via}
