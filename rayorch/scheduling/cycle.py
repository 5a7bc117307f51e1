"""One scheduling cycle: the queue in order, each request through ``admit``, decisions applied
to the snapshot in turn so later requests see earlier admissions.

The live controller and the simulator both call :func:`schedule`; neither decides anything
itself. Pure: no Ray imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from rayorch.scheduling.admission import (
    RAYORCH,
    Admission,
    AdmissionOutcome,
    AdmissionPolicy,
    QueueOrder,
    Reason,
    admit,
)
from rayorch.scheduling.model import Request, RunningWorkload, Snapshot, apply_placement


@dataclass(frozen=True, slots=True)
class CycleResult:
    decisions: tuple[Admission, ...]  # one per pending request, in queue order
    snapshot: Snapshot  # after admissions (victims marked yielding, still holding capacity)

    def by_outcome(self, outcome: AdmissionOutcome) -> list[Admission]:
        return [d for d in self.decisions if d.outcome is outcome]


def queue_order(pending: Sequence[Request], policy: AdmissionPolicy) -> list[Request]:
    if policy.order is QueueOrder.FIFO:
        return sorted(pending, key=lambda r: (r.submitted_at, r.workload_id))
    return sorted(pending, key=lambda r: (-r.priority.rank, r.submitted_at, r.workload_id))


def schedule(
    pending: Sequence[Request], snapshot: Snapshot, policy: AdmissionPolicy = RAYORCH
) -> CycleResult:
    """Decide every pending request once, in queue order."""
    snap = snapshot
    out: list[Admission] = []
    # Identical requests after one that queued see the same snapshot: reuse the decision.
    memo: dict[tuple, Admission] = {}
    blocked = False
    for req in queue_order(pending, policy):
        if blocked:
            out.append(
                Admission(req.workload_id, AdmissionOutcome.QUEUED, Reason.BLOCKED_BEHIND_HEAD)
            )
            continue
        key = (req.namespace, req.priority, req.shape, req.allow_reshape, req.spread)
        prior = memo.get(key)
        if prior is not None:
            out.append(replace(prior, workload_id=req.workload_id))
            continue
        a = admit(req, snap, policy)
        out.append(a)
        if a.outcome is AdmissionOutcome.ADMITTED:
            assert a.placement is not None
            w = RunningWorkload(
                req.workload_id, req.namespace, req.priority, a.placement, started_at=snap.now
            )
            snap = Snapshot(
                snap.spec, apply_placement(snap.nodes, a.placement), (*snap.running, w), snap.now
            )
            memo.clear()
        elif a.outcome is AdmissionOutcome.PREEMPT:
            victims = set(a.victims)
            snap = Snapshot(
                snap.spec,
                snap.nodes,
                tuple(
                    replace(w, yielding=True) if w.workload_id in victims else w
                    for w in snap.running
                ),
                snap.now,
            )
            memo.clear()
        elif a.outcome is AdmissionOutcome.QUEUED:
            memo[key] = a
            if policy.head_of_line_blocking:
                blocked = True
    return CycleResult(tuple(out), snap)
