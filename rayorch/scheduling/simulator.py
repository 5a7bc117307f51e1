"""A virtual-clock replay of a workload through the same ``schedule``/``admit``/``place`` code
the live controller runs.

Events: arrivals, completions, and the end of a yield (a preempted unit has checkpointed and
released; its progress is kept and it goes back to the queue with the rest of its run time plus
a restore overhead). After every batch of events at one instant, one scheduling cycle runs.

Metrics (integrated over virtual time):

* ``util_while_queued`` - used GPUs / all GPUs, over the time some request was queued;
* ``stranded_gpus_per_node`` - mean free GPUs per node that no queued shape could use,
  over the same time;
* production queue wait (first start - submit) and deadline misses.

Pure: no Ray imports.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rayorch.scheduling.admission import RAYORCH, AdmissionOutcome, AdmissionPolicy
from rayorch.scheduling.cycle import schedule
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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
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

    def release(wid: str) -> None:
        nonlocal nodes
        run = running.pop(wid)
        nodes = release_placement(nodes, run.workload.placement)
        yielding.discard(wid)

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
                pending[wid] = Request(
                    wid,
                    job.namespace,
                    job.shape,
                    job.priority,
                    job.allow_reshape,
                    submitted_at=job.submit_at,
                )
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
                    pending[wid] = Request(
                        wid,
                        job.namespace,
                        job.shape,
                        job.priority,
                        job.allow_reshape,
                        submitted_at=job.submit_at,
                    )
        snap = Snapshot(
            spec,
            nodes,
            tuple(
                replace(r.workload, yielding=True) if w in yielding else r.workload
                for w, r in running.items()
            ),
            t,
        )
        result = schedule(list(pending.values()), snap, policy)
        cycles += 1
        decisions += len(result.decisions)
        for d in result.decisions:
            if d.outcome is AdmissionOutcome.ADMITTED:
                assert d.placement is not None
                req = pending.pop(d.workload_id)
                nodes = apply_placement(nodes, d.placement)
                seq += 1
                running[d.workload_id] = _Run(
                    RunningWorkload(
                        d.workload_id, req.namespace, req.priority, d.placement, started_at=t
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
                        heapq.heappush(
                            events, (t + yield_latency_s, seq, _YIELDED, v, running[v].version)
                        )
            elif d.outcome is AdmissionOutcome.REJECTED:
                pending.pop(d.workload_id)
                rejected.append(d.workload_id)
        cur_used = sum(n.used_gpus for n in nodes)
        cur_queued = bool(pending)
        cur_stranded = stranded_gpus(nodes, [r.shape for r in pending.values()])

    prod = [j for j in jobs if j.priority is PriorityClass.PRODUCTION]
    waits = [first_start[j.job_id] - j.submit_at for j in prod if j.job_id in first_start]
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
    )
