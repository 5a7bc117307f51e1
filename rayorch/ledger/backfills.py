"""Backfill rows of the ledger: opening (resume, takeover), ownership, leases, cancel.

A backfill has one owner at a time. Opening one either starts it, resumes it (same params,
a resumable state) or takes it over from a dead owner: the owner epoch is incremented under a
row lock, so no write of the previous owner can succeed afterwards (``Ledger._fence``).
Leases are judged by the database's clock and the lease stored with the backfill.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from rayorch.errors import ClaimHeldError, NotFoundError
from rayorch.ledger.engine import _chunks, _insert_ignore
from rayorch.ledger.liveness import current_owner
from rayorch.ledger.owners import Observation, OwnerInfo, Verdict, judge_owner
from rayorch.ledger.rows import (
    BackfillRow,
    Opened,
    Ownership,
    UnitSpec,
    _row_to_backfill,
    params_hash,
)
from rayorch.ledger.schema import backfill_units, backfills, units
from rayorch.ledger.states import BackfillState, UnitState, check_backfill

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEFAULT_LEASE_S = 60.0

#: Backfill states a newcomer may resume (or take over from a dead owner).
_RESUMABLE = (
    BackfillState.RUNNING.value,
    BackfillState.CREATED.value,
    BackfillState.PREEMPTED.value,
    BackfillState.INCOMPLETE.value,
)


class BackfillsMixin:
    """Backfill operations of :class:`rayorch.ledger.store.Ledger`."""

    engine: Engine
    url: str
    _pg: bool
    observe: Callable[[OwnerInfo], Observation]

    if TYPE_CHECKING:

        def tx(self) -> Any: ...
        def now(self, c: Connection | None = None) -> float: ...
        def _fence(self, c: Connection, owner: Ownership) -> float: ...
        def _fence_at(self, c: Connection, owner: Ownership) -> tuple[float, float]: ...
        def _retry_tx(self, fn: Callable[[Connection], Any], attempts: int = 5) -> Any: ...

    # -- backfills --------------------------------------------------------------------------
    def judge(self, bf: BackfillRow, now: float) -> Verdict:
        """Is ``bf``'s driver alive? (pure rules in :func:`judge_owner`, observed here)."""
        info = bf.owner_info or OwnerInfo("?", 0, 0.0)
        return judge_owner(
            info, self.observe(info), heartbeat_age_s=now - bf.heartbeat_at, lease_s=bf.lease_s
        )

    def open_backfill(
        self,
        pipeline: str,
        params: dict[str, Any],
        config_fingerprint: str,
        planned: Sequence[UnitSpec],
        *,
        owner: OwnerInfo | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        resume_id: str | None = None,
    ) -> Opened:
        """Persist the backfill and its planned units before anything runs; own it.

        With ``resume_id`` that backfill is taken over. Otherwise the newest unfinished
        backfill with the same parameters is resumed when it is preempted or incomplete, or
        when its driver is dead (:meth:`judge`: at once on this host, else after its stored
        lease); a backfill whose driver is alive is left to it and a new one is created.
        Taking over increments the owner epoch: the previous owner's writes are refused.
        """
        me = owner or current_owner()
        phash = params_hash(params)
        with self.tx() as c:
            now = self.now(c)
            row, took, why = None, None, ""
            if resume_id is not None:
                q = select(backfills).where(backfills.c.id == resume_id)
                found = c.execute(q.with_for_update() if self._pg else q).first()
                if found is None:
                    raise NotFoundError(f"no backfill {resume_id!r} in the ledger", id=resume_id)
                bf = _row_to_backfill(found)
                if bf.state is BackfillState.RUNNING:
                    verdict = self.judge(bf, now)
                    if not verdict.dead:
                        raise ClaimHeldError(
                            f"backfill {resume_id} is still driven by {bf.owner} "
                            f"({verdict.describe()}; heartbeat {now - bf.heartbeat_at:.0f}s ago, "
                            f"lease {bf.lease_s:.0f}s); wait for it, or "
                            f"`rayorch backfill cancel {resume_id}` first",
                            id=resume_id,
                            owner=bf.owner,
                        )
                    took, why = bf.owner_info, verdict.describe()
                row = bf
            else:
                q = (
                    select(backfills)
                    .where(backfills.c.pipeline == pipeline)
                    .where(backfills.c.params_hash == phash)
                    .where(backfills.c.state.in_(_RESUMABLE))
                    .order_by(backfills.c.created_at.desc())
                )
                for found in c.execute(q.with_for_update() if self._pg else q).all():
                    bf = _row_to_backfill(found)
                    if bf.state in (BackfillState.RUNNING, BackfillState.CREATED):
                        verdict = self.judge(bf, now)
                        if not verdict.dead:
                            continue  # a live driver runs it: leave it alone
                        took, why = bf.owner_info, verdict.describe()
                    row = bf
                    break
            resumed = row is not None
            if row is not None:
                bf_id = row.id
                check_backfill(row.state, BackfillState.RUNNING, bf_id)
                c.execute(
                    update(backfills)
                    .where(backfills.c.id == bf_id)
                    .where(backfills.c.owner_epoch == row.owner_epoch)
                    .values(
                        state=BackfillState.RUNNING.value,
                        owner=me.label(),
                        owner_info=json.dumps(me.to_dict()),
                        owner_epoch=row.owner_epoch + 1,
                        lease_s=lease_s,
                        updated_at=now,
                        heartbeat_at=now,
                        cancel_requested=False,
                        summary=None,
                    )
                )
                if took is not None:
                    self._event(c, bf_id, bf_id, "TAKEOVER", row.owner_epoch + 1, now, why)
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
                        owner=me.label(),
                        owner_info=json.dumps(me.to_dict()),
                        owner_epoch=1,
                        lease_s=lease_s,
                        created_at=now,
                        updated_at=now,
                        heartbeat_at=now,
                        cancel_requested=False,
                    )
                )
            self._register_units(c, bf_id, planned, now)
            out = c.execute(select(backfills).where(backfills.c.id == bf_id)).one()
        return Opened(_row_to_backfill(out), resumed, took, why)

    def start_backfill(
        self,
        pipeline: str,
        params: dict[str, Any],
        config_fingerprint: str,
        planned: Sequence[UnitSpec],
        *,
        resume_id: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        owner: OwnerInfo | None = None,
    ) -> tuple[BackfillRow, bool]:
        """:meth:`open_backfill`, returning (backfill, resumed)."""
        o = self.open_backfill(
            pipeline,
            params,
            config_fingerprint,
            planned,
            owner=owner,
            lease_s=lease_s,
            resume_id=resume_id,
        )
        return o.backfill, o.resumed

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

    def get_backfills(self, backfill_ids: Iterable[str]) -> dict[str, BackfillRow]:
        ids = sorted(set(backfill_ids))
        out: dict[str, BackfillRow] = {}
        with self.engine.connect() as c:
            for chunk in _chunks(ids, 500):
                for r in c.execute(select(backfills).where(backfills.c.id.in_(chunk))):
                    out[r.id] = _row_to_backfill(r)
        return out

    def list_backfills(self, pipeline: str | None = None, limit: int = 20) -> list[BackfillRow]:
        q = select(backfills).order_by(backfills.c.created_at.desc()).limit(limit)
        if pipeline:
            q = q.where(backfills.c.pipeline == pipeline)
        with self.engine.connect() as c:
            return [_row_to_backfill(r) for r in c.execute(q)]

    def finish_backfill(
        self, owner: Ownership, state: BackfillState, summary: dict[str, Any]
    ) -> None:
        with self.tx() as c:
            _, now = self._fence_at(c, owner)
            cur = c.execute(
                select(backfills.c.state).where(backfills.c.id == owner.backfill_id)
            ).scalar()
            check_backfill(BackfillState(cur), state, owner.backfill_id)
            c.execute(
                update(backfills)
                .where(backfills.c.id == owner.backfill_id)
                .values(state=state.value, updated_at=now, summary=json.dumps(summary))
            )

    def request_cancel(self, backfill_id: str) -> BackfillRow:
        bf = self.get_backfill(backfill_id)
        with self.tx() as c:
            now = self.now(c)
            if bf.state.is_terminal:
                return bf
            values: dict[str, Any] = {"cancel_requested": True, "updated_at": now}
            alive = bf.state is BackfillState.RUNNING and not self.judge(bf, now).dead
            if not alive:  # nobody will act on the flag: cancel here and free its claims
                values["state"] = BackfillState.CANCELLED.value
                values["owner_epoch"] = bf.owner_epoch + 1  # a paused driver cannot resume it
                self._release_all(c, backfill_id, now, "cancelled while its driver was down")
            c.execute(update(backfills).where(backfills.c.id == backfill_id).values(**values))
        return self.get_backfill(backfill_id)

    def heartbeat(self, owner: Ownership) -> bool:
        """Extend this backfill's leases (by its stored lease length, on the database clock).
        Returns True when cancellation was requested; raises OwnershipLostError when another
        driver took the backfill over."""
        with self.tx() as c:
            lease_s, now = self._fence_at(c, owner)
            c.execute(
                update(units)
                .where(units.c.holder == owner.backfill_id)
                .where(units.c.state == UnitState.RUNNING.value)
                .values(lease_until=now + lease_s)
            )
            c.execute(
                update(backfills)
                .where(backfills.c.id == owner.backfill_id)
                .values(heartbeat_at=now)
            )
            flag = c.execute(
                select(backfills.c.cancel_requested).where(backfills.c.id == owner.backfill_id)
            ).scalar()
        return bool(flag)

    def cancel_requested(self, owner: Ownership) -> bool:
        """Was cancellation requested? (a read; the heartbeat also reports it)."""
        with self.engine.connect() as c:
            flag = c.execute(
                select(backfills.c.cancel_requested).where(backfills.c.id == owner.backfill_id)
            ).scalar()
        return bool(flag)

    def expire_owner(self, bf: BackfillRow, why: str) -> bool:
        """A newcomer found ``bf``'s driver dead: end its leases now and fence it out.

        Conditional on the epoch the newcomer judged, so a backfill that was resumed by a
        live driver meanwhile is left alone. The dead backfill becomes INCOMPLETE (its
        units are free; running the same command again resumes it)."""
        with self.tx() as c:
            now = self.now(c)
            res = c.execute(
                update(backfills)
                .where(backfills.c.id == bf.id)
                .where(backfills.c.owner_epoch == bf.owner_epoch)
                .where(backfills.c.state.in_(_RESUMABLE))
                .values(
                    owner_epoch=bf.owner_epoch + 1,
                    state=BackfillState.INCOMPLETE.value,
                    updated_at=now,
                    summary=json.dumps({"error": f"driver {bf.owner} found dead: {why}"}),
                )
            )
            if res.rowcount != 1:
                return False
            c.execute(
                update(units)
                .where(units.c.holder == bf.id)
                .where(units.c.state == UnitState.RUNNING.value)
                .values(lease_until=now)
            )
            self._event(c, bf.id, bf.id, "OWNER_DEAD", bf.owner_epoch, now, why)
        return True

    def backfill_run_keys(self, backfill_id: str) -> list[str]:
        with self.engine.connect() as c:
            return list(
                c.execute(
                    select(backfill_units.c.run_key)
                    .where(backfill_units.c.backfill_id == backfill_id)
                    .order_by(backfill_units.c.position)
                ).scalars()
            )
