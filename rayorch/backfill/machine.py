"""The backfill driver's decisions: a pure state machine over the units of one plan.

Built the way Ray Train V2's controller is: every unit's attempt has an explicit
:class:`Phase`; legal moves are written down once (``TRANSITIONS``) and made in one place
(:meth:`BackfillCore._set`); :meth:`BackfillCore.step` takes what happened (events) and the
time, and returns what to do (actions). It imports no Ray and touches no database, so every
path - retries, conflicts, takeover waits, yield, cancel, not-ready waits, lease loss - is
tested in-process in milliseconds with an injected clock. The shell
(:mod:`rayorch.backfill.driver`) carries the actions out and feeds the results back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rayorch.backfill.plan import Unit
from rayorch.backfill.publishing import Flush, PublishPolicy
from rayorch.ledger.rows import ClaimOutcome
from rayorch.results import Committable, ErrorInfo, WorkResult


class OnConflict(str, enum.Enum):
    WAIT = "wait"  # wait until the holder finishes, or its lease runs out (the default)
    SKIP = "skip"  # leave units held by another live owner to it: the backfill is INCOMPLETE
    FAIL = "fail"  # fail those units at once


class Phase(str, enum.Enum):
    WAITING_DEPS = "waiting for upstream"
    READY = "ready"
    CLAIMING = "claiming"
    HELD = "held by another owner"  # waiting (on_conflict wait) until `due`
    RETRY_WAIT = "retry backoff"
    ADMITTING = "waiting for admission"
    RUNNING = "running"
    DATA_WAIT = "waiting for data"  # claim kept; re-run at `due`
    YIELDING = "yielding"  # asked to checkpoint and stop; `due` is the yield deadline
    COMMITTING = "committing"
    # terminal
    DONE = "done"
    ALREADY_DONE = "already done"
    FAILED = "failed"
    FAILED_BEFORE = "failed before (use --reprocess failed)"
    BLOCKED = "blocked (upstream not done)"
    NOT_DONE = "not done"
    CANCELLED = "cancelled"
    YIELDED = "yielded (checkpointed; resumes on the next run)"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def holds_capacity(self) -> bool:
        return self in (Phase.CLAIMING, Phase.ADMITTING, Phase.RUNNING, Phase.YIELDING)


_TERMINAL = frozenset(
    {
        Phase.DONE,
        Phase.ALREADY_DONE,
        Phase.FAILED,
        Phase.FAILED_BEFORE,
        Phase.BLOCKED,
        Phase.NOT_DONE,
        Phase.CANCELLED,
        Phase.YIELDED,
    }
)
_STOPPABLE = frozenset({Phase.NOT_DONE, Phase.CANCELLED, Phase.YIELDED})

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.WAITING_DEPS: frozenset({Phase.READY, Phase.BLOCKED, *_STOPPABLE}),
    Phase.READY: frozenset({Phase.CLAIMING, *_STOPPABLE}),
    Phase.CLAIMING: frozenset(
        {
            Phase.ADMITTING,
            Phase.RUNNING,
            Phase.HELD,
            Phase.ALREADY_DONE,
            Phase.FAILED_BEFORE,
            Phase.FAILED,
            *_STOPPABLE,
        }
    ),
    Phase.HELD: frozenset({Phase.READY, *_STOPPABLE}),
    Phase.RETRY_WAIT: frozenset({Phase.READY, *_STOPPABLE}),
    Phase.ADMITTING: frozenset({Phase.RUNNING, Phase.FAILED, *_STOPPABLE}),
    Phase.RUNNING: frozenset(
        {
            Phase.COMMITTING,
            Phase.DATA_WAIT,
            Phase.RETRY_WAIT,
            Phase.YIELDING,
            Phase.FAILED,
            *_STOPPABLE,
        }
    ),
    Phase.DATA_WAIT: frozenset({Phase.RUNNING, Phase.ADMITTING, Phase.FAILED, *_STOPPABLE}),
    Phase.YIELDING: frozenset({Phase.COMMITTING, Phase.RETRY_WAIT, Phase.FAILED, *_STOPPABLE}),
    Phase.COMMITTING: frozenset({Phase.DONE, Phase.FAILED, Phase.NOT_DONE}),
    **{p: frozenset() for p in _TERMINAL},
}


class StopReason(str, enum.Enum):
    CANCEL = "the backfill was cancelled"
    PREEMPT = "the driver was asked to stop (SIGTERM)"
    LEASE_LOST = "the driver lost its lease (heartbeats failed past the lease)"
    OWNERSHIP_LOST = "another driver took this backfill over"


# -- what the shell tells the core ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a unit this driver could not claim, and until when (database clock)."""

    backfill_id: str
    owner: str
    lease_until: float | None
    liveness: str  # rayorch.ledger.owners.Liveness value, as judged by the shell

    def describe(self, now: float) -> str:
        left = (
            f", lease runs out in {max(0.0, self.lease_until - now):.0f}s"
            if self.lease_until is not None
            else ""
        )
        return f"held by backfill {self.backfill_id} (driver {self.owner}, {self.liveness}{left})"


@dataclass(frozen=True, slots=True)
class Claimed:
    run_key: str
    outcome: ClaimOutcome
    token: int | None = None
    holder: Holder | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    run_key: str


@dataclass(frozen=True, slots=True)
class AdmissionRejected:
    run_key: str
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    run_key: str
    token: int
    result: WorkResult


@dataclass(frozen=True, slots=True)
class Errored:
    run_key: str
    token: int
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Committed:
    run_key: str
    token: int
    refused: str | None = None  # the fencing refusal, when the commit was not accepted


@dataclass(frozen=True, slots=True)
class Published:
    """A :class:`Publish` was carried out: these units are live (or were verified live).
    ``missing``: verified units whose committed output is gone (their dependents block)."""

    run_keys: tuple[str, ...]
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class YieldAsked:
    """The scheduler wants these running units' capacity back (they re-queue)."""

    run_keys: tuple[str, ...]
    why: str = "scheduler: higher-priority work needs this capacity"


@dataclass(frozen=True, slots=True)
class Stop:
    reason: StopReason
    detail: str = ""


Event = (
    Claimed
    | Admitted
    | AdmissionRejected
    | Finished
    | Errored
    | Committed
    | Published
    | YieldAsked
    | Stop
)


# -- what the core tells the shell -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claim:
    units: tuple[Unit, ...]


@dataclass(frozen=True, slots=True)
class Submit:
    unit: Unit
    token: int
    attempt: int
    admit: bool  # True: ask the scheduler first; False: run now


@dataclass(frozen=True, slots=True)
class Commit:
    """Fenced ledger commit of finished units (one transaction), answered by
    :class:`Committed`; publishing them is a later :class:`Publish`."""

    items: tuple[tuple[Unit, int, Committable], ...]


@dataclass(frozen=True, slots=True)
class Publish:
    """Make ledger-committed units live: ``items`` (this driver's commits) in one table
    commit; ``verify``: units found ALREADY_DONE during this run (another driver committed
    them and may not have published yet) that a ready dependent reads - rolled forward from
    the ledger if the table lacks them. Answered by :class:`Published`."""

    items: tuple[tuple[Unit, int, Committable], ...]
    verify: tuple[Unit, ...]
    reason: Flush


@dataclass(frozen=True, slots=True)
class Release:
    unit: Unit
    token: int
    why: str
    requeue: bool = False  # keep the unit's place in the scheduler's queue


@dataclass(frozen=True, slots=True)
class Fail:
    unit: Unit
    token: int
    message: str


@dataclass(frozen=True, slots=True)
class CancelWork:
    unit: Unit


@dataclass(frozen=True, slots=True)
class AskYield:
    unit: Unit
    token: int
    why: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """Record that a unit waits (for data or for a holder), for status and progress."""

    unit: Unit
    why: str
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    event: str  # claimed, done, skipped, failed, blocked, retry, waiting, yielded, ...
    unit: Unit | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseAll:
    why: str


Action = (
    Claim
    | Submit
    | Commit
    | Publish
    | Release
    | Fail
    | CancelWork
    | AskYield
    | Waiting
    | Notify
    | ReleaseAll
)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    max_concurrency: int = 8
    on_conflict: OnConflict = OnConflict.WAIT
    retries: int = 0
    retry_backoff_s: float = 1.0
    sensor_wait_timeout_s: float = 0.0
    sensor_poll_s: float = 5.0
    conflict_poll_s: float = 2.0
    yield_timeout_s: float = 120.0
    gated: bool = False  # every claimed unit is admitted by the scheduler first
    # when committed units are published together
    publish: PublishPolicy = field(default_factory=PublishPolicy)


@dataclass(frozen=True, slots=True)
class UnitRun:
    """One unit's attempt as the core sees it."""

    unit: Unit
    phase: Phase
    token: int | None = None
    attempt: int = 0
    due: float | None = None
    reason: str = ""
    holder: Holder | None = None
    first_wait: float | None = None
    result: WorkResult | None = None
    requeue: bool = False  # a YIELDING unit re-queues (scheduler) instead of ending YIELDED

    @property
    def run_key(self) -> str:
        return self.unit.run_key
