"""A virtual-clock replay of a workload through the same ``schedule``/``admit``/``place`` code
the live controller runs.

Events: arrivals, completions, and the end of a yield (a preempted unit has checkpointed and
released; its progress is kept and it goes back to the queue with the rest of its run time plus
a restore overhead). After every batch of events at one instant, one scheduling cycle runs.

Metrics (integrated over virtual time):

* ``util_while_queued`` - used GPUs / all GPUs, over the time some request was queued;
* ``stranded_gpus_per_node`` - mean free GPUs per node that no queued shape could use,
  over the same time;
* production queue wait (first start - submit) and deadline misses;
* preemptions: in all, per production request (victims its admission cost), and the most any
  one unit was preempted within an hour.

``trace=True`` keeps every decision that changed a request's outcome or reason (with the
reason and detail) and every occupancy interval per node, for ``--trace`` and ``--plot``.

Pure: no Ray imports.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rayorch.scheduling.admission import RAYORCH, AdmissionOutcome, AdmissionPolicy
from rayorch.scheduling.cycle import Reservation, schedule
from rayorch.scheduling.fragmentation import stranded_gpus
from rayorch.scheduling.model import (
    NodeState,
    Request,
    RunningWorkload,
    Snapshot,
    apply_placement,
    release_placement,
)
from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.scheduling.shapes import NodeShape
from rayorch.scheduling.workload import SimJob

_ARRIVE, _FINISH, _YIELDED = 0, 1, 2


@dataclass
class _Run:
    workload: RunningWorkload
    started: float
    version: int


@dataclass
class SimResult:
    policy: str
    jobs: int
    makespan_h: float
    util_while_queued: float
    util_overall: float
    queued_hours: float
    stranded_gpus_per_node: dict[str, float]
    stranded_gpus_mean: float
    production_jobs: int
    production_wait_mean_min: float
    production_wait_max_min: float
    deadline_misses: int
    preemptions: int
    rejected: list[str]
    cycles: int
    decisions: int
    wall_s: float
    backfill_done_h: float | None = None
    preemptions_per_production_max: int = 0
    preemptions_per_production_mean: float = 0.0
    max_preemptions_per_unit_hour: int = 0
    production_waits_min: dict[str, float] = field(default_factory=dict)
    production_lateness_min: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    occupancy: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        skip = {"trace", "occupancy", "production_waits_min", "production_lateness_min"}
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        d["util_while_queued"] = round(self.util_while_queued, 4)
        d["util_overall"] = round(self.util_overall, 4)
        return d


def simulate(
    spec: ClusterSpec,
    node_shapes: Sequence[NodeShape],
    jobs: Sequence[SimJob],
    policy: AdmissionPolicy = RAYORCH,
    yield_latency_s: float = 60.0,
    resume_overhead_s: float = 30.0,
    trace: bool = False,
) -> SimResult:
    wall0 = time.perf_counter()
    nodes = tuple(NodeState.empty(f"node-{i}", s) for i, s in enumerate(node_shapes))
    total_gpus = sum(s.gpus for s in node_shapes) or 1
    by_id = {j.job_id: j for j in jobs}
    events: list[tuple[float, int, int, str, int]] = []
    seq = 0
    for j in jobs:
        heapq.heappush(events, (j.submit_at, seq, _ARRIVE, j.job_id, 0))
        seq += 1
    pending: dict[str, Request] = {}
    remaining = {j.job_id: j.duration_s for j in jobs}
    running: dict[str, _Run] = {}
    yielding: set[str] = set()
    first_start: dict[str, float] = {}
    finished: dict[str, float] = {}
    rejected: list[str] = []
    preemptions = cycles = decisions = 0
    t = 0.0
    queued_time = used_queued = used_all = 0.0
    stranded_int = {n.node_id: 0.0 for n in nodes}
    cur_used, cur_stranded, cur_queued = 0, dict.fromkeys(stranded_int, 0), False
    reservations: dict[str, Reservation] = {}
    history: dict[str, tuple[float, ...]] = {}  # unit -> times it was asked to yield
    caused: dict[str, int] = {}  # preemptor -> victims its admission cost
    last: dict[str, tuple[str, str]] = {}
    decisions_log: list[dict[str, Any]] = []
    occupancy: list[dict[str, Any]] = []
    violations: list[str] = []

    def request(job: SimJob) -> Request:
        return Request(
            job.job_id,
            job.namespace,
            job.shape,
            job.priority,
            job.allow_reshape,
            submitted_at=job.submit_at,
            deadline_at=job.deadline_at,
            expected_duration_s=remaining[job.job_id],
        )

    def release(wid: str) -> None:
        nonlocal nodes
        run = running.pop(wid)
        nodes = release_placement(nodes, run.workload.placement)
        yielding.discard(wid)
        if trace:
            for nid, g in run.workload.placement.gpus_by_node().items():
                occupancy.append(
                    {
                        "node": nid,
                        "workload_id": wid,
                        "priority": run.workload.priority.value,
                        "gpus": g,
                        "start": run.started,
                        "end": t,
                    }
                )

    while events:
        t_next = events[0][0]
        dt = t_next - t
        if dt > 0:
            used_all += cur_used * dt
            if cur_queued:
                queued_time += dt
                used_queued += cur_used * dt
                for nid, s in cur_stranded.items():
                    stranded_int[nid] += s * dt
        t = t_next
        while events and events[0][0] == t:
            _, _, kind, wid, version = heapq.heappop(events)
            job = by_id[wid]
            if kind == _ARRIVE:
                pending[wid] = request(job)
            elif kind == _FINISH:
                run = running.get(wid)
                if run is not None and run.version == version:
                    release(wid)
                    remaining[wid] = 0.0
                    finished[wid] = t
            elif kind == _YIELDED:
                run = running.get(wid)
                if run is not None and run.version == version:
                    # checkpoint taken at the yield: progress so far is kept
                    remaining[wid] = max(0.0, remaining[wid] - (t - run.started))
                    remaining[wid] += resume_overhead_s
                    release(wid)
                    pending[wid] = request(job)
        snap = Snapshot(
            spec,
            nodes,
            tuple(
                replace(
                    r.workload,
                    yielding=w in yielding,
                    preempted_at=history.get(w, ()),
                )
                for w, r in running.items()
            ),
            t,
        )
        result = schedule(list(pending.values()), snap, policy, reservations)
        reservations = dict(result.reservations)
        cycles += 1
        decisions += len(result.decisions)
        for d in result.decisions:
            if trace and last.get(d.workload_id) != (d.outcome.value, d.reason.name):
                last[d.workload_id] = (d.outcome.value, d.reason.name)
                decisions_log.append({"t": t, "cycle": cycles, **d.to_dict()})
            if d.outcome is AdmissionOutcome.ADMITTED:
                assert d.placement is not None
                req = pending.pop(d.workload_id)
                nodes = apply_placement(nodes, d.placement)
                if any(n.free_gpus < 0 or n.free_cpus < -1e-9 for n in nodes):
                    violations.append(f"t={t:.0f}: {d.workload_id} over-commits a node")
                seq += 1
                running[d.workload_id] = _Run(
                    RunningWorkload(
                        d.workload_id,
                        req.namespace,
                        req.priority,
                        d.placement,
                        started_at=t,
                        deadline_at=req.deadline_at,
                        expected_duration_s=remaining[d.workload_id],
                    ),
                    t,
                    seq,
                )
                first_start.setdefault(d.workload_id, t)
                heapq.heappush(
                    events, (t + remaining[d.workload_id], seq, _FINISH, d.workload_id, seq)
                )
            elif d.outcome is AdmissionOutcome.PREEMPT:
                for v in d.victims:
                    if v in running and v not in yielding:
                        yielding.add(v)
                        preemptions += 1
                        history[v] = (*history.get(v, ()), t)
                        caused[d.workload_id] = caused.get(d.workload_id, 0) + 1
                        heapq.heappush(
                            events, (t + yield_latency_s, seq, _YIELDED, v, running[v].version)
                        )
            elif d.outcome is AdmissionOutcome.REJECTED:
                pending.pop(d.workload_id)
                rejected.append(d.workload_id)
        if policy.quotas:
            for ns, q in spec.namespaces.items():
                g = sum(r.workload.gpus for r in running.values() if r.workload.namespace == ns)
                cap = q.gpus if not q.can_borrow else q.gpus + (q.borrowing_limit_gpus or 10**9)
                if g > cap:
                    violations.append(f"t={t:.0f}: namespace {ns} holds {g} > {cap} GPUs")
        cur_used = sum(n.used_gpus for n in nodes)
        cur_queued = bool(pending)
        cur_stranded = stranded_gpus(nodes, [r.shape for r in pending.values()])

    for wid in list(running):
        release(wid)  # close open occupancy intervals
    prod = [j for j in jobs if j.priority is PriorityClass.PRODUCTION]
    waits = [first_start[j.job_id] - j.submit_at for j in prod if j.job_id in first_start]
    per_prod = [caused.get(j.job_id, 0) for j in prod]
    worst_hour = 0
    for times in history.values():
        for i, t0 in enumerate(times):
            worst_hour = max(worst_hour, sum(1 for x in times[i:] if x < t0 + 3600))
    misses = sum(
        1
        for j in prod
        if j.deadline_at is not None and finished.get(j.job_id, float("inf")) > j.deadline_at
    )
    backfill_ends = [
        finished[j.job_id]
        for j in jobs
        if j.priority is PriorityClass.BACKFILL and j.job_id in finished
    ]
    makespan = max(finished.values(), default=0.0)
    per_node = {nid: (v / queued_time if queued_time else 0.0) for nid, v in stranded_int.items()}
    return SimResult(
        policy=policy.name,
        jobs=len(jobs),
        makespan_h=makespan / 3600,
        util_while_queued=used_queued / (total_gpus * queued_time) if queued_time else 1.0,
        util_overall=used_all / (total_gpus * makespan) if makespan else 0.0,
        queued_hours=queued_time / 3600,
        stranded_gpus_per_node={k: round(v, 3) for k, v in per_node.items()},
        stranded_gpus_mean=sum(per_node.values()) / max(1, len(per_node)),
        production_jobs=len(prod),
        production_wait_mean_min=(sum(waits) / len(waits) / 60) if waits else 0.0,
        production_wait_max_min=max(waits, default=0.0) / 60,
        deadline_misses=misses,
        preemptions=preemptions,
        rejected=rejected,
        cycles=cycles,
        decisions=decisions,
        wall_s=time.perf_counter() - wall0,
        backfill_done_h=max(backfill_ends) / 3600 if backfill_ends else None,
        preemptions_per_production_max=max(per_prod, default=0),
        preemptions_per_production_mean=sum(per_prod) / len(per_prod) if per_prod else 0.0,
        max_preemptions_per_unit_hour=worst_hour,
        production_waits_min={
            j.job_id: (first_start[j.job_id] - j.submit_at) / 60
            for j in prod
            if j.job_id in first_start
        },
        production_lateness_min={
            j.job_id: (finished.get(j.job_id, float("inf")) - j.deadline_at) / 60
            for j in prod
            if j.deadline_at is not None
        },
        violations=violations,
        trace=decisions_log,
        occupancy=occupancy,
    )
