"""The durable ledger: backfills, per-key claims with fencing tokens, fenced commits.

Every claim and commit is one conditional UPDATE, so correctness rests on the database's
row atomicity, not on any process being polite: under SQLite the write lock serializes them
(transactions start ``BEGIN IMMEDIATE``), under PostgreSQL the row lock and READ COMMITTED
re-check of the WHERE clause do. Tokens only grow per key; a commit is accepted only with the
current token of a RUNNING claim.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from rayorch.errors import ClaimHeldError, InfrastructureError, NotFoundError, StaleTokenError
from rayorch.ledger.engine import _chunks, _insert_ignore, _is_transient, _make_engine
from rayorch.ledger.rows import (
    BackfillRow,
    ClaimOutcome,
    ClaimResult,
    UnitRow,
    UnitSpec,
    _row_to_backfill,
    _row_to_unit,
    driver_identity,
    params_hash,
)
from rayorch.ledger.schema import (
    LEDGER_SCHEMA_VERSION,
    backfill_units,
    backfills,
    meta_table,
    metadata,
    unit_events,
    units,
)
from rayorch.ledger.states import (
    BackfillState,
    Reprocess,
    UnitState,
    check_backfill,
)

__all__ = [
    "DEFAULT_LEASE_S",
    "BackfillRow",
    "ClaimOutcome",
    "ClaimResult",
    "Ledger",
    "UnitRow",
    "UnitSpec",
    "_make_engine",
    "driver_identity",
    "params_hash",
]

DEFAULT_LEASE_S = 60.0


class Ledger:
    """Durable state behind a narrow interface. SQLite by default; any SQLAlchemy URL works."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.clock = clock
        self.engine = _make_engine(url)
        self._init_schema()

    # -- plumbing ---------------------------------------------------------------------------
    def _init_schema(self) -> None:
        try:
            metadata.create_all(self.engine, checkfirst=True)
            with self.tx() as c:
                found = c.execute(
                    select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).scalar()
                if found is None:
                    c.execute(
                        insert(meta_table).values(
                            key="schema_version", value=str(LEDGER_SCHEMA_VERSION)
                        )
                    )
                elif int(found) != LEDGER_SCHEMA_VERSION:
                    raise InfrastructureError(
                        f"ledger {self.url} has schema version {found}; this rayorch needs "
                        f"{LEDGER_SCHEMA_VERSION}. Point RAYORCH_DB_URL at a new database.",
                        url=self.url,
                    )
        except InfrastructureError:
            raise
        except Exception as e:
            if "already exists" in str(e) or "UniqueViolation" in type(e).__name__:
                return  # another process initialised it concurrently
            raise InfrastructureError(
                f"cannot open ledger at {self.url}: {e}. Check RAYORCH_DB_URL.", url=self.url
            ) from e

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- backfills --------------------------------------------------------------------------
    def start_backfill(
        self,
        pipeline: str,
        params: dict[str, Any],
        config_fingerprint: str,
        planned: Sequence[UnitSpec],
        *,
        resume_id: str | None = None,
        stale_after_s: float = DEFAULT_LEASE_S,
    ) -> tuple[BackfillRow, bool]:
        """Persist the backfill and its planned units before anything runs.

        Returns (backfill, resumed). With ``resume_id`` that backfill is taken over; otherwise
        an unfinished backfill with the same parameters whose driver stopped heart-beating is
        resumed, and else a new one is created.
        """
        now = self.clock()
        phash = params_hash(params)
        owner = driver_identity()
        with self.tx() as c:
            row = None
            if resume_id is not None:
                row = c.execute(select(backfills).where(backfills.c.id == resume_id)).first()
                if row is None:
                    raise NotFoundError(f"no backfill {resume_id!r} in the ledger", id=resume_id)
                if (
                    row.state == BackfillState.RUNNING.value
                    and row.heartbeat_at > now - stale_after_s
                ):
                    raise ClaimHeldError(
                        f"backfill {resume_id} is still driven by {row.owner} (heartbeat "
                        f"{now - row.heartbeat_at:.0f}s ago); wait for it, or "
                        f"`rayorch backfill cancel {resume_id}` first",
                        id=resume_id,
                        owner=row.owner,
                    )
            else:
                row = c.execute(
                    select(backfills)
                    .where(backfills.c.pipeline == pipeline)
                    .where(backfills.c.params_hash == phash)
                    .where(
                        # A preempted backfill resumes at once; a running one once its
                        # driver stopped heart-beating.
                        (backfills.c.state == BackfillState.PREEMPTED.value)
                        | (
                            backfills.c.state.in_(
                                [BackfillState.RUNNING.value, BackfillState.CREATED.value]
                            )
                            & (backfills.c.heartbeat_at < now - stale_after_s)
                        )
                    )
                    .order_by(backfills.c.created_at.desc())
                ).first()
            resumed = row is not None
            if row is not None:
                bf_id = row.id
                check_backfill(BackfillState(row.state), BackfillState.RUNNING, bf_id)
                c.execute(
                    update(backfills)
                    .where(backfills.c.id == bf_id)
                    .values(
                        state=BackfillState.RUNNING.value,
                        owner=owner,
                        updated_at=now,
                        heartbeat_at=now,
                        cancel_requested=False,
                        summary=None,
                    )
                )
            else:
                bf_id = (
                    f"bf-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
                )
                c.execute(
                    insert(backfills).values(
                        id=bf_id,
                        pipeline=pipeline,
                        params_hash=phash,
                        params=json.dumps(params, sort_keys=True),
                        config_fingerprint=config_fingerprint,
                        state=BackfillState.RUNNING.value,
                        owner=owner,
                        created_at=now,
                        updated_at=now,
                        heartbeat_at=now,
                        cancel_requested=False,
                    )
                )
            self._register_units(c, bf_id, planned, now)
            out = c.execute(select(backfills).where(backfills.c.id == bf_id)).one()
        return _row_to_backfill(out), resumed

    def _register_units(
        self, c: Connection, backfill_id: str, planned: Sequence[UnitSpec], now: float
    ) -> None:
        if not planned:
            return
        known = set()
        keys = [u.run_key for u in planned]
        for chunk in _chunks(keys, 500):
            known.update(
                c.execute(select(units.c.run_key).where(units.c.run_key.in_(chunk))).scalars()
            )
        new = [
            {
                "run_key": u.run_key,
                "pipeline": u.pipeline,
                "step": u.step,
                "partition": u.partition,
                "state": UnitState.PENDING.value,
                "token": 0,
                "attempts": 0,
                "updated_at": now,
            }
            for u in planned
            if u.run_key not in known
        ]
        if new:
            c.execute(_insert_ignore(self.engine, units), new)
        linked = set(
            c.execute(
                select(backfill_units.c.run_key).where(backfill_units.c.backfill_id == backfill_id)
            ).scalars()
        )
        links = [
            {"backfill_id": backfill_id, "run_key": u.run_key, "position": i}
            for i, u in enumerate(planned)
            if u.run_key not in linked
        ]
        if links:
            c.execute(_insert_ignore(self.engine, backfill_units), links)

    def get_backfill(self, backfill_id: str) -> BackfillRow:
        with self.engine.connect() as c:
            row = c.execute(select(backfills).where(backfills.c.id == backfill_id)).first()
        if row is None:
            raise NotFoundError(
                f"no backfill {backfill_id!r} in the ledger ({self.url}); "
                "`rayorch status` lists backfills",
                id=backfill_id,
            )
        return _row_to_backfill(row)

    def list_backfills(self, pipeline: str | None = None, limit: int = 20) -> list[BackfillRow]:
        q = select(backfills).order_by(backfills.c.created_at.desc()).limit(limit)
        if pipeline:
            q = q.where(backfills.c.pipeline == pipeline)
        with self.engine.connect() as c:
            return [_row_to_backfill(r) for r in c.execute(q)]

    def finish_backfill(
        self, backfill_id: str, state: BackfillState, summary: dict[str, Any]
    ) -> None:
        now = self.clock()
        with self.tx() as c:
            cur = c.execute(select(backfills.c.state).where(backfills.c.id == backfill_id)).scalar()
            check_backfill(BackfillState(cur), state, backfill_id)
            c.execute(
                update(backfills)
                .where(backfills.c.id == backfill_id)
                .values(state=state.value, updated_at=now, summary=json.dumps(summary))
            )

    def request_cancel(self, backfill_id: str) -> BackfillRow:
        bf = self.get_backfill(backfill_id)
        now = self.clock()
        with self.tx() as c:
            if bf.state.is_terminal:
                return bf
            alive = bf.heartbeat_at > now - DEFAULT_LEASE_S
            values: dict[str, Any] = {"cancel_requested": True, "updated_at": now}
            if not alive:  # nobody will act on the flag: cancel here and free its claims
                values["state"] = BackfillState.CANCELLED.value
                self._release_all(c, backfill_id, now, "cancelled while its driver was down")
            c.execute(update(backfills).where(backfills.c.id == backfill_id).values(**values))
        return self.get_backfill(backfill_id)

    def heartbeat(self, backfill_id: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Extend this backfill's leases. Returns True when cancellation was requested."""
        now = self.clock()
        with self.tx() as c:
            c.execute(
                update(units)
                .where(units.c.holder == backfill_id)
                .where(units.c.state == UnitState.RUNNING.value)
                .values(lease_until=now + lease_s)
            )
            c.execute(
                update(backfills).where(backfills.c.id == backfill_id).values(heartbeat_at=now)
            )
            flag = c.execute(
                select(backfills.c.cancel_requested).where(backfills.c.id == backfill_id)
            ).scalar()
        return bool(flag)

    def backfill_run_keys(self, backfill_id: str) -> list[str]:
        with self.engine.connect() as c:
            return list(
                c.execute(
                    select(backfill_units.c.run_key)
                    .where(backfill_units.c.backfill_id == backfill_id)
                    .order_by(backfill_units.c.position)
                ).scalars()
            )

    # -- units ------------------------------------------------------------------------------
    def get_units(self, run_keys: Iterable[str]) -> dict[str, UnitRow]:
        out: dict[str, UnitRow] = {}
        with self.engine.connect() as c:
            for chunk in _chunks(list(run_keys), 500):
                for r in c.execute(select(units).where(units.c.run_key.in_(chunk))):
                    out[r.run_key] = _row_to_unit(r)
        return out

    def unit_counts(self, backfill_id: str) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(units.c.state, func.count())
                .select_from(
                    units.join(backfill_units, units.c.run_key == backfill_units.c.run_key)
                )
                .where(backfill_units.c.backfill_id == backfill_id)
                .group_by(units.c.state)
            ).all()
        return {s.value: 0 for s in UnitState} | {state: n for state, n in rows}

    def claim_many(
        self,
        backfill_id: str,
        run_keys: Sequence[str],
        *,
        reprocess: Reprocess = Reprocess.MISSING,
        lease_s: float = DEFAULT_LEASE_S,
        take_own: bool = False,
    ) -> list[ClaimResult]:
        """Claim keys with one conditional, set-based UPDATE per chunk, in one transaction.

        A key is granted when its state is claimable under ``reprocess`` and nobody else holds
        a live lease. ``take_own`` lets this backfill re-claim its own RUNNING unit (a retry,
        or a resumed backfill taking over what its dead driver held). The new token is the old
        one plus one: tokens only grow. Keys are locked in sorted order, so two drivers
        claiming overlapping batches cannot deadlock.
        """
        now = self.clock()
        claimable = [s.value for s in reprocess.claimable()]
        keys = sorted(set(run_keys))
        free = (units.c.state != UnitState.RUNNING.value) | (units.c.lease_until < now)
        if take_own:
            free = free | (units.c.holder == backfill_id)

        def attempt(c: Connection) -> tuple[dict[str, int], dict[str, UnitRow]]:
            granted: dict[str, int] = {}
            for chunk in _chunks(keys, 500):
                res = c.execute(
                    update(units)
                    .where(units.c.run_key.in_(chunk))
                    .where(units.c.state.in_(claimable))
                    .where(free)
                    .values(
                        state=UnitState.RUNNING.value,
                        token=units.c.token + 1,
                        holder=backfill_id,
                        lease_until=now + lease_s,
                        attempts=units.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(units.c.run_key, units.c.token)
                )
                granted.update({k: t for k, t in res.all()})
            self._events(c, backfill_id, "CLAIM", granted.items(), now)
            others: dict[str, UnitRow] = {}
            for chunk in _chunks([k for k in keys if k not in granted], 500):
                for r in c.execute(select(units).where(units.c.run_key.in_(chunk))):
                    others[r.run_key] = _row_to_unit(r)
            return granted, others

        granted, others = self._retry_tx(attempt)
        results: list[ClaimResult] = []
        for key in run_keys:
            if key in granted:
                results.append(ClaimResult(key, ClaimOutcome.GRANTED, granted[key]))
                continue
            unit = others.get(key)
            if unit is None:
                raise NotFoundError(f"unit {key!r} is not registered in the ledger", run_key=key)
            if unit.state is UnitState.DONE:
                outcome = ClaimOutcome.ALREADY_DONE
            elif unit.state is UnitState.FAILED:
                outcome = ClaimOutcome.FAILED_BEFORE
            else:
                outcome = ClaimOutcome.HELD
            results.append(ClaimResult(key, outcome, None, unit))
        return results

    def commit_many(
        self, backfill_id: str, commits: Sequence[tuple[str, int, dict[str, Any]]]
    ) -> list[StaleTokenError | None]:
        """Fenced commits: each accepted only if its token is still the key's current one."""
        now = self.clock()
        ordered = sorted(commits, key=lambda x: x[0])
        stmt = (
            update(units)
            .where(units.c.run_key == bindparam("b_key"))
            .where(units.c.token == bindparam("b_token"))
            .where(units.c.state == UnitState.RUNNING.value)
            .values(
                state=UnitState.DONE.value,
                committed_token=bindparam("b_token"),
                committed_at=now,
                committed_by=backfill_id,
                holder=None,
                lease_until=None,
                last_error=None,
                output=bindparam("b_output"),
                updated_at=now,
            )
        )
        params = [
            {"b_key": k, "b_token": t, "b_output": json.dumps(o, sort_keys=True)}
            for k, t, o in ordered
        ]

        def attempt(c: Connection) -> dict[str, Any]:
            if params:
                c.execute(stmt, params)
            rows = {}
            for chunk in _chunks([k for k, _, _ in ordered], 500):
                for r in c.execute(
                    select(
                        units.c.run_key,
                        units.c.token,
                        units.c.state,
                        units.c.holder,
                        units.c.committed_token,
                        units.c.committed_at,
                        units.c.committed_by,
                    ).where(units.c.run_key.in_(chunk))
                ):
                    rows[r.run_key] = r
            accepted = [
                (k, t)
                for k, t, _ in ordered
                if (r := rows.get(k)) is not None
                and r.state == UnitState.DONE.value
                and r.committed_token == t
                and r.committed_at == now
                and r.committed_by == backfill_id
            ]
            self._events(c, backfill_id, "COMMIT", accepted, now)
            return {"rows": rows, "accepted": {k for k, _ in accepted}}

        got = self._retry_tx(attempt)
        out: list[StaleTokenError | None] = []
        for key, token, _ in commits:
            if key in got["accepted"]:
                out.append(None)
                continue
            cur = got["rows"].get(key)
            current = cur.token if cur else None
            out.append(
                StaleTokenError(
                    f"commit of {key} with token {token} refused: current token is {current} "
                    f"(state {cur.state if cur else 'unknown'}, "
                    f"held by {cur.holder if cur else None})",
                    run_key=key,
                    token=token,
                    current_token=current,
                )
            )
        return out

    def _events(
        self, c: Connection, backfill_id: str, ev: str, items: Iterable[tuple[str, int]], now: float
    ) -> None:
        rows = [
            {
                "run_key": k,
                "backfill_id": backfill_id,
                "event": ev,
                "token": t,
                "at": now,
                "detail": None,
            }
            for k, t in items
        ]
        if rows:
            c.execute(insert(unit_events), rows)

    def _retry_tx(self, fn: Callable[[Connection], Any], attempts: int = 5) -> Any:
        """Run ``fn`` in a transaction; retry when the database reports a deadlock."""
        for i in range(attempts):
            try:
                with self.tx() as c:
                    return fn(c)
            except OperationalError as e:
                if i == attempts - 1 or not _is_transient(e):
                    raise
                time.sleep(0.01 * (2**i))
        raise AssertionError("unreachable")

    def commit(self, backfill_id: str, run_key: str, token: int, output: dict[str, Any]) -> None:
        err = self.commit_many(backfill_id, [(run_key, token, output)])[0]
        if err is not None:
            raise err

    def fail(self, backfill_id: str, run_key: str, token: int, error: str) -> bool:
        return self._end_claim(backfill_id, run_key, token, UnitState.FAILED, "FAIL", error)

    def release(self, backfill_id: str, run_key: str, token: int, why: str = "") -> bool:
        return self._end_claim(backfill_id, run_key, token, UnitState.PENDING, "RELEASE", why)

    def _end_claim(
        self, backfill_id: str, run_key: str, token: int, dst: UnitState, ev: str, detail: str
    ) -> bool:
        now = self.clock()
        values: dict[str, Any] = {
            "state": dst.value,
            "holder": None,
            "lease_until": None,
            "updated_at": now,
        }
        if detail:
            values["last_error"] = detail
        with self.tx() as c:
            res = c.execute(
                update(units)
                .where(units.c.run_key == run_key)
                .where(units.c.token == token)
                .where(units.c.state == UnitState.RUNNING.value)
                .values(**values)
            )
            if res.rowcount == 1:
                self._event(c, run_key, backfill_id, ev, token, now, detail)
            return res.rowcount == 1

    def _release_all(self, c: Connection, backfill_id: str, now: float, why: str) -> None:
        held = c.execute(
            select(units.c.run_key, units.c.token)
            .where(units.c.holder == backfill_id)
            .where(units.c.state == UnitState.RUNNING.value)
        ).all()
        for key, token in held:
            c.execute(
                update(units)
                .where(units.c.run_key == key)
                .where(units.c.token == token)
                .values(
                    state=UnitState.PENDING.value, holder=None, lease_until=None, updated_at=now
                )
            )
            self._event(c, key, backfill_id, "RELEASE", token, now, why)

    def release_all(self, backfill_id: str, why: str) -> None:
        with self.tx() as c:
            self._release_all(c, backfill_id, self.clock(), why)

    def set_progress(self, run_key: str, progress: dict[str, Any]) -> None:
        with self.tx() as c:
            c.execute(
                update(units)
                .where(units.c.run_key == run_key)
                .values(progress=json.dumps(progress, sort_keys=True))
            )

    def events(
        self, run_key: str | None = None, event_name: str | None = None
    ) -> list[dict[str, Any]]:
        q = select(unit_events).order_by(unit_events.c.id)
        if run_key:
            q = q.where(unit_events.c.run_key == run_key)
        if event_name:
            q = q.where(unit_events.c.event == event_name)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def _event(
        self,
        c: Connection,
        run_key: str,
        backfill_id: str | None,
        ev: str,
        token: int | None,
        now: float,
        detail: str | None = None,
    ) -> None:
        c.execute(
            insert(unit_events).values(
                run_key=run_key,
                backfill_id=backfill_id,
                event=ev,
                token=token,
                at=now,
                detail=detail,
            )
        )
