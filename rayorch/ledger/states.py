"""Explicit state machines for units and backfills: legal transitions written down once.

The ledger is the one place that moves between states; it checks every move against these
tables, so an illegal transition is an error rather than a silent overwrite.
"""

from __future__ import annotations

import enum

from rayorch.errors import IllegalTransitionError


class UnitState(str, enum.Enum):
    PENDING = "PENDING"  # planned, never claimed (or released)
    RUNNING = "RUNNING"  # claimed with a fencing token and a lease
    DONE = "DONE"  # committed: exactly one live output
    FAILED = "FAILED"  # gave up after retries; error recorded

    @property
    def is_terminal(self) -> bool:
        return self in (UnitState.DONE, UnitState.FAILED)


UNIT_TRANSITIONS: dict[UnitState, frozenset[UnitState]] = {
    UnitState.PENDING: frozenset({UnitState.RUNNING}),
    # RUNNING -> RUNNING: lease takeover or retry, always with a new token.
    UnitState.RUNNING: frozenset(
        {UnitState.RUNNING, UnitState.DONE, UnitState.FAILED, UnitState.PENDING}
    ),
    UnitState.DONE: frozenset({UnitState.RUNNING}),  # reprocess=all
    UnitState.FAILED: frozenset({UnitState.RUNNING}),  # reprocess=failed|all
}


class BackfillState(str, enum.Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # finished with failed units, or the driver gave up
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # the driver was asked to stop (SIGTERM): units yielded, resumable
    # Ended with units not done that are not failures of their own: held by another owner,
    # inputs not ready, lease lost, or the driver died and was found dead. Resumable.
    INCOMPLETE = "INCOMPLETE"

    @property
    def is_terminal(self) -> bool:
        return self in (BackfillState.SUCCEEDED, BackfillState.FAILED, BackfillState.CANCELLED)


BACKFILL_TRANSITIONS: dict[BackfillState, frozenset[BackfillState]] = {
    BackfillState.CREATED: frozenset({BackfillState.RUNNING, BackfillState.CANCELLED}),
    BackfillState.RUNNING: frozenset(
        {
            BackfillState.RUNNING,  # a new driver resumes a dead one's backfill
            BackfillState.SUCCEEDED,
            BackfillState.FAILED,
            BackfillState.CANCELLED,
            BackfillState.PREEMPTED,
            BackfillState.INCOMPLETE,
        }
    ),
    BackfillState.PREEMPTED: frozenset({BackfillState.RUNNING, BackfillState.CANCELLED}),
    BackfillState.INCOMPLETE: frozenset({BackfillState.RUNNING, BackfillState.CANCELLED}),
    BackfillState.FAILED: frozenset({BackfillState.RUNNING}),  # --resume
    BackfillState.SUCCEEDED: frozenset({BackfillState.RUNNING}),  # --resume with reprocess
    BackfillState.CANCELLED: frozenset({BackfillState.RUNNING}),
}


def check_unit(src: UnitState, dst: UnitState, run_key: str) -> None:
    if dst not in UNIT_TRANSITIONS[src]:
        raise IllegalTransitionError(
            f"unit {run_key}: illegal transition {src.value} -> {dst.value}",
            run_key=run_key,
            src=src.value,
            dst=dst.value,
        )


def check_backfill(src: BackfillState, dst: BackfillState, backfill_id: str) -> None:
    if dst not in BACKFILL_TRANSITIONS[src]:
        raise IllegalTransitionError(
            f"backfill {backfill_id}: illegal transition {src.value} -> {dst.value}",
            backfill_id=backfill_id,
            src=src.value,
            dst=dst.value,
        )


class Reprocess(str, enum.Enum):
    """Which already-known units a backfill runs again."""

    MISSING = "missing"  # never committed and never failed
    FAILED = "failed"  # also units that failed before
    ALL = "all"  # also committed units (their partitions are replaced atomically)
    STALE = "stale"  # also committed units built by another config, code or environment

    def claimable(self) -> frozenset[UnitState]:
        base = {UnitState.PENDING, UnitState.RUNNING}
        if self in (Reprocess.FAILED, Reprocess.ALL):
            base.add(UnitState.FAILED)
        if self is Reprocess.ALL:
            base.add(UnitState.DONE)
        return frozenset(base)
