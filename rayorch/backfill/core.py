"""The step function of the backfill state machine (types in :mod:`rayorch.backfill.machine`).

``BackfillCore.step(now, events) -> actions`` is deterministic: the same events at the same
times give the same actions. Its state is the units' :class:`UnitRun` records, changed only by
``_set``, which checks every move against ``TRANSITIONS``, and the committed units waiting to
be published.

Ledger commit, then table commit: a unit is DONE once its fenced ledger commit is accepted
(that is what ``status`` and the summary report); it is published later, grouped with others
(:mod:`rayorch.backfill.publishing` decides when), and always before a unit that depends on it
becomes READY and before the driver ends. A driver that lost its ownership publishes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from rayorch.backfill.machine import (
    TRANSITIONS,
    Action,
    AdmissionRejected,
    Admitted,
    AskYield,
    CancelWork,
    Claim,
    Claimed,
    Commit,
    Committed,
    CoreConfig,
    Errored,
    Event,
    Fail,
    Finished,
    Notify,
    OnConflict,
    Phase,
    Publish,
    Published,
    Release,
    ReleaseAll,
    Stop,
    StopReason,
    Submit,
    UnitRun,
    Waiting,
    YieldAsked,
)
from rayorch.backfill.plan import Step, Unit
from rayorch.backfill.publishing import Waiting as PublishWaiting
from rayorch.backfill.publishing import decide_flush
from rayorch.errors import IllegalTransitionError
from rayorch.ledger.rows import ClaimOutcome
from rayorch.ledger.states import BackfillState
from rayorch.results import NotReady, Yielded

_OK = (Phase.DONE, Phase.ALREADY_DONE)


class BackfillCore:
    def __init__(self, units: Sequence[Unit], cfg: CoreConfig) -> None:
        self.cfg = cfg
        self.runs: dict[str, UnitRun] = {}
        self.order = [u.run_key for u in units]
        self.dependents: dict[str, list[str]] = {}
        self.ready: deque[str] = deque()
        for u in units:
            self.runs[u.run_key] = UnitRun(u, Phase.WAITING_DEPS if u.depends_on else Phase.READY)
            if not u.depends_on:
                self.ready.append(u.run_key)
            for d in u.depends_on:
                self.dependents.setdefault(d, []).append(u.run_key)
        self.stop: Stop | None = None
        self._released = False
        self._out: list[Action] = []
        self._commits: list[tuple[Unit, int, object]] = []
        # Ledger-committed by this driver, not yet in the table (in commit order), and when
        # the oldest of them was committed.
        self.unpublished: dict[str, tuple[Unit, int, object]] = {}
        self._oldest: float | None = None
        # ALREADY_DONE during this run with dependents: maybe committed by another driver
        # that has not published yet; verified (rolled forward) before a dependent starts.
        self.verify: dict[str, Unit] = {}
        # In a Publish not answered yet: its item (None: a verify).
        self.publishing: dict[str, tuple[Unit, int, object] | None] = {}
        self.lost_outputs: set[str] = set()  # verified and found gone: dependents block
        self._held: dict[str, None] = {}  # dependents whose inputs are committed, not live
        self._index = {k: i for i, k in enumerate(self.order)}
        self._busy = 0  # units holding capacity
        self._terminal = 0  # units in a terminal phase
        self._dues: dict[str, None] = {}  # units with a due time (timers)

    # -- the one place that moves a unit --------------------------------------------------------
    def _set(self, key: str, phase: Phase, **changes: object) -> UnitRun:
        cur = self.runs[key]
        if phase is not cur.phase and phase not in TRANSITIONS[cur.phase]:
            raise IllegalTransitionError(
                f"unit {key}: illegal attempt transition {cur.phase.name} -> {phase.name}",
                run_key=key,
                src=cur.phase.name,
                dst=phase.name,
            )
        new = replace(cur, phase=phase, **changes)  # type: ignore[arg-type]
        self.runs[key] = new
        # counts kept as units move, so that a step costs what changed, not every unit
        self._busy += phase.holds_capacity - cur.phase.holds_capacity
        self._terminal += phase.is_terminal - cur.phase.is_terminal
        if new.due is not None and not phase.is_terminal:
            self._dues[key] = None
        else:
            self._dues.pop(key, None)
        if phase is Phase.READY:
            self.ready.append(key)
        if phase.is_terminal:
            self._settle_dependents(key)
        return new

    def _emit(self, *actions: Action) -> None:
        self._out.extend(actions)

    # -- queries ----------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Every unit terminal and nothing this driver committed left unpublished."""
        return self._terminal == len(self.runs) and not self.unpublished and not self.publishing

    def busy(self) -> int:
        return self._busy

    def next_due(self) -> float | None:
        dues = [d for k in self._dues if (d := self.runs[k].due) is not None]
        publish = self.cfg.publish.due(self._oldest) if self.unpublished else None
        if publish is not None:
            dues.append(publish)
        return min(dues) if dues else None

    def in_phase(self, *phases: Phase) -> list[UnitRun]:
        return [self.runs[k] for k in self.order if self.runs[k].phase in phases]

    def final_state(self) -> BackfillState:
        if self.stop is not None:
            return {
                StopReason.CANCEL: BackfillState.CANCELLED,
                StopReason.PREEMPT: BackfillState.PREEMPTED,
            }.get(self.stop.reason, BackfillState.INCOMPLETE)
        phases = {r.phase for r in self.runs.values()}
        if phases & {Phase.FAILED, Phase.FAILED_BEFORE, Phase.BLOCKED}:
            return BackfillState.FAILED
        if phases <= set(_OK):
            return BackfillState.SUCCEEDED
        return BackfillState.INCOMPLETE

    # -- the step ---------------------------------------------------------------------------
    def step(self, now: float, events: Sequence[Event] = ()) -> list[Action]:
        self._out = []
        self._commits = []
        for ev in events:
            self._on(ev, now)
        if self.stop is None:
            self._timers(now)
            self._claim_ready()
        else:
            self._stopping(now)
        self._maybe_publish(now)
        if self._commits:
            self._emit(Commit(tuple(self._commits)))  # type: ignore[arg-type]
        return self._out

    def _on(self, ev: Event, now: float) -> None:
        if isinstance(ev, Stop):
            self._begin_stop(ev, now)
            return
        if isinstance(ev, YieldAsked):
            for key in ev.run_keys:
                self._ask_yield(key, ev.why, now, requeue=True)
            return
        if isinstance(ev, Published):
            self._on_published(ev)
            return
        run = self.runs[ev.run_key]
        if isinstance(ev, Claimed):
            self._on_claimed(run, ev, now)
        elif isinstance(ev, Admitted):
            if run.phase is Phase.ADMITTING:
                self._set(run.run_key, Phase.RUNNING)
                self._emit(Notify("admitted", run.unit))
        elif isinstance(ev, AdmissionRejected):
            if run.phase is Phase.ADMITTING:
                assert run.token is not None
                self._set(run.run_key, Phase.FAILED, reason=ev.message)
                self._emit(
                    Fail(run.unit, run.token, ev.message), Notify("failed", run.unit, ev.message)
                )
        elif isinstance(ev, Finished):
            self._on_finished(run, ev, now)
        elif isinstance(ev, Errored):
            self._on_error(run, ev, now)
        elif isinstance(ev, Committed):
            if ev.refused is None:
                # Waits for its table commit; dependents see it unpublished (``_set`` settles
                # them), so it is recorded before the move.
                assert run.result is not None
                self.unpublished[run.run_key] = (run.unit, ev.token, run.result)
                if self._oldest is None:
                    self._oldest = now
                self._set(run.run_key, Phase.DONE, reason="")
                self._emit(Notify("done", run.unit))
            else:
                why = f"commit refused: {ev.refused}"
                self._set(run.run_key, Phase.NOT_DONE, reason=why)
                self._emit(Notify("failed", run.unit, why))

    # -- claims -------------------------------------------------------------------------------
    def _claim_ready(self) -> None:
        batch: list[Unit] = []
        free = self.cfg.max_concurrency - self.busy()
        while self.ready and len(batch) < free:
            key = self.ready.popleft()
            run = self.runs[key]
            if run.phase is not Phase.READY:
                continue
            self._set(key, Phase.CLAIMING)
            batch.append(run.unit)
        if batch:
            self._emit(Claim(tuple(batch)))

    def _on_claimed(self, run: UnitRun, ev: Claimed, now: float) -> None:
        key, unit = run.run_key, run.unit
        if run.phase is not Phase.CLAIMING:
            return
        if ev.outcome is ClaimOutcome.GRANTED:
            assert ev.token is not None
            attempt = run.attempt + 1
            phase = Phase.ADMITTING if self.cfg.gated else Phase.RUNNING
            self._set(key, phase, token=ev.token, attempt=attempt, due=None, holder=None)
            self._emit(
                Submit(unit, ev.token, attempt, admit=self.cfg.gated),
                Notify("claimed", unit, f"token {ev.token}"),
            )
        elif ev.outcome is ClaimOutcome.ALREADY_DONE:
            if self.dependents.get(key):
                self.verify[key] = unit
            self._set(key, Phase.ALREADY_DONE)
            self._emit(Notify("skipped", unit, "already done"))
        elif ev.outcome is ClaimOutcome.FAILED_BEFORE:
            why = f"failed before (use --reprocess failed): {ev.last_error or ''}"
            self._set(key, Phase.FAILED_BEFORE, reason=why)
            self._emit(Notify("skipped", unit, why))
        else:
            holder = ev.holder
            held = holder.describe(now) if holder else "held by another backfill"
            if self.cfg.on_conflict is OnConflict.WAIT:
                # Poll the holder now and then; never later than its lease runs out.
                due = now + self.cfg.conflict_poll_s
                if holder is not None and holder.lease_until is not None:
                    due = min(due, max(now, holder.lease_until) + 0.01)
                self._set(key, Phase.HELD, holder=holder, due=due, reason=held)
                self._emit(
                    Waiting(unit, held, holder.lease_until if holder else None),
                    Notify("waiting", unit, held),
                )
            elif self.cfg.on_conflict is OnConflict.FAIL:
                self._set(key, Phase.FAILED, holder=holder, reason=held)
                self._emit(Notify("failed", unit, held))
            else:
                self._set(key, Phase.NOT_DONE, holder=holder, reason=f"skipped: {held}")
                self._emit(Notify("skipped", unit, held))

    # -- results ------------------------------------------------------------------------------
    def _on_finished(self, run: UnitRun, ev: Finished, now: float) -> None:
        key, unit, res = run.run_key, run.unit, ev.result
        if run.phase not in (Phase.RUNNING, Phase.YIELDING) or ev.token != run.token:
            return  # a cancelled attempt's late result
        if isinstance(res, Yielded):
            why = f"yielded at step {res.step}; resumes from checkpoint {res.checkpoint}"
            requeue = run.requeue and self.stop is None
            self._emit(Release(unit, ev.token, why, requeue=requeue))
            if requeue:
                self._set(key, Phase.RETRY_WAIT, due=now + self.cfg.conflict_poll_s, result=res)
            else:
                self._set(key, Phase.YIELDED, reason=why, result=res)
            self._emit(Notify("yielded", unit, why))
            return
        if isinstance(res, NotReady):
            first = run.first_wait if run.first_wait is not None else now
            if self.stop is None and res.pending and now - first < self.cfg.sensor_wait_timeout_s:
                due = now + self.cfg.sensor_poll_s
                self._set(key, Phase.DATA_WAIT, first_wait=first, due=due, reason=res.message())
                self._emit(
                    Waiting(unit, res.message(), due), Notify("waiting", unit, res.message())
                )
                return
            verdict = "still PENDING after the wait timeout" if res.pending else "REJECTED"
            msg = f"DataNotReadyError: {res.message()} ({verdict})"
            # Not a failure of the unit's code: released (PENDING), so a re-run picks it up
            # once the data is complete; this run reports it failed.
            self._set(key, Phase.FAILED, reason=msg, result=res)
            self._emit(Release(unit, ev.token, msg), Notify("failed", unit, msg))
            return
        self._set(key, Phase.COMMITTING, result=res)
        self._commits.append((unit, ev.token, res))

    def _on_error(self, run: UnitRun, ev: Errored, now: float) -> None:
        key, unit = run.run_key, run.unit
        if run.phase not in (Phase.RUNNING, Phase.YIELDING, Phase.ADMITTING):
            return
        if ev.token != run.token:
            return
        msg = ev.error.describe()
        if self.stop is not None:
            self._set(key, Phase.YIELDED, reason=f"stopped by an error while stopping: {msg}")
            return
        if ev.error.retryable and run.attempt <= self.cfg.retries:
            backoff = self.cfg.retry_backoff_s * (2 ** (run.attempt - 1))
            self._set(key, Phase.RETRY_WAIT, due=now + backoff, reason=msg)
            self._emit(
                Release(unit, ev.token, f"attempt {run.attempt}: {msg}"),
                Notify("retry", unit, f"attempt {run.attempt}: {msg}; again in {backoff:.1f}s"),
            )
            return
        self._set(key, Phase.FAILED, reason=msg)
        self._emit(Fail(unit, ev.token, msg), Notify("failed", unit, msg))

    # -- time ---------------------------------------------------------------------------------
    def _timers(self, now: float) -> None:
        for key in sorted(self._dues, key=self._index.__getitem__):  # in plan order
            run = self.runs[key]
            if run.due is None or run.due > now:
                continue
            if run.phase in (Phase.HELD, Phase.RETRY_WAIT):
                self._set(key, Phase.READY, due=None)
                # back to the front: it was in line before the units behind it
                self.ready.remove(key)
                self.ready.appendleft(key)
            elif run.phase is Phase.DATA_WAIT:
                assert run.token is not None
                phase = Phase.ADMITTING if self.cfg.gated else Phase.RUNNING
                self._set(key, phase, due=None)
                self._emit(Submit(run.unit, run.token, run.attempt, admit=self.cfg.gated))
            elif run.phase is Phase.YIELDING:
                self._yield_timed_out(run, now)

    def _yield_timed_out(self, run: UnitRun, now: float) -> None:
        assert run.token is not None
        why = (
            f"did not yield within {self.cfg.yield_timeout_s:.0f}s (train.yield_timeout_s); "
            "stopped, resumes from its previous checkpoint"
        )
        self._emit(CancelWork(run.unit))
        if run.requeue and self.stop is None:
            self._emit(Release(run.unit, run.token, why, requeue=True))
            self._set(run.run_key, Phase.RETRY_WAIT, due=now + self.cfg.conflict_poll_s, reason=why)
        else:
            self._set(run.run_key, Phase.YIELDED, due=None, reason=why)

    def _settle_dependents(self, key: str) -> None:
        for dep_key in self.dependents.get(key, ()):
            self._settle(dep_key)

    def _settle(self, dep_key: str) -> None:
        run = self.runs[dep_key]
        if run.phase is not Phase.WAITING_DEPS:
            self._held.pop(dep_key, None)
            return
        deps = [d for d in run.unit.depends_on if d in self.runs]
        ok = [self.runs[d].phase in _OK and d not in self.lost_outputs for d in deps]
        if all(ok):
            if any(self._awaits_publish(d) for d in deps):
                self._held[dep_key] = None  # READY once its inputs are in the table
                return
            self._held.pop(dep_key, None)
            self._set(dep_key, Phase.READY)
        elif all(self.runs[d].phase.is_terminal for d in deps):
            self._held.pop(dep_key, None)
            bad = [d for d, good in zip(deps, ok, strict=True) if not good]
            why = f"upstream not done: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
            self._set(dep_key, Phase.BLOCKED, reason=why)
            self._emit(Notify("blocked", run.unit, why))

    # -- publishing (ledger commit first, then the table; see rayorch.backfill.publishing) --
    def _awaits_publish(self, key: str) -> bool:
        return key in self.unpublished or key in self.publishing or key in self.verify

    def _dependent_ready(self) -> bool:
        """A unit waits only for its inputs' table commit (every input committed)."""
        return any(self.runs[k].phase is Phase.WAITING_DEPS for k in self._held)

    def waiting_publish(self) -> list[tuple[Unit, int, object]]:
        """This driver's commits not in the table yet (what a failing driver publishes)."""
        busy = [it for it in self.publishing.values() if it is not None]
        return [*busy, *self.unpublished.values()]

    def _maybe_publish(self, now: float) -> None:
        if self.stop is not None and self.stop.reason in (
            StopReason.LEASE_LOST,
            StopReason.OWNERSHIP_LOST,
        ):
            # No longer the owner: publish nothing; the new owner rolls these forward.
            self.unpublished.clear()
            self.verify.clear()
            self._oldest = None
            return
        if self.publishing or (not self.unpublished and not self.verify):
            return
        dependent = self._dependent_ready()
        waiting = PublishWaiting(
            count=len(self.unpublished),
            oldest=self._oldest,
            unbatched=any(u.step is not Step.FEATURES for u, _, _ in self.unpublished.values()),
            dependent_ready=dependent,
            ending=self.stop is not None or self._terminal == len(self.runs),
        )
        reason = decide_flush(waiting, now, self.cfg.publish)
        if reason is None:
            return
        items = tuple(self.unpublished.values())
        verify = tuple(self.verify.values()) if dependent else ()
        if not items and not verify:
            return
        self.publishing = {u.run_key: (u, t, r) for u, t, r in items}
        self.publishing.update({u.run_key: None for u in verify})
        self.unpublished.clear()
        self._oldest = None
        for u in verify:
            del self.verify[u.run_key]
        self._emit(Publish(items, verify, reason))  # type: ignore[arg-type]

    def _on_published(self, ev: Published) -> None:
        self.lost_outputs.update(ev.missing)
        for key in ev.run_keys:
            self.publishing.pop(key, None)
        for dep_key in list(self._held):  # in the order they became held: deterministic
            self._settle(dep_key)

    # -- yields and stops -----------------------------------------------------------------------
    def _ask_yield(self, key: str, why: str, now: float, *, requeue: bool) -> None:
        run = self.runs[key]
        if run.phase is not Phase.RUNNING:
            return
        assert run.token is not None
        if run.unit.step is Step.TRAIN:
            self._set(key, Phase.YIELDING, due=now + self.cfg.yield_timeout_s, requeue=requeue)
            self._emit(AskYield(run.unit, run.token, why), Notify("yielding", run.unit, why))
            return
        # Feature work cannot checkpoint: cancel it; it is idempotent and re-runs.
        self._emit(CancelWork(run.unit))
        if requeue:
            self._emit(Release(run.unit, run.token, f"{why}; cancelled, re-runs", requeue=True))
            self._set(key, Phase.RETRY_WAIT, due=now + self.cfg.conflict_poll_s, reason=why)
        else:
            self._set(key, Phase.YIELDED, reason=f"{why}; cancelled, re-runs on resume")

    def _begin_stop(self, ev: Stop, now: float) -> None:
        if self.stop is not None and self.stop.reason is not StopReason.PREEMPT:
            return
        if self.stop is not None and ev.reason is StopReason.PREEMPT:
            return
        self.stop = ev
        why = ev.detail or ev.reason.value
        writes = ev.reason in (StopReason.CANCEL, StopReason.PREEMPT)
        for key in self.order:
            run = self.runs[key]
            if run.phase.is_terminal or (run.phase is Phase.COMMITTING and writes):
                continue
            if ev.reason is StopReason.PREEMPT and run.phase is Phase.RUNNING:
                self._ask_yield(key, why, now, requeue=False)
                continue
            if ev.reason is StopReason.PREEMPT and run.phase is Phase.YIELDING:
                self._set(key, Phase.YIELDING, requeue=False)
                continue
            if run.phase in (Phase.RUNNING, Phase.YIELDING, Phase.ADMITTING):
                self._emit(CancelWork(run.unit))
            if ev.reason is StopReason.CANCEL:
                self._set(key, Phase.CANCELLED, reason=why, due=None)
            else:
                self._set(key, Phase.NOT_DONE, reason=f"not done: {why}", due=None)
        if writes:
            self._after_stop_drain()

    def _stopping(self, now: float) -> None:
        for run in self.in_phase(Phase.YIELDING):
            if run.due is not None and run.due <= now:
                self._yield_timed_out(run, now)
        self._after_stop_drain()

    def _after_stop_drain(self) -> None:
        if self.stop is None:
            return
        if (
            self.stop.reason in (StopReason.CANCEL, StopReason.PREEMPT)
            and not any(r.phase in (Phase.YIELDING, Phase.COMMITTING) for r in self.runs.values())
            and not self._released
        ):
            self._released = True
            self._emit(ReleaseAll(self.stop.detail or self.stop.reason.value))
