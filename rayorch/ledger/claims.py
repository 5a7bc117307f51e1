"""Per-key claims with fencing tokens, fenced commits, and the unit event log.

Every method that writes takes the caller's :class:`Ownership` and starts with
``Ledger._fence``: a driver whose backfill was taken over cannot claim, commit, fail, release
or report progress any more. Tokens only grow per key; a commit is accepted only with the
current token of a RUNNING claim.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import OperationalError

from rayorch.errors import NotFoundError, StaleTokenError
from rayorch.ledger.engine import _chunks, _is_transient
from rayorch.ledger.rows import ClaimOutcome, ClaimResult, Ownership, UnitRow, _row_to_unit
from rayorch.ledger.schema import backfill_units, unit_events, units
from rayorch.ledger.states import Reprocess, UnitState

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: An output replaced while the unit is DONE at the committing token.
_AMEND = (
    update(units)
    .where(units.c.run_key == bindparam("b_key"))
    .where(units.c.committed_token == bindparam("b_token"))
    .where(units.c.state == UnitState.DONE.value)
    .values(output=bindparam("b_output"))
)
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)\s*")


def _sql_message(e: BaseException) -> str:
    """A database error's real message, without SQLAlchemy's trailing link line."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e)
    return _BACKGROUND.sub(" ", text).strip()


class ClaimsMixin:
    """Unit operations of :class:`rayorch.ledger.store.Ledger`."""

    engine: Engine
    url: str

    if TYPE_CHECKING:

        def tx(self) -> Any: ...
        def now(self, c: Connection | None = None) -> float: ...
        def _fence(self, c: Connection, owner: Ownership) -> float: ...
        def _fence_at(self, c: Connection, owner: Ownership) -> tuple[float, float]: ...

    # -- reads ------------------------------------------------------------------------------
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

    # -- claims -----------------------------------------------------------------------------
    def claim_many(
        self,
        owner: Ownership,
        run_keys: Sequence[str],
        *,
        reprocess: Reprocess = Reprocess.MISSING,
        rerun: Iterable[str] = (),
        take_own: bool = False,
    ) -> list[ClaimResult]:
        """Claim keys with one conditional, set-based UPDATE per chunk, in one transaction.

        A key is granted when its state is claimable under ``reprocess`` (``rerun`` keys also
        when DONE: stale ones) and nobody else holds a live lease (database clock). The lease
        is the backfill's stored one. ``take_own`` lets this backfill re-claim its own RUNNING
        unit (a retry, or a resumed backfill taking over what its dead driver held). The new
        token is the old one plus one: tokens only grow. Keys are locked in sorted order, so
        two drivers claiming overlapping batches cannot deadlock.
        """
        bf_id = owner.backfill_id
        claimable = [s.value for s in reprocess.claimable()]
        again = set(rerun)
        keys = sorted(set(run_keys))

        def attempt(c: Connection) -> tuple[dict[str, int], dict[str, UnitRow]]:
            lease_s, now = self._fence_at(c, owner)
            free = (units.c.state != UnitState.RUNNING.value) | (units.c.lease_until < now)
            if take_own:
                free = free | (units.c.holder == bf_id)
            granted: dict[str, int] = {}
            groups = [([k for k in keys if k not in again], claimable)]
            if again:
                groups.append(([k for k in keys if k in again], [*claimable, "DONE"]))
            for group, states in groups:
                for chunk in _chunks(group, 500):
                    res = c.execute(
                        update(units)
                        .where(units.c.run_key.in_(chunk))
                        .where(units.c.state.in_(states))
                        .where(free)
                        .values(
                            state=UnitState.RUNNING.value,
                            token=units.c.token + 1,
                            holder=bf_id,
                            lease_until=now + lease_s,
                            attempts=units.c.attempts + 1,
                            updated_at=now,
                        )
                        .returning(units.c.run_key, units.c.token)
                    )
                    granted.update({k: t for k, t in res.all()})
            self._events(c, bf_id, "CLAIM", granted.items(), now)
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

    # -- commits ----------------------------------------------------------------------------
    def commit_many(
        self,
        owner: Ownership,
        commits: Sequence[tuple[str, int, dict[str, Any]]],
        versions: dict[str, dict[str, str]] | None = None,
    ) -> list[StaleTokenError | None]:
        """Fenced commits: each accepted only if its token is still the key's current one
        and this driver still owns its backfill. ``versions``: run key -> what produced it."""
        bf_id = owner.backfill_id
        ordered = sorted(commits, key=lambda x: x[0])
        vers = versions or {}

        def attempt(c: Connection) -> dict[str, Any]:
            _, now = self._fence_at(c, owner)
            stmt = (
                update(units)
                .where(units.c.run_key == bindparam("b_key"))
                .where(units.c.token == bindparam("b_token"))
                .where(units.c.state == UnitState.RUNNING.value)
                .values(
                    state=UnitState.DONE.value,
                    committed_token=bindparam("b_token"),
                    committed_at=now,
                    committed_by=bf_id,
                    holder=None,
                    lease_until=None,
                    last_error=None,
                    output=bindparam("b_output"),
                    version=bindparam("b_version"),
                    updated_at=now,
                )
            )
            params = [
                {
                    "b_key": k,
                    "b_token": t,
                    "b_output": json.dumps(o, sort_keys=True),
                    "b_version": json.dumps(vers[k], sort_keys=True) if k in vers else None,
                }
                for k, t, o in ordered
            ]
            updated = c.execute(stmt, params).rowcount if params else 0
            keys = [k for k, _, _ in ordered]
            if updated == len(keys) == len(set(keys)) and c.dialect.supports_sane_multi_rowcount:
                # Every row matched its fenced UPDATE (this token, RUNNING): all accepted,
                # nothing to read back. Otherwise the rows say which were refused and why.
                self._events(c, bf_id, "COMMIT", [(k, t) for k, t, _ in ordered], now)
                return {"rows": {}, "accepted": set(keys)}
            rows = {}
            for chunk in _chunks(keys, 500):
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
                and r.committed_by == bf_id
            ]
            self._events(c, bf_id, "COMMIT", accepted, now)
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

    def commit(
        self,
        owner: Ownership,
        run_key: str,
        token: int,
        output: dict[str, Any],
        version: dict[str, str] | None = None,
    ) -> None:
        err = self.commit_many(
            owner, [(run_key, token, output)], {run_key: version} if version else None
        )[0]
        if err is not None:
            raise err

    def amend_output(
        self, owner: Ownership, run_key: str, token: int, extra: dict[str, Any]
    ) -> bool:
        """Add what publishing produced (e.g. the model version) to a committed output."""
        return self.amend_outputs(owner, [(run_key, token, extra)])[0]

    def amend_outputs(
        self,
        owner: Ownership,
        items: Sequence[tuple[str, int, dict[str, Any]]],
        known: Mapping[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Add what one publish produced (snapshot id, model version) to each committed
        output, in ONE fenced transaction: a driver that lost its backfill amends nothing.
        An item is applied only while the unit is DONE at that very token (a newer commit's
        output is never amended with an older publish). Per item: applied or not.

        ``known``: run key -> the output as amended, where the caller holds what it committed
        (the driver's own commits): written as it is, nothing read back, when every item of
        a batch of distinct keys is known and its fenced UPDATE matches; otherwise each
        output is read and merged in the database's transaction."""
        if not items:
            return []
        keys = sorted({k for k, _, _ in items})
        whole = None
        if known is not None and len(keys) == len(items) and all(k in known for k in keys):
            whole = [
                {"b_key": k, "b_token": t, "b_output": json.dumps(known[k], sort_keys=True)}
                for k, t, _ in sorted(items, key=lambda it: it[0])
            ]

        def attempt(c: Connection) -> set[tuple[str, int]]:
            self._fence(c, owner)
            if whole is not None and c.dialect.supports_sane_multi_rowcount:
                res = c.execute(_AMEND, whole)
                if res.rowcount == len(whole):
                    return {(k, t) for k, t, _ in items}
            current: dict[str, tuple[int | None, str | None]] = {}
            for chunk in _chunks(keys, 500):
                for r in c.execute(
                    select(units.c.run_key, units.c.committed_token, units.c.output)
                    .where(units.c.run_key.in_(chunk))
                    .where(units.c.state == UnitState.DONE.value)
                ):
                    current[r.run_key] = (r.committed_token, r.output)
            merged: dict[str, dict[str, Any]] = {}
            applied: set[tuple[str, int]] = set()
            for key, token, extra in items:
                got = current.get(key)
                if got is None or got[0] != token:
                    continue
                base = merged.get(key) or (json.loads(got[1]) if got[1] else {})
                merged[key] = {**base, **extra}
                applied.add((key, token))
            if merged:
                c.execute(
                    _AMEND,
                    [
                        {
                            "b_key": k,
                            "b_token": current[k][0],
                            "b_output": json.dumps(o, sort_keys=True),
                        }
                        for k, o in sorted(merged.items())
                    ],
                )
            return applied

        applied = self._retry_tx(attempt)
        return [(k, t) in applied for k, t, _ in items]

    def invalidate(self, owner: Ownership, run_key: str, why: str) -> bool:
        """A committed unit whose output is gone: back to PENDING so it is re-run."""
        with self.tx() as c:
            _, now = self._fence_at(c, owner)
            res = c.execute(
                update(units)
                .where(units.c.run_key == run_key)
                .where(units.c.state == UnitState.DONE.value)
                .values(state=UnitState.PENDING.value, last_error=why, updated_at=now)
            )
            if res.rowcount == 1:
                self._event(c, run_key, owner.backfill_id, "INVALIDATE", None, now, why)
            return res.rowcount == 1

    # -- ending claims ----------------------------------------------------------------------
    def fail(self, owner: Ownership, run_key: str, token: int, error: str) -> bool:
        return self._end_claim(owner, run_key, token, UnitState.FAILED, "FAIL", error)

    def release(self, owner: Ownership, run_key: str, token: int, why: str = "") -> bool:
        return self._end_claim(owner, run_key, token, UnitState.PENDING, "RELEASE", why)

    def _end_claim(
        self, owner: Ownership, run_key: str, token: int, dst: UnitState, ev: str, detail: str
    ) -> bool:
        with self.tx() as c:
            _, now = self._fence_at(c, owner)
            values: dict[str, Any] = {
                "state": dst.value,
                "holder": None,
                "lease_until": None,
                "updated_at": now,
            }
            if detail:
                values["last_error"] = detail
            res = c.execute(
                update(units)
                .where(units.c.run_key == run_key)
                .where(units.c.token == token)
                .where(units.c.state == UnitState.RUNNING.value)
                .values(**values)
            )
            if res.rowcount == 1:
                self._event(c, run_key, owner.backfill_id, ev, token, now, detail)
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

    def release_all(self, owner: Ownership, why: str) -> None:
        with self.tx() as c:
            _, now = self._fence_at(c, owner)
            self._release_all(c, owner.backfill_id, now, why)

    def set_progress(self, owner: Ownership, run_key: str, progress: dict[str, Any]) -> None:
        with self.tx() as c:
            self._fence(c, owner)
            c.execute(
                update(units)
                .where(units.c.run_key == run_key)
                .values(progress=json.dumps(progress, sort_keys=True))
            )

    # -- plumbing ---------------------------------------------------------------------------
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
