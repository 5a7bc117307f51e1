"""The step function of the backfill state machine (types in :mod:`rayorch.backfill.machine`).

``BackfillCore.step(now, events) -> actions`` is deterministic: the same events at the same
times give the same actions. Its only state is the units' :class:`UnitRun` records, changed
only by ``_set``, which checks every move against ``TRANSITIONS``.
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
        return all(r.phase.is_terminal for r in self.runs.values())

    def busy(self) -> int:
        return sum(1 for r in self.runs.values() if r.phase.holds_capacity)

    def next_due(self) -> float | None:
        dues = [r.due for r in self.runs.values() if r.due is not None and not r.phase.is_terminal]
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
        for key in self.order:
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
            run = self.runs[dep_key]
            if run.phase is not Phase.WAITING_DEPS:
                continue
            phases = [self.runs[d].phase for d in run.unit.depends_on if d in self.runs]
            if all(p in _OK for p in phases):
                self._set(dep_key, Phase.READY)
            elif all(p.is_terminal for p in phases):
                bad = [d for d in run.unit.depends_on if self.runs[d].phase not in _OK]
                why = f"upstream not done: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "")
                self._set(dep_key, Phase.BLOCKED, reason=why)
                self._emit(Notify("blocked", run.unit, why))

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
