"""The scheduler: one named Ray actor every driver talks to. It decides nothing itself.

Each cycle builds a :class:`Snapshot` (node shapes from Ray, free capacity from its own
accounting, running work), calls the pure :func:`schedule`, and carries the decisions out:

* ``ADMITTED`` - creates the placement group (bundles pinned to the planned nodes with Ray's
  ``ray.io/node-id`` label, strategy from the plan) and records the work as running;
* ``PREEMPT``  - flags the victims; they see ``yield_requested`` at their next step boundary,
  checkpoint, stop, and their driver calls ``release(victim, requeue=True)``;
* ``QUEUED``   - keeps the request; every later cycle retries it;
* ``REJECTED`` - drops the request; the caller gets the reason at once.

A cycle runs on every ``submit``, ``poll`` and ``release``, so a production request waiting
for a victim is admitted by the very cycle that the victim's ``release`` triggers. Calls are
short and never block, so the actor runs them one at a time (no locks).

Driver-side use (see :mod:`rayorch.scheduling.client`)::

    sched = get_scheduler(spec)
    a = ray.get(sched.submit.remote(request))          # Admission
    pg = ray.get(sched.placement_group.remote(wid))    # once ADMITTED
    ... run in pg; at step boundaries: ray.get(sched.yield_requested.remote(wid)) ...
    ray.get(sched.release.remote(wid, requeue=yielded))
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import replace
from typing import Any

from rayorch.errors import ConfigError, NotFoundError
from rayorch.scheduling.admission import POLICIES, Admission, AdmissionOutcome
from rayorch.scheduling.cycle import Reservation, queue_order, schedule
from rayorch.scheduling.durable import Durable
from rayorch.scheduling.fragmentation import fragmentation_report
from rayorch.scheduling.model import (
    NodeState,
    PlacementPlan,
    Request,
    RunningWorkload,
    Snapshot,
)
from rayorch.scheduling.quota import ClusterSpec

SCHEDULER_NAME = "rayorch-scheduler"
SCHEDULER_NAMESPACE = "rayorch"
#: Seconds a holder's admissions survive without a heartbeat (a SIGKILLed driver's reclaim).
DEFAULT_LEASE_S = 30.0
#: Ray restarts the actor this many times; it rebuilds its state from the ledger database.
MAX_RESTARTS = 5


class SchedulerController:
    """Body of the named actor (also usable in-process for tests of the bookkeeping)."""

    def __init__(
        self,
        spec: ClusterSpec,
        policy: str = "rayorch",
        nodes: tuple[NodeState, ...] | None = None,
        create_placement_groups: bool = True,
        db_url: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Any = None,
    ) -> None:
        self._clock = clock or time.time  # epoch seconds; tests pass a manual clock
        self._spec = spec
        self._policy = POLICIES[policy]
        self._static_nodes = nodes  # None: read node shapes from Ray
        self._create_pgs = create_placement_groups
        self._pending: dict[str, Request] = {}
        self._running: dict[str, RunningWorkload] = {}
        self._yield_at: dict[str, float] = {}  # victim -> when it was asked to yield (epoch)
        self._pgs: dict[str, Any] = {}
        self._last: dict[str, Admission] = {}
        self._requests: dict[str, Request] = {}  # admitted work's request, for requeueing
        self._reservations: dict[str, Reservation] = {}  # preemptor -> nominated placement
        self._history: dict[str, tuple[float, ...]] = {}  # unit -> times asked to yield
        self._leases: dict[str, float] = {}  # holder -> lease_until (epoch)
        self._lease_s = lease_s
        self._cycles = 0
        self._events: deque[dict[str, Any]] = deque(maxlen=2000)
        self._nodes_cache: tuple[float, tuple[NodeState, ...]] | None = None
        self._durable = Durable(self, db_url) if db_url else None
        if self._durable is not None:
            self._durable.restore()

    # --- driver API -------------------------------------------------------------------------
    def submit(self, request: Request) -> Admission:
        """Queue ``request`` (idempotent by workload id) and run a cycle; return its decision."""
        self._enqueue(request)
        self._cycle()
        return self._last[request.workload_id]

    def _enqueue(self, request: Request) -> None:
        wid = request.workload_id
        if request.holder:
            self._renew(request.holder)
        if wid not in self._running:
            if not request.submitted_at:
                request = replace(request, submitted_at=self._clock())
            if wid not in self._pending:
                self._pending[wid] = request
                self._dirty(wid)

    def heartbeat(self, holder: str) -> float:
        """Renew ``holder``'s lease on everything it holds or waits for; returns lease_until."""
        return self._renew(holder)

    def _renew(self, holder: str) -> float:
        until = self._clock() + self._lease_s
        prev = self._leases.get(holder)
        self._leases[holder] = until
        if self._durable is not None and (prev is None or until - prev > self._lease_s / 4):
            self._durable.renew(holder, until)
        return until

    def submit_many(self, requests: list[Request]) -> list[tuple[Admission, Any]]:
        """``submit`` for a batch in one cycle (a driver's units waiting for admission):
        each request's decision and, once admitted with ``reserve``, its placement group."""
        for request in requests:
            self._enqueue(request)
        self._cycle()
        return [(self._last[r.workload_id], self._pgs.get(r.workload_id)) for r in requests]

    def yields_requested(self, workload_ids: list[str], holder: str = "") -> list[str]:
        """Which of these running units were asked to checkpoint and stop (one call per
        driver loop, not one per unit). Renews ``holder``'s lease."""
        if holder:
            self._renew(holder)
        return [w for w in workload_ids if w in self._yield_at]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """What the scheduler did, in order: admitted, preempt (victims asked to yield),
        released, requeued, rejected, forced - each with the cycle that did it."""
        return [e for e in self._events if e["seq"] >= since]

    def poll(self, workload_id: str) -> Admission:
        """Run a cycle and return the latest decision for ``workload_id``."""
        self._cycle()
        if workload_id not in self._last:
            raise NotFoundError(
                f"workload {workload_id!r} was never submitted", workload_id=workload_id
            )
        return self._last[workload_id]

    def placement_group(self, workload_id: str) -> Any:
        """The placement group of admitted work (a picklable handle)."""
        if workload_id not in self._pgs:
            raise NotFoundError(
                f"workload {workload_id!r} holds no placement group", workload_id=workload_id
            )
        return self._pgs[workload_id]

    def placement(self, workload_id: str) -> PlacementPlan:
        if workload_id not in self._running:
            raise NotFoundError(f"workload {workload_id!r} is not running", workload_id=workload_id)
        return self._running[workload_id].placement

    def yield_requested(self, workload_id: str) -> bool:
        """True once the scheduler asked this running unit to checkpoint and stop."""
        return workload_id in self._yield_at

    def release(self, workload_id: str, requeue: bool = False) -> Admission | None:
        """Give back a unit's capacity (done, failed, or yielded). ``requeue``: it goes back to
        the queue with its original submission time and resumes later from its checkpoint.
        Runs a cycle, so whoever waited for this capacity is admitted now."""
        w = self._drop_running(workload_id)
        if w is not None and requeue:
            req = self._requests[workload_id]
            self._pending[workload_id] = req
        elif w is None:
            self._pending.pop(workload_id, None)  # cancel a queued request
            self._reservations.pop(workload_id, None)
        self._dirty(workload_id)
        self._log("requeued" if w is not None and requeue else "released", workload_id)
        self._cycle()
        return self._last.get(workload_id) if requeue else None

    def _drop_running(self, workload_id: str) -> RunningWorkload | None:
        w = self._running.pop(workload_id, None)
        pg = self._pgs.pop(workload_id, None)
        if pg is not None:
            import ray.util

            ray.util.remove_placement_group(pg)
        self._yield_at.pop(workload_id, None)
        return w

    def _dirty(self, workload_id: str) -> None:
        if self._durable is not None:
            self._durable.dirty.add(workload_id)

    def config_fingerprint(self) -> str:
        from rayorch.scheduling.durable import fingerprint

        return fingerprint(self._spec)

    def reconfigure(self, spec: ClusterSpec) -> str:
        """Take a changed cluster config. Refused (ConfigError) when it drops a namespace that
        still has queued or running work; returns the new fingerprint."""
        held = {r.namespace for r in self._pending.values()} | {
            w.namespace for w in self._running.values()
        }
        gone = sorted(ns for ns in held if spec.quota(ns) is None)
        if gone:
            raise ConfigError(
                f"the changed cluster config drops namespace(s) {', '.join(gone)} that still "
                "have queued or running work; keep them under `namespaces:` until it ends",
                field="namespaces",
                value=gone,
            )
        old = self.config_fingerprint()
        self._spec = spec
        if self._durable is not None:
            self._durable.save_config()
        self._log("reconfigured", "-", old=old, new=self.config_fingerprint())
        self._cycle()
        return self.config_fingerprint()

    def cycle(self) -> int:
        """Run one scheduling cycle now; returns the cycle count."""
        self._cycle()
        return self._cycles

    def cycles(self) -> int:
        return self._cycles

    def status(self) -> dict[str, Any]:
        """Per-node free/used GPUs, running work, the queue, stranded GPUs, suggestions."""
        snap = self._snapshot()
        queued = queue_order(list(self._pending.values()), self._policy)
        report = fragmentation_report(snap, queued)
        borrowed = snap.borrowed_ids()
        report["policy"] = self._policy.name
        report["pid"] = os.getpid()
        report["cycles"] = self._cycles
        report["running"] = [
            {
                "workload_id": w.workload_id,
                "namespace": w.namespace,
                "priority": w.priority.value,
                "gpus": w.gpus,
                "borrowed": w.workload_id in borrowed,
                "yielding": w.workload_id in self._yield_at,
                "placement": w.placement.to_dict(),
            }
            for w in self._running.values()
        ]
        report["queue"] = [
            {
                **r.to_dict(),
                "decision": self._last[r.workload_id].to_dict()
                if r.workload_id in self._last
                else None,
            }
            for r in queued
        ]
        report["reservations"] = [
            {
                **r.to_dict(),
                "gpus_by_node": r.placement.gpus_by_node(),
                "draining": [v for v in r.victims if v in self._running],
            }
            for r in self._reservations.values()
        ]
        report["leases"] = {h: round(u - self._clock(), 1) for h, u in self._leases.items()}
        report["namespaces"] = {
            ns: {
                "gpus_used": snap.usage(ns)[0],
                "gpus_quota": q.gpus,
                "units": snap.usage(ns)[2],
                "max_concurrent_units": q.max_concurrent_units,
                "can_borrow": q.can_borrow,
            }
            for ns, q in self._spec.namespaces.items()
        }
        return report

    # --- the cycle ----------------------------------------------------------------------------
    def _nodes(self) -> tuple[NodeState, ...]:
        if self._static_nodes is not None:
            return self._static_nodes
        now = time.monotonic()
        if self._nodes_cache is None or now - self._nodes_cache[0] > self._spec.scheduling_cycle_s:
            from rayorch.scheduling.inventory import read_nodes

            self._nodes_cache = (now, read_nodes())
        return self._nodes_cache[1]

    def _snapshot(self) -> Snapshot:
        used: dict[str, tuple[int, float]] = {}
        for w in self._running.values():
            for b in w.placement.bundles:
                g, c = used.get(b.node_id, (0, 0.0))
                used[b.node_id] = (g + b.gpus, c + b.cpus)
        nodes = tuple(
            replace(
                n,
                free_gpus=n.shape.gpus - used.get(n.node_id, (0, 0.0))[0],
                free_cpus=n.shape.cpus - used.get(n.node_id, (0, 0.0))[1],
            )
            for n in self._nodes()
        )
        running = tuple(
            replace(
                w,
                yielding=w.workload_id in self._yield_at,
                preempted_at=self._history.get(w.workload_id, ()),
            )
            for w in self._running.values()
        )
        return Snapshot(self._spec, nodes, running, self._clock())

    def _log(self, event: str, workload_id: str, **detail: Any) -> None:
        seq = self._events[-1]["seq"] + 1 if self._events else 0
        self._events.append(
            {
                "seq": seq,
                "cycle": self._cycles,
                "at": self._clock(),
                "event": event,
                "workload_id": workload_id,
                **detail,
            }
        )

    def _expire_leases(self) -> None:
        """A holder that stopped heartbeating (SIGKILLed driver) loses what it held."""
        now = self._clock()
        for holder, until in list(self._leases.items()):
            if until >= now:
                continue
            del self._leases[holder]
            for wid in [w for w, r in self._requests.items() if r.holder == holder]:
                if wid in self._running:
                    self._drop_running(wid)
                    self._dirty(wid)
                    self._log("expired", wid, holder=holder)
            for wid in [w for w, r in self._pending.items() if r.holder == holder]:
                del self._pending[wid]
                self._reservations.pop(wid, None)
                self._dirty(wid)
                self._log("expired", wid, holder=holder)

    def _cycle(self) -> None:
        self._cycles += 1
        self._expire_leases()
        self._force_overdue_yields()
        result = schedule(
            list(self._pending.values()), self._snapshot(), self._policy, self._reservations
        )
        self._reservations = dict(result.reservations)
        for d in result.decisions:
            prev = self._last.get(d.workload_id)
            self._last[d.workload_id] = d
            if prev is None or (prev.outcome, prev.reason) != (d.outcome, d.reason):
                self._dirty(d.workload_id)
            if d.outcome is AdmissionOutcome.ADMITTED:
                req = self._pending.pop(d.workload_id)
                assert d.placement is not None
                self._requests[d.workload_id] = req
                self._running[d.workload_id] = RunningWorkload(
                    req.workload_id,
                    req.namespace,
                    req.priority,
                    d.placement,
                    started_at=self._clock(),
                    deadline_at=req.deadline_at,
                    expected_duration_s=req.expected_duration_s,
                )
                if self._create_pgs and req.reserve:
                    self._pgs[d.workload_id] = self._create_pg(d.workload_id, d.placement)
                self._log("admitted", d.workload_id, nodes=sorted(d.placement.gpus_by_node()))
            elif d.outcome is AdmissionOutcome.PREEMPT:
                for v in d.victims:
                    if v not in self._yield_at:
                        self._yield_at[v] = self._clock()
                        self._history[v] = (*self._history.get(v, ()), self._clock())
                        self._dirty(v)
                        self._log("preempt", v, for_workload=d.workload_id)
            elif (
                d.outcome is AdmissionOutcome.REJECTED
                and self._pending.pop(d.workload_id, None) is not None
            ):
                self._log("rejected", d.workload_id, reason=d.reason.name)
        if self._durable is not None:
            self._durable.flush()

    def _force_overdue_yields(self) -> None:
        """A victim that did not release within ``yield_grace_s`` loses its placement group
        (Ray kills what runs in it) and goes back to the queue; it resumes from its last
        checkpoint, which is older than a cooperative yield's."""
        now = self._clock()
        for wid, at in list(self._yield_at.items()):
            # Work without a placement group here (Ray Train's own) cannot be stopped from
            # here: its driver enforces train.yield_timeout_s and releases it.
            if (
                now - at > self._spec.yield_grace_s
                and wid in self._running
                and self._requests[wid].reserve
            ):
                self._running.pop(wid)
                pg = self._pgs.pop(wid, None)
                if pg is not None:
                    import ray.util

                    ray.util.remove_placement_group(pg)
                self._yield_at.pop(wid)
                self._pending[wid] = self._requests[wid]
                self._dirty(wid)
                self._log("forced", wid)

    def _create_pg(self, workload_id: str, plan: PlacementPlan) -> Any:
        from ray.util import placement_group

        # detached: the group outlives a restart of this actor, which finds it again by name
        return placement_group(
            plan.ray_bundles(),
            strategy=plan.strategy.value,
            name=f"rayorch:{workload_id}",
            lifetime="detached",
            bundle_label_selector=plan.label_selectors(),
        )
