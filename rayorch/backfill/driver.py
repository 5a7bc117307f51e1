"""The backfill driver: carries a plan out on Ray, one claimed unit at a time.

Order per unit, chosen so that a SIGKILL anywhere leaves nothing duplicated or lost:
persist plan -> claim (token) -> work stages output -> fenced ledger commit -> publish.
Everything the driver knows is in the ledger; a new driver resumes from there.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayorch.backfill.executor import UnitExecutor
from rayorch.backfill.plan import BackfillPlan, Unit
from rayorch.errors import (
    CancelledError,
    ConfigError,
    DataError,
    RayorchError,
)
from rayorch.faults import crash_point
from rayorch.ledger.states import BackfillState, Reprocess, UnitState
from rayorch.ledger.store import DEFAULT_LEASE_S, ClaimOutcome, Ledger, UnitSpec

if TYPE_CHECKING:
    from rayorch.backfill.scheduled import SchedulerGate

_COMMIT_BATCH = 64
_LINGER_S = 0.02


class OnConflict(str, enum.Enum):
    SKIP = "skip"  # leave units held by another live backfill to it
    WAIT = "wait"  # wait until the holder finishes (or its lease expires)
    FAIL = "fail"  # fail those units at once


class Outcome(str, enum.Enum):
    DONE = "done"
    SKIPPED_DONE = "skipped (already done)"
    SKIPPED_FAILED = "skipped (failed before)"
    SKIPPED_HELD = "skipped (held by another backfill)"
    BLOCKED = "blocked (upstream not done)"
    FAILED = "failed"
    CANCELLED = "cancelled"
    YIELDED = "yielded (checkpointed; resumes on the next run)"


@dataclass(frozen=True, slots=True)
class DriverOptions:
    max_concurrency: int | None = None
    reprocess: Reprocess = Reprocess.MISSING
    on_conflict: OnConflict = OnConflict.SKIP
    lease_s: float = DEFAULT_LEASE_S
    resume_id: str | None = None
    conflict_poll_s: float = 2.0
    retries: int = 0
    retry_backoff_s: float = 1.0
    sensor_wait_timeout_s: float = 0.0
    sensor_poll_s: float = 5.0
    yield_timeout_s: float = 120.0  # bound for running units to checkpoint and stop


@dataclass
class BackfillSummary:
    backfill_id: str
    resumed: bool
    state: BackfillState = BackfillState.RUNNING
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    reconciled: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    wall_s: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {o.name.lower(): 0 for o in Outcome}
        for o in self.outcomes.values():
            out[o.name.lower()] += 1
        return out

    @property
    def failed(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o is Outcome.FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backfill_id": self.backfill_id,
            "resumed": self.resumed,
            "state": self.state.value,
            "counts": self.counts(),
            "failed": [{"run_key": k, "error": self.errors.get(k, "")} for k in self.failed],
            "blocked": [k for k, o in self.outcomes.items() if o is Outcome.BLOCKED],
            "trained": [
                {
                    "run_key": k,
                    **{
                        x: r.get(x)
                        for x in (
                            "mlflow_run_id",
                            "model_name",
                            "model_version",
                            "metrics",
                            "training",
                        )
                    },
                }
                for k, r in self.results.items()
                if r.get("kind") == "trained"
            ],
            "yielded": [
                {
                    "run_key": k,
                    "step": (self.results.get(k, {}).get("training") or {}).get("step"),
                    "checkpoint": self.results.get(k, {}).get("checkpoint"),
                    "note": self.errors.get(k),
                }
                for k, o in self.outcomes.items()
                if o is Outcome.YIELDED
            ],
            "reconciled": self.reconciled,
            "wall_s": round(self.wall_s, 3),
        }


#: Progress callback: (event, unit or None, detail). Events: start, claimed, done, skipped,
#: retry, waiting, failed, blocked, cancelled, end.
ProgressFn = Callable[[str, Unit | None, dict[str, Any]], None]


def _quiet(event: str, unit: Unit | None, detail: dict[str, Any]) -> None:
    return None


def _unwrap(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _retryable(exc: BaseException) -> bool:
    return not isinstance(exc, DataError | ConfigError | CancelledError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RayorchError):
        return f"{type(exc).__name__}: {exc.message}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


class _Heartbeat(threading.Thread):
    """Renews this backfill's leases and notices cancel requests."""

    def __init__(self, ledger: Ledger, backfill_id: str, lease_s: float) -> None:
        super().__init__(daemon=True, name=f"rayorch-heartbeat-{backfill_id}")
        self.ledger, self.backfill_id, self.lease_s = ledger, backfill_id, lease_s
        self.cancelled = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if self.ledger.heartbeat(self.backfill_id, self.lease_s):
                    self.cancelled.set()
            except Exception:  # a missed beat is survivable; the lease has slack
                continue

    def stop(self) -> None:
        self._stop.set()


class BackfillDriver:
    def __init__(
        self,
        plan: BackfillPlan,
        ledger: Ledger,
        executor: UnitExecutor,
        options: DriverOptions,
        progress: ProgressFn | None = None,
        cluster_cpus: float | None = None,
        gate: SchedulerGate | None = None,
    ) -> None:
        self.plan, self.ledger, self.executor, self.opt = plan, ledger, executor, options
        self.progress = progress or _quiet
        self.max_conc = options.max_concurrency or max(8, int(2 * (cluster_cpus or 4)))
        # With a scheduler: claimed units wait here for admission (run key -> unit, token,
        # attempt) without blocking the loop; yield_asked: run key -> when the scheduler's
        # yield request was passed on.
        self.gate = gate
        self.admitting: dict[str, tuple[Unit, int, int]] = {}
        self.yield_asked: dict[str, float] = {}
        self._submitted: set[str] = set()
        self.stop_requested = threading.Event()  # cancel: release claims, work is dropped
        self.preempt_requested = threading.Event()  # SIGTERM: training checkpoints and yields
        self.preempt_reason = "the driver was asked to stop (SIGTERM)"

    def run(self) -> BackfillSummary:
        import ray

        plan, ledger, opt = self.plan, self.ledger, self.opt
        planned = [
            UnitSpec(u.run_key, plan.pipeline, u.step.value, str(u.partition)) for u in plan.units
        ]
        bf, resumed = ledger.start_backfill(
            plan.pipeline,
            plan.params,
            plan.config_fingerprint,
            planned,
            resume_id=opt.resume_id,
            stale_after_s=opt.lease_s,
        )
        s = BackfillSummary(bf.id, resumed)
        self.progress(
            "start", None, {"backfill_id": bf.id, "resumed": resumed, "units": len(plan.units)}
        )
        self._reconcile(s)
        hb = _Heartbeat(ledger, bf.id, opt.lease_s)
        hb.start()
        units = {u.run_key: u for u in plan.units}
        ready: deque[Unit] = deque(u for u in plan.units if not u.depends_on)
        blocked: list[Unit] = [u for u in plan.units if u.depends_on]
        delayed: list[tuple[float, Unit, int | None]] = []  # (due, unit, token to reuse)
        inflight: dict[Any, tuple[Unit, int, int]] = {}  # ref -> (unit, token, attempt)
        attempts: dict[str, int] = {}
        first_wait: dict[str, float] = {}
        rows = ledger.get_units(units)
        generation = {k: (r.committed_token or 0) for k, r in rows.items()}
        try:
            while True:
                if hb.cancelled.is_set() or self.stop_requested.is_set():
                    self._cancel(s, inflight, delayed, ready, blocked)
                    break
                if self.preempt_requested.is_set():
                    self._preempt(bf.id, s, inflight)
                    break
                now = time.time()
                for item in [d for d in delayed if d[0] <= now]:
                    delayed.remove(item)
                    _, unit, token = item
                    if token is None:
                        ready.appendleft(unit)
                    else:
                        self._start(
                            unit, token, attempts.get(unit.run_key, 1), generation, inflight
                        )
                self._release_blocked(s, blocked, ready)
                batch: list[Unit] = []
                busy = len(inflight) + len(self.admitting)
                while ready and busy + len(batch) < self.max_conc:
                    batch.append(ready.popleft())
                if batch:
                    self._claim_and_submit(bf.id, s, batch, inflight, delayed, attempts, generation)
                if self.gate is not None:
                    self._admit(bf.id, s, inflight, generation)
                    self._pass_on_yields(bf.id, s, inflight, delayed)
                if not inflight:
                    if self.admitting:  # waiting for the scheduler: poll at its pace
                        time.sleep(self.gate.poll_s if self.gate else 0.1)
                        continue
                    if ready:
                        continue
                    if not delayed:
                        self._release_blocked(s, blocked, ready)
                        if ready:
                            continue
                        break
                    time.sleep(max(0.0, min(d[0] for d in delayed) - time.time()))
                    continue
                timeout = 1.0 if not delayed else max(0.0, min(d[0] for d in delayed) - now)
                if self.admitting and self.gate is not None:
                    timeout = min(timeout, self.gate.poll_s)
                done, _ = ray.wait(list(inflight), num_returns=1, timeout=min(timeout, 1.0))
                if done and len(inflight) > 1:
                    # Linger briefly so results commit in batches (one ledger transaction each).
                    rest = [r for r in inflight if r != done[0]]
                    more, _ = ray.wait(
                        rest, num_returns=min(len(rest), _COMMIT_BATCH), timeout=_LINGER_S
                    )
                    done = done + more
                commits: list[tuple[Unit, int, dict[str, Any]]] = []
                for ref in done:
                    unit, token, attempt = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:
                        self._release_capacity(unit.run_key)
                        self._on_error(bf.id, s, unit, token, attempt, _unwrap(exc), delayed)
                        continue
                    # Give the capacity back at once: whoever waits for it is admitted by the
                    # scheduling cycle this release runs. A yield keeps the unit's queue place.
                    yielded = result.get("kind") == "yielded"
                    self._release_capacity(
                        unit.run_key, requeue=yielded and not self.preempt_requested.is_set()
                    )
                    if yielded:
                        self._on_yielded(bf.id, s, unit, token, result, delayed)
                        continue
                    if result.get("kind") == "not_ready":
                        self._on_not_ready(
                            bf.id, s, unit, token, result["sensor"], delayed, first_wait
                        )
                        continue
                    commits.append((unit, token, result))
                if commits:
                    crash_point("after_stage")
                    self._commit(bf.id, s, commits)
        except BaseException:
            hb.stop()
            for ref in inflight:
                ray.cancel(ref, force=True)
            self._release_all_capacity(u.run_key for u, _, _ in inflight.values())
            ledger.release_all(bf.id, "driver stopped by an error")
            ledger.finish_backfill(bf.id, BackfillState.FAILED, {"error": "driver error"})
            raise
        hb.stop()
        s.wall_s = time.time() - s.started_at
        if any(o is Outcome.CANCELLED for o in s.outcomes.values()):
            s.state = BackfillState.CANCELLED
        elif self.preempt_requested.is_set():
            s.state = BackfillState.PREEMPTED
        elif any(o in (Outcome.FAILED, Outcome.BLOCKED) for o in s.outcomes.values()):
            s.state = BackfillState.FAILED
        else:
            s.state = BackfillState.SUCCEEDED
        ledger.finish_backfill(bf.id, s.state, s.to_dict())
        self.progress("end", None, s.to_dict())
        return s

    # -- steps ------------------------------------------------------------------------------
    def _reconcile(self, s: BackfillSummary) -> None:
        """Roll forward commits whose publish a crash interrupted."""
        rows = self.ledger.get_units(u.run_key for u in self.plan.units)
        for u in self.plan.units:
            row = rows.get(u.run_key)
            if (
                row is not None
                and row.state is UnitState.DONE
                and self.executor.reconcile(u, row.output)
            ):
                s.reconciled.append(u.run_key)

    def _release_blocked(self, s: BackfillSummary, blocked: list[Unit], ready: deque[Unit]) -> None:
        ok = (Outcome.DONE, Outcome.SKIPPED_DONE)
        for unit in list(blocked):
            deps = [s.outcomes.get(d) for d in unit.depends_on]
            if all(d in ok for d in deps):
                blocked.remove(unit)
                ready.append(unit)
            elif all(d is not None for d in deps):
                blocked.remove(unit)
                bad = [d for d in unit.depends_on if s.outcomes.get(d) not in ok]
                s.outcomes[unit.run_key] = Outcome.BLOCKED
                s.errors[unit.run_key] = f"upstream not done: {', '.join(bad[:5])}" + (
                    " ..." if len(bad) > 5 else ""
                )
                self.progress("blocked", unit, {"upstream": bad})

    def _claim_and_submit(
        self,
        bf_id: str,
        s: BackfillSummary,
        batch: list[Unit],
        inflight: dict[Any, tuple[Unit, int, int]],
        delayed: list[tuple[float, Unit, int | None]],
        attempts: dict[str, int],
        generation: dict[str, int],
    ) -> None:
        # take_own: this backfill's own RUNNING claims (left by a dead driver it resumes) are
        # re-claimed with a new token at once; a zombie's late commit is then fenced off.
        results = self.ledger.claim_many(
            bf_id,
            [u.run_key for u in batch],
            reprocess=self.opt.reprocess,
            lease_s=self.opt.lease_s,
            take_own=True,
        )
        crash_point("after_claim")
        for unit, res in zip(batch, results, strict=True):
            if res.outcome is ClaimOutcome.GRANTED:
                assert res.token is not None
                attempts[unit.run_key] = attempts.get(unit.run_key, 0) + 1
                gen = generation.get(unit.run_key, 0)
                self._start(unit, res.token, attempts[unit.run_key], generation, inflight)
                live = self.executor.live_progress(unit, gen)
                if live is not None:
                    self.ledger.set_progress(unit.run_key, {"training": live})
                self.progress("claimed", unit, {"token": res.token})
            elif res.outcome is ClaimOutcome.ALREADY_DONE:
                s.outcomes[unit.run_key] = Outcome.SKIPPED_DONE
                self.progress("skipped", unit, {"why": "already done"})
            elif res.outcome is ClaimOutcome.FAILED_BEFORE:
                s.outcomes[unit.run_key] = Outcome.SKIPPED_FAILED
                err = res.unit.last_error if res.unit else ""
                s.errors[unit.run_key] = f"failed before (use --reprocess failed): {err}"
                self.progress("skipped", unit, {"why": "failed before"})
            else:
                holder = res.unit.holder if res.unit else "?"
                if self.opt.on_conflict is OnConflict.WAIT:
                    delayed.append((time.time() + self.opt.conflict_poll_s, unit, None))
                    self.progress("waiting", unit, {"held_by": holder})
                elif self.opt.on_conflict is OnConflict.FAIL:
                    s.outcomes[unit.run_key] = Outcome.FAILED
                    s.errors[unit.run_key] = f"held by backfill {holder}"
                    self.progress("failed", unit, {"error": s.errors[unit.run_key]})
                else:
                    s.outcomes[unit.run_key] = Outcome.SKIPPED_HELD
                    s.errors[unit.run_key] = f"held by backfill {holder}"
                    self.progress("skipped", unit, {"why": f"held by {holder}"})

    # -- under a scheduler (see rayorch/backfill/scheduled.py) -------------------------------
    def _start(
        self,
        unit: Unit,
        token: int,
        attempt: int,
        generation: dict[str, int],
        inflight: dict[Any, tuple[Unit, int, int]],
    ) -> None:
        """Run a claimed unit now, or (with a scheduler) once it is admitted."""
        if self.gate is not None:
            self.admitting[unit.run_key] = (unit, token, attempt)
            return
        ref = self.executor.submit(unit, token, generation.get(unit.run_key, 0))
        inflight[ref] = (unit, token, attempt)

    def _admit(
        self,
        bf_id: str,
        s: BackfillSummary,
        inflight: dict[Any, tuple[Unit, int, int]],
        generation: dict[str, int],
    ) -> None:
        """One batched submit/poll of the units waiting for admission (never blocks on it)."""
        from rayorch.scheduling.admission import AdmissionOutcome

        assert self.gate is not None
        if not self.admitting:
            return
        fresh = any(k not in self._submitted for k in self.admitting)
        answers = self.gate.admit([u for u, _, _ in self.admitting.values()], force=fresh)
        if answers is None:
            return
        for key, (a, placed) in answers.items():
            unit, token, attempt = self.admitting[key]
            if key not in self._submitted:
                self._submitted.add(key)
                self.progress("admission", unit, a.to_dict())
            if a.outcome is AdmissionOutcome.ADMITTED:
                del self.admitting[key]
                ref = self.executor.submit(unit, token, generation.get(key, 0), placement=placed)
                inflight[ref] = (unit, token, attempt)
                self.progress("admitted", unit, a.to_dict())
            elif a.outcome is AdmissionOutcome.REJECTED:
                del self.admitting[key]
                msg = f"admission REJECTED ({a.reason.name}): {a.detail or a.reason.value}"
                self.ledger.fail(bf_id, key, token, msg)
                s.outcomes[key] = Outcome.FAILED
                s.errors[key] = msg
                self.progress("failed", unit, {"error": msg})

    def _pass_on_yields(
        self,
        bf_id: str,
        s: BackfillSummary,
        inflight: dict[Any, tuple[Unit, int, int]],
        delayed: list[tuple[float, Unit, int | None]],
    ) -> None:
        """Hand the scheduler's yield requests to the running units: training checkpoints and
        stops (its ``yielded`` result re-queues it); other work is cancelled and re-queued."""
        import ray

        assert self.gate is not None
        running = {u.run_key: (ref, u, tok) for ref, (u, tok, _) in inflight.items()}
        now = time.time()
        for key, at in list(self.yield_asked.items()):
            if key not in running:
                self.yield_asked.pop(key)
            elif now - at > self.opt.yield_timeout_s:
                ref, unit, token = running[key]
                ray.cancel(ref, force=True)
                inflight.pop(ref)
                self.yield_asked.pop(key)
                self._requeue(
                    bf_id,
                    unit,
                    token,
                    delayed,
                    f"did not yield within {self.opt.yield_timeout_s:.0f}s "
                    "(train.yield_timeout_s); stopped, resumes from its previous checkpoint",
                )
        asked = self.gate.yields_requested(k for k in running if k not in self.yield_asked)
        for key in asked:
            ref, unit, token = running[key]
            why = "scheduler: higher-priority work needs this capacity"
            if self.executor.request_yield(unit, token, why):
                self.yield_asked[key] = now
                self.progress("yielding", unit, {"why": why})
            else:
                ray.cancel(ref, force=True)
                inflight.pop(ref)
                self._requeue(bf_id, unit, token, delayed, f"{why}; cancelled, re-runs")

    def _requeue(
        self,
        bf_id: str,
        unit: Unit,
        token: int,
        delayed: list[tuple[float, Unit, int | None]],
        why: str,
    ) -> None:
        self.ledger.release(bf_id, unit.run_key, token, why)
        self._release_capacity(unit.run_key, requeue=True)
        delayed.append((time.time() + self.opt.conflict_poll_s, unit, None))
        self.progress("requeued", unit, {"why": why})

    def _release_capacity(self, run_key: str, requeue: bool = False) -> None:
        if self.gate is not None:
            self.yield_asked.pop(run_key, None)
            self.gate.release(run_key, requeue=requeue)

    def _release_all_capacity(self, run_keys: Any) -> None:
        """Give back everything this driver holds or waits for (cancel, preempt, error)."""
        if self.gate is None:
            return
        keys = {*run_keys, *self.admitting}
        self.admitting.clear()
        self.yield_asked.clear()
        try:
            self.gate.release_all(sorted(keys))
        except Exception:  # the scheduler is gone: nothing to give back
            return

    def _commit(
        self, bf_id: str, s: BackfillSummary, commits: list[tuple[Unit, int, dict[str, Any]]]
    ) -> None:
        errors = self.ledger.commit_many(bf_id, [(u.run_key, tok, res) for u, tok, res in commits])
        for (unit, _, result), err in zip(commits, errors, strict=True):
            if err is not None:
                s.outcomes[unit.run_key] = Outcome.FAILED
                s.errors[unit.run_key] = err.message
                self.progress("failed", unit, {"error": err.message})
                continue
            # Crash point: the ledger has the commit; publish is rolled forward on resume.
            crash_point("after_commit")
            self.executor.publish(unit, result)
            crash_point("after_publish")
            s.outcomes[unit.run_key] = Outcome.DONE
            s.results[unit.run_key] = result
            self.progress("done", unit, {"result": result})

    def _on_error(
        self,
        bf_id: str,
        s: BackfillSummary,
        unit: Unit,
        token: int,
        attempt: int,
        exc: BaseException,
        delayed: list[tuple[float, Unit, int | None]],
    ) -> None:
        msg = _describe(exc)
        if _retryable(exc) and attempt <= self.opt.retries:
            backoff = self.opt.retry_backoff_s * (2 ** (attempt - 1))
            self.ledger.release(bf_id, unit.run_key, token, f"attempt {attempt}: {msg}")
            delayed.append((time.time() + backoff, unit, None))
            self.progress("retry", unit, {"error": msg, "attempt": attempt, "backoff_s": backoff})
            return
        self.ledger.fail(bf_id, unit.run_key, token, msg)
        s.outcomes[unit.run_key] = Outcome.FAILED
        s.errors[unit.run_key] = msg
        self.progress("failed", unit, {"error": msg})

    def _on_yielded(
        self,
        bf_id: str,
        s: BackfillSummary,
        unit: Unit,
        token: int,
        result: dict[str, Any],
        delayed: list[tuple[float, Unit, int | None]] | None,
    ) -> None:
        """A unit checkpointed and stopped on request: back to PENDING, not a failure. Its
        next claim resumes from the checkpoint (same Ray Train run name, same MLflow run)."""
        step = (result.get("training") or {}).get("step")
        why = f"yielded at step {step}; resumes from checkpoint {result.get('checkpoint')}"
        self.ledger.release(bf_id, unit.run_key, token, why)
        s.results[unit.run_key] = result
        if delayed is not None and not self.preempt_requested.is_set():
            delayed.append((time.time() + self.opt.conflict_poll_s, unit, None))  # re-queued
        else:
            s.outcomes[unit.run_key] = Outcome.YIELDED
        self.progress("yielded", unit, {"step": step, "checkpoint": result.get("checkpoint")})

    def _preempt(
        self, bf_id: str, s: BackfillSummary, inflight: dict[Any, tuple[Unit, int, int]]
    ) -> None:
        """Stop within ``yield_timeout_s``: training units checkpoint at their next step and
        stop; other work is cancelled (it is idempotent and re-runs on resume). Finished work
        that arrives meanwhile is committed as usual."""
        import ray

        why = self.preempt_reason
        deadline = time.time() + self.opt.yield_timeout_s
        waiting: dict[Any, tuple[Unit, int]] = {}
        running_keys = [(u, t) for u, t, _ in inflight.values()]
        for ref, (unit, token, _) in list(inflight.items()):
            if self.executor.request_yield(unit, token, why):
                waiting[ref] = (unit, token)
            else:
                ray.cancel(ref, force=True)
                s.outcomes[unit.run_key] = Outcome.YIELDED
        inflight.clear()
        self.progress("preempting", None, {"why": why, "yielding": len(waiting)})
        commits: list[tuple[Unit, int, dict[str, Any]]] = []
        while waiting and time.time() < deadline:
            done, _ = ray.wait(
                list(waiting), num_returns=1, timeout=max(0.0, min(1.0, deadline - time.time()))
            )
            for ref in done:
                unit, token = waiting.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:
                    s.outcomes[unit.run_key] = Outcome.YIELDED
                    s.errors[unit.run_key] = f"stopped by an error while yielding: {_describe(exc)}"
                    continue
                if result.get("kind") == "yielded":
                    self._on_yielded(bf_id, s, unit, token, result, None)
                elif result.get("kind") == "not_ready":
                    s.outcomes[unit.run_key] = Outcome.YIELDED
                else:
                    commits.append((unit, token, result))
        if commits:
            self._commit(bf_id, s, commits)
        for ref, (unit, _) in waiting.items():
            ray.cancel(ref, force=True)
            s.outcomes[unit.run_key] = Outcome.YIELDED
            s.errors[unit.run_key] = (
                f"did not yield within {self.opt.yield_timeout_s:.0f}s (train.yield_timeout_s); "
                "stopped without a new checkpoint, resumes from its previous one"
            )
        self._release_all_capacity(u.run_key for u, _ in running_keys)
        self.ledger.release_all(bf_id, f"preempted: {why}")
        self.progress("preempted", None, {"why": why})

    def _on_not_ready(
        self,
        bf_id: str,
        s: BackfillSummary,
        unit: Unit,
        token: int,
        sensor: dict[str, Any],
        delayed: list[tuple[float, Unit, int | None]],
        first_wait: dict[str, float],
    ) -> None:
        now = time.time()
        started = first_wait.setdefault(unit.run_key, now)
        reasons = "; ".join(r["message"] for r in sensor["reasons"])
        if sensor["status"] == "PENDING" and now - started < self.opt.sensor_wait_timeout_s:
            self.ledger.set_progress(unit.run_key, {"waiting_since": started, "sensor": sensor})
            delayed.append((now + self.opt.sensor_poll_s, unit, token))
            self.progress("waiting", unit, {"sensor": sensor["status"], "why": reasons})
            return
        verdict = (
            "still PENDING after the wait timeout" if sensor["status"] == "PENDING" else "REJECTED"
        )
        msg = f"DataNotReadyError: input {sensor['partition']} {verdict}: {reasons}"
        # Not a failure of the unit's code: release it (PENDING) so a re-run picks it up once
        # the data is complete, and report it as failed in this run.
        self.ledger.release(bf_id, unit.run_key, token, msg)
        s.outcomes[unit.run_key] = Outcome.FAILED
        s.errors[unit.run_key] = msg
        self.progress("failed", unit, {"error": msg, "sensor": sensor})

    def _cancel(
        self,
        s: BackfillSummary,
        inflight: dict[Any, tuple[Unit, int, int]],
        delayed: list[tuple[float, Unit, int | None]],
        ready: deque[Unit],
        blocked: list[Unit],
    ) -> None:
        import ray

        for ref, (unit, _, _) in list(inflight.items()):
            ray.cancel(ref, force=True)
            s.outcomes[unit.run_key] = Outcome.CANCELLED
        admitting = [u for u, _, _ in self.admitting.values()]
        for unit in [*ready, *blocked, *(d[1] for d in delayed), *admitting]:
            s.outcomes.setdefault(unit.run_key, Outcome.CANCELLED)
        self._release_all_capacity(u.run_key for u, _, _ in inflight.values())
        self.ledger.release_all(s.backfill_id, "backfill cancelled")
        self.progress("cancelled", None, {})
