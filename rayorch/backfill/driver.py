"""The backfill driver: carries out what :class:`~rayorch.backfill.core.BackfillCore` decides.

Order per unit, chosen so that a SIGKILL anywhere leaves nothing duplicated or lost:
persist plan -> own the backfill (epoch) -> claim (token) -> work stages output -> fenced
ledger commit -> publish (feature partition made live; model version registered) -> record
what publishing produced (snapshot id, model version).
Everything the driver knows is in the ledger; a new driver resumes from there, and a dead
driver on this host is found dead at once (process identity), elsewhere after its lease.

Ledger commits happen every loop turn (one fenced transaction per turn: the ledger decides
who may write). Table commits are grouped: committed units wait and are published together
(one Iceberg commit, one ledger transaction recording their snapshot) when
:func:`rayorch.backfill.publishing.decide_flush` says so - ``publish_batch`` units waiting,
``publish_linger_s`` since the oldest, before a unit that reads them starts, before the
driver ends (success, failure, cancel, SIGTERM). A driver that lost its lease or its
ownership publishes nothing. Publishing itself is :mod:`rayorch.backfill.publisher` (on a
background thread by default). A crash while units wait leaves the ledger ahead of the table:
the next driver's ``Publisher.reconcile`` rolls every such unit forward from the ledger (one
table commit), the token check keeping a newer live partition.

The shell holds no decisions: each loop it gathers events (work results, claims, scheduler
answers, heartbeat and cancel state), calls ``core.step(now, events)`` and performs the
actions. The runner (executor), the ledger, the scheduler gate and the clock are injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayorch.backfill.core import BackfillCore
from rayorch.backfill.executor import UnitExecutor
from rayorch.backfill.lease import DriverLease
from rayorch.backfill.machine import (
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
    Holder,
    Notify,
    OnConflict,
    Publish,
    Release,
    ReleaseAll,
    Stop,
    StopReason,
    Submit,
    Waiting,
    YieldAsked,
)
from rayorch.backfill.plan import BackfillPlan, Step, Unit
from rayorch.backfill.publisher import PUBLISH_POLL_S, Publisher
from rayorch.backfill.publishing import (
    DEFAULT_PUBLISH_BATCH,
    DEFAULT_PUBLISH_LINGER_S,
    PublishPolicy,
)
from rayorch.backfill.summary import BackfillSummary, summarize
from rayorch.backfill.window import default_concurrency
from rayorch.errors import OwnershipLostError
from rayorch.faults import crash_point
from rayorch.ledger.owners import OwnerInfo
from rayorch.ledger.rows import ClaimOutcome, ClaimResult, Ownership
from rayorch.ledger.states import BackfillState, Reprocess
from rayorch.ledger.store import DEFAULT_LEASE_S, Ledger, UnitSpec
from rayorch.results import ErrorInfo, Yielded

if TYPE_CHECKING:
    from rayorch.backfill.scheduled import SchedulerGate

log = logging.getLogger(__name__)

__all__ = ["BackfillDriver", "BackfillSummary", "DriverOptions", "OnConflict", "ProgressFn"]


@dataclass(frozen=True, slots=True)
class DriverOptions:
    max_concurrency: int | None = None
    reprocess: Reprocess = Reprocess.MISSING
    on_conflict: OnConflict = OnConflict.WAIT
    lease_s: float = DEFAULT_LEASE_S
    resume_id: str | None = None
    conflict_poll_s: float = 2.0
    retries: int = 0
    retry_backoff_s: float = 1.0
    sensor_wait_timeout_s: float = 0.0
    sensor_poll_s: float = 5.0
    yield_timeout_s: float = 120.0  # bound for running units to checkpoint and stop
    max_wait_s: float = 1.0  # longest the loop blocks on work (heartbeats, flags, timers)
    cancel_poll_s: float = 2.0  # how often a cancel request is looked for between heartbeats
    publish_batch: int = DEFAULT_PUBLISH_BATCH  # committed units per table commit, at most
    publish_linger_s: float = DEFAULT_PUBLISH_LINGER_S  # longest a committed unit waits
    publish_in_background: bool = True  # table commits on a thread, overlapping the loop


#: Progress callback: (event, unit or None, detail). Events: start, claimed, done, skipped,
#: retry, waiting, failed, blocked, yielding, yielded, cancelled, published, end.
ProgressFn = Callable[[str, Unit | None, dict[str, Any]], None]


def _quiet(event: str, unit: Unit | None, detail: dict[str, Any]) -> None:
    return None


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
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        owner: OwnerInfo | None = None,
        crash: Callable[[str], None] = crash_point,
        versions: dict[str, dict[str, str]] | None = None,
        rerun: frozenset[str] = frozenset(),
    ) -> None:
        self.plan, self.ledger, self.executor, self.opt = plan, ledger, executor, options
        self.progress = progress or _quiet
        features_only = all(u.step is Step.FEATURES for u in plan.units)
        self.max_conc = options.max_concurrency or default_concurrency(
            cluster_cpus, features_only=features_only
        )
        self.gate = gate
        self.clock = clock
        self.sleep = sleep
        self.crash = crash  # named crash points (rayorch.faults), injectable by tests
        self.owner = owner
        self.versions = versions or {}
        self.rerun = rerun  # stale units (--reprocess stale): DONE, but claimable again
        self.stop_requested = threading.Event()  # cancel: release claims, work is dropped
        self.preempt_requested = threading.Event()  # SIGTERM: training checkpoints and yields
        self.preempt_reason = "the driver was asked to stop (SIGTERM)"
        self._handles: dict[Any, tuple[str, int]] = {}  # work handle -> (run key, token)
        self._by_key: dict[str, Any] = {}
        self._admitting: dict[str, tuple[Unit, int]] = {}
        self._submitted: set[str] = set()
        self._generation: dict[str, int] = {}
        self._outputs: dict[str, dict[str, Any]] = {}
        self._progress_rows: dict[str, dict[str, Any]] = {}
        self.publisher = Publisher(
            ledger,
            executor,
            self._outputs,
            lambda event, unit, detail: self.progress(event, unit, detail),  # late: reassignable
            crash,
            background=options.publish_in_background,
        )

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> BackfillSummary:
        plan, ledger, opt = self.plan, self.ledger, self.opt
        planned = [
            UnitSpec(u.run_key, plan.pipeline, u.step.value, str(u.partition)) for u in plan.units
        ]
        opened = ledger.open_backfill(
            plan.pipeline,
            plan.params,
            plan.config_fingerprint,
            planned,
            owner=self.owner,
            lease_s=opt.lease_s,
            resume_id=opt.resume_id,
        )
        own = opened.ownership
        started = self.clock()
        took = opened.took_over_from.label() if opened.took_over_from else None
        self.progress(
            "start",
            None,
            {
                "backfill_id": own.backfill_id,
                "resumed": opened.resumed,
                "units": len(plan.units),
                "took_over_from": took,
                "why": opened.why,
            },
        )
        rows = ledger.get_units(u.run_key for u in plan.units)
        self._generation = {k: (r.committed_token or 0) for k, r in rows.items()}
        reconciled, invalidated = self.publisher.reconcile(own, plan.units, rows)
        core = BackfillCore(
            plan.units,
            CoreConfig(
                max_concurrency=self.max_conc,
                on_conflict=opt.on_conflict,
                retries=opt.retries,
                retry_backoff_s=opt.retry_backoff_s,
                sensor_wait_timeout_s=opt.sensor_wait_timeout_s,
                sensor_poll_s=opt.sensor_poll_s,
                conflict_poll_s=opt.conflict_poll_s,
                yield_timeout_s=opt.yield_timeout_s,
                gated=self.gate is not None,
                publish=PublishPolicy(opt.publish_batch, opt.publish_linger_s),
            ),
        )
        lease = DriverLease(ledger, own, opened.backfill.lease_s, self.clock(), opt.cancel_poll_s)
        stops: set[StopReason] = set()
        events: list[Event] = []
        try:
            while True:
                now = self.clock()
                lease.maybe_beat(now)
                events += self.publisher.events()
                events += self._control_events(lease, stops)
                if self.gate is not None and lease.lost is None:
                    self.gate.heartbeat()  # renews this driver's admissions (rate-limited)
                    events += self._gate_events(core)
                actions = core.step(now, events)
                events = self._perform(own, actions, lost=lease.lost is not None)
                if events:
                    continue
                if core.finished:
                    break
                events = self._wait_for_work(core, now)
        except OwnershipLostError as e:
            self._abandon()
            self.publisher.join()
            core.step(self.clock(), [Stop(StopReason.OWNERSHIP_LOST, e.message)])
            return self._finish(own, core, opened, started, reconciled, invalidated, write=False)
        except (Exception, KeyboardInterrupt):  # anything else (a kill) leaves it to the lease
            self._abandon()
            done = self.publisher.join()
            try:
                ledger.release_all(own, "driver stopped by an error")  # fenced: still the owner
                self.publisher.publish_waiting(own, core, done)
                ledger.finish_backfill(own, BackfillState.FAILED, {"error": "driver error"})
            except Exception as e:  # the ledger is what failed, or another owner took over
                log.warning("could not record the driver's failure: %s", ErrorInfo.of(e).describe())
            raise
        finally:
            self.publisher.close()
        return self._finish(
            own, core, opened, started, reconciled, invalidated, write=lease.lost is None
        )

    def _finish(
        self,
        own: Ownership,
        core: BackfillCore,
        opened: Any,
        started: float,
        reconciled: list[str],
        invalidated: list[str],
        *,
        write: bool,
    ) -> BackfillSummary:
        s = summarize(
            own.backfill_id,
            opened,
            core,
            self._outputs,
            reconciled=reconciled,
            invalidated=self.publisher.invalidated,
            wall_s=self.clock() - started,
            now=self.clock(),
        )
        if write:
            self.ledger.finish_backfill(own, s.state, s.to_dict())
        self.progress("end", None, s.to_dict())
        return s

    def _control_events(self, lease: DriverLease, stops: set[StopReason]) -> list[Event]:
        out: list[Event] = []

        def once(reason: StopReason, detail: str = "") -> None:
            if reason not in stops:
                stops.add(reason)
                out.append(Stop(reason, detail))

        if lease.lost is not None:
            once(lease.lost.reason, lease.lost.detail)
        if lease.cancelled or self.stop_requested.is_set():
            once(StopReason.CANCEL)
        if self.preempt_requested.is_set():
            once(StopReason.PREEMPT, self.preempt_reason)
        return out

    def _wait_for_work(self, core: BackfillCore, now: float) -> list[Event]:
        due = core.next_due()
        timeout = (
            self.opt.max_wait_s if due is None else max(0.0, min(due - now, self.opt.max_wait_s))
        )
        if self._admitting and self.gate is not None:
            timeout = min(timeout, self.gate.poll_s)
        if self.publisher.busy:
            if not self._handles:  # nothing else to wait for: the publish ends the wait
                self.publisher.wait(max(timeout, PUBLISH_POLL_S))
                return []
            timeout = min(timeout, PUBLISH_POLL_S)  # work results, or the publish soon after
        if not self._handles:
            if timeout > 0:
                self.sleep(timeout)
            return []
        events: list[Event] = []
        for handle, outcome in self.executor.wait(list(self._handles), timeout):
            key, token = self._handles.pop(handle)
            self._by_key.pop(key, None)
            requeue = isinstance(outcome, Yielded) and core.runs[key].requeue
            self._give_back(key, requeue=requeue and core.stop is None)
            if isinstance(outcome, BaseException):
                events.append(Errored(key, token, ErrorInfo.of(outcome)))
            else:
                events.append(Finished(key, token, outcome))
        return events

    # -- actions ----------------------------------------------------------------------------
    def _perform(self, own: Ownership, actions: list[Action], *, lost: bool) -> list[Event]:
        events: list[Event] = []
        for a in actions:
            if isinstance(a, Notify):
                self.progress(a.event, a.unit, {"detail": a.detail})
            elif isinstance(a, CancelWork):
                self._cancel(a.unit.run_key)
            elif lost:
                continue  # past the lease (or taken over): no ledger writes, no new work
            elif isinstance(a, Claim):
                events += self._claim(own, a.units)
            elif isinstance(a, Submit):
                self._submit(own, a)
            elif isinstance(a, Commit):
                events += self._commit(own, a)
            elif isinstance(a, Publish):
                events += self.publisher.start(own, a)
            elif isinstance(a, Release):
                self.ledger.release(own, a.unit.run_key, a.token, a.why)
            elif isinstance(a, Fail):
                self.ledger.fail(own, a.unit.run_key, a.token, a.message)
            elif isinstance(a, AskYield):
                if not self.executor.request_yield(a.unit, a.token, a.why):
                    self._cancel(a.unit.run_key)
            elif isinstance(a, Waiting):
                row = self._progress_rows.setdefault(a.unit.run_key, {})
                row.update(waiting=a.why, until=a.until)
                self.ledger.set_progress(own, a.unit.run_key, row)
            elif isinstance(a, ReleaseAll):
                self._abandon()
                self.ledger.release_all(own, a.why)
        return events

    def _claim(self, own: Ownership, batch: tuple[Unit, ...]) -> list[Event]:
        keys = [u.run_key for u in batch]
        rerun = self.rerun.intersection(keys)
        results = self.ledger.claim_many(
            own, keys, reprocess=self.opt.reprocess, rerun=rerun, take_own=True
        )
        self.crash("after_claim")
        held = [r for r in results if r.outcome is ClaimOutcome.HELD and r.unit is not None]
        if not held:  # the common case: no holder to look up or judge
            return [self._claimed(r, {}, {}) for r in results]
        holders = self.ledger.get_backfills({r.unit.holder for r in held if r.unit.holder})
        verdicts = {}
        now = self.ledger.now()
        expired = False
        for bf_id, bf in holders.items():
            verdicts[bf_id] = v = self.ledger.judge(bf, now)
            if v.dead and bf_id != own.backfill_id:
                # Its driver is gone: end its leases now instead of waiting them out.
                expired = self.ledger.expire_owner(bf, v.describe()) or expired
                self.progress(
                    "takeover", None, {"from": bf_id, "owner": bf.owner, "why": v.describe()}
                )
        if expired:
            again = {r.run_key for r in held}
            retry = {
                r.run_key: r
                for r in self.ledger.claim_many(
                    own, sorted(again), reprocess=self.opt.reprocess, rerun=rerun, take_own=True
                )
            }
            results = [retry.get(r.run_key, r) for r in results]
        return [self._claimed(r, holders, verdicts) for r in results]

    @staticmethod
    def _claimed(r: ClaimResult, holders: dict[str, Any], verdicts: dict[str, Any]) -> Claimed:
        holder = None
        if r.outcome is ClaimOutcome.HELD and r.unit is not None and r.unit.holder:
            bf = holders.get(r.unit.holder)
            v = verdicts.get(r.unit.holder)
            holder = Holder(
                r.unit.holder,
                bf.owner if bf else "?",
                r.unit.lease_until,
                v.liveness.value if v else "UNKNOWN",
            )
        last_error = r.unit.last_error if r.unit else None
        return Claimed(r.run_key, r.outcome, r.token, holder, last_error)

    def _submit(self, own: Ownership, a: Submit) -> None:
        key = a.unit.run_key
        gen = self._generation.get(key, 0)
        live = self.executor.live_progress(a.unit, gen)
        if live is not None:
            row = self._progress_rows.setdefault(key, {})
            row.update(training=live, waiting=None)
            self.ledger.set_progress(own, key, row)
        if a.admit:
            self._admitting[key] = (a.unit, a.token)
            return
        self._start(a.unit, a.token, None)

    def _start(self, unit: Unit, token: int, placement: Any) -> None:
        gen = self._generation.get(unit.run_key, 0)
        handle = self.executor.submit(unit, token, gen, placement=placement)
        self._handles[handle] = (unit.run_key, token)
        self._by_key[unit.run_key] = handle

    def _commit(self, own: Ownership, a: Commit) -> list[Event]:
        self.crash("after_stage")
        items = [(u.run_key, tok, res.to_output()) for u, tok, res in a.items]
        versions = {
            u.run_key: self.versions[u.step.value]
            for u, _, _ in a.items
            if u.step.value in self.versions
        }
        errors = self.ledger.commit_many(own, items, versions)
        events: list[Event] = []
        accepted = []
        for (unit, token, result), (_, _, output), err in zip(a.items, items, errors, strict=True):
            if err is not None:
                events.append(Committed(unit.run_key, token, err.message))
            else:
                accepted.append((unit, token, result, output))
        for unit, token, _, output in accepted:
            self._outputs[unit.run_key] = output
            events.append(Committed(unit.run_key, token))
        if accepted:
            # Crash point: the ledger has the commits, the table not yet (nor, with grouped
            # publishing, the commits of earlier turns still waiting): resume rolls them forward.
            self.crash("after_commit")
        return events

    # -- the scheduler (see rayorch/backfill/scheduled.py) -----------------------------------
    def _gate_events(self, core: BackfillCore) -> list[Event]:
        from rayorch.scheduling.admission import AdmissionOutcome

        assert self.gate is not None
        events: list[Event] = []
        if self._admitting:
            fresh = any(k not in self._submitted for k in self._admitting)
            answers = self.gate.admit([u for u, _ in self._admitting.values()], force=fresh)
            for key, (adm, placed) in (answers or {}).items():
                if key not in self._admitting:
                    continue
                unit, token = self._admitting[key]
                if key not in self._submitted:
                    self._submitted.add(key)
                    self.progress("admission", unit, adm.to_dict())
                if adm.outcome is AdmissionOutcome.ADMITTED:
                    del self._admitting[key]
                    self._start(unit, token, placed)
                    events.append(Admitted(key))
                elif adm.outcome is AdmissionOutcome.REJECTED:
                    del self._admitting[key]
                    msg = (
                        f"admission REJECTED ({adm.reason.name}): {adm.detail or adm.reason.value}"
                    )
                    events.append(AdmissionRejected(key, msg))
        running = [k for k in self._by_key if core.runs[k].phase.name == "RUNNING"]
        asked = self.gate.yields_requested(running)
        if asked:
            events.append(YieldAsked(tuple(asked)))
        return events

    def _give_back(self, run_key: str, requeue: bool = False) -> None:
        if self.gate is not None:
            self.gate.release(run_key, requeue=requeue)

    def _cancel(self, run_key: str) -> None:
        handle = self._by_key.pop(run_key, None)
        if handle is not None:
            self._handles.pop(handle, None)
            self.executor.cancel(handle)
            self._give_back(run_key)
        elif self._admitting.pop(run_key, None) is not None:
            self._give_back(run_key)

    def _abandon(self) -> None:
        """Stop every running attempt and give back all capacity (stop, error, lost lease)."""
        for handle in list(self._handles):
            self.executor.cancel(handle)
        keys = {*self._by_key, *self._admitting}
        self._handles.clear()
        self._by_key.clear()
        self._admitting.clear()
        if self.gate is not None and keys:
            try:
                self.gate.release_all(sorted(keys))
            except Exception:  # the scheduler is gone: nothing to give back
                return
