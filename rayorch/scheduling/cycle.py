"""One scheduling cycle: the queue in order, each request through ``admit``, decisions applied
to the snapshot in turn so later requests see earlier admissions.

Reservations (nomination): a request that preempts is nominated a placement; until its victims
have released, the cycle *holds* the nominated capacity. On each node the hold is what the
placement needs there minus what its still-running victims occupy, so capacity the victims
free is never given to anyone else in the meantime, and their yielding capacity is not counted
on by anyone else. When the victims are gone the preemptor is admitted on exactly the
nominated placement. A reservation whose victims are gone but whose placement no longer fits
(a node left) is dropped and the request decided afresh.

The live controller and the simulator both call :func:`schedule`; neither decides anything
itself. Pure: no Ray imports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rayorch.scheduling.admission import (
    RAYORCH,
    Admission,
    AdmissionOutcome,
    AdmissionPolicy,
    QueueOrder,
    Reason,
    _quota_check,
    admit,
)
from rayorch.scheduling.model import (
    NodeState,
    PlacementPlan,
    Request,
    RunningWorkload,
    Snapshot,
    apply_placement,
)

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Reservation:
    """A preemptor's nominated placement and the victims being drained for it."""

    workload_id: str
    placement: PlacementPlan
    victims: tuple[str, ...]
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload_id": self.workload_id,
            "placement": self.placement.to_dict(),
            "victims": list(self.victims),
            "since": self.since,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reservation:
        return cls(
            d["workload_id"],
            PlacementPlan.from_dict(d["placement"]),
            tuple(d["victims"]),
            d.get("since", 0.0),
        )


@dataclass(frozen=True, slots=True)
class CycleResult:
    decisions: tuple[Admission, ...]  # one per pending request, in queue order
    snapshot: Snapshot  # after admissions (victims marked yielding, still holding capacity)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)

    def by_outcome(self, outcome: AdmissionOutcome) -> list[Admission]:
        return [d for d in self.decisions if d.outcome is outcome]


def queue_order(
    pending: Sequence[Request], policy: AdmissionPolicy, now: float = 0.0
) -> list[Request]:
    """Priority class first; within it the least deadline slack, then submission time."""
    if policy.order is QueueOrder.FIFO:
        return sorted(pending, key=lambda r: (r.submitted_at, r.workload_id))
    return sorted(
        pending,
        key=lambda r: (-r.priority.rank, r.slack(now), r.submitted_at, r.workload_id),
    )


def _holds(res: Reservation, snap: Snapshot) -> dict[str, tuple[int, float]]:
    """Per node, the free capacity this reservation keeps from everyone else now."""
    victims = set(res.victims)
    occupied: dict[str, tuple[int, float]] = {}
    for w in snap.running:
        if w.workload_id in victims:
            for b in w.placement.bundles:
                g, c = occupied.get(b.node_id, (0, 0.0))
                occupied[b.node_id] = (g + b.gpus, c + b.cpus)
    need: dict[str, tuple[int, float]] = {}
    for b in res.placement.bundles:
        g, c = need.get(b.node_id, (0, 0.0))
        need[b.node_id] = (g + b.gpus, c + b.cpus)
    out = {}
    free = {n.node_id: n for n in snap.nodes}
    for nid, (g, c) in need.items():
        n = free.get(nid)
        if n is None:
            continue
        og, oc = occupied.get(nid, (0, 0.0))
        out[nid] = (
            min(n.free_gpus, max(0, g - og)),
            min(n.free_cpus, max(0.0, c - oc)),
        )
    return out


def _shift(nodes: tuple[NodeState, ...], delta: Mapping[str, tuple[int, float]], sign: int):
    return tuple(
        replace(
            n,
            free_gpus=n.free_gpus + sign * delta[n.node_id][0],
            free_cpus=n.free_cpus + sign * delta[n.node_id][1],
        )
        if n.node_id in delta
        else n
        for n in nodes
    )


def _fits(plan: PlacementPlan, nodes: Sequence[NodeState]) -> bool:
    by_id = {n.node_id: n for n in nodes}
    need: dict[str, tuple[int, float]] = {}
    for b in plan.bundles:
        g, c = need.get(b.node_id, (0, 0.0))
        need[b.node_id] = (g + b.gpus, c + b.cpus)
    for nid, (g, c) in need.items():
        n = by_id.get(nid)
        if n is None or n.free_gpus < g or n.free_cpus + _EPS < c:
            return False
    return True


def _mark(snap: Snapshot, res: Reservation) -> Snapshot:
    victims = set(res.victims)
    running = tuple(
        replace(w, yielding=True, reserved_for=res.workload_id) if w.workload_id in victims else w
        for w in snap.running
    )
    return Snapshot(snap.spec, snap.nodes, running, snap.now)


def schedule(
    pending: Sequence[Request],
    snapshot: Snapshot,
    policy: AdmissionPolicy = RAYORCH,
    reservations: Mapping[str, Reservation] | None = None,
) -> CycleResult:
    """Decide every pending request once, in queue order."""
    snap = snapshot
    pending_ids = {r.workload_id for r in pending}
    running_ids = {w.workload_id for w in snap.running}
    active: dict[str, Reservation] = {}
    for wid, res in (reservations or {}).items():
        if wid in pending_ids and policy.reserve:
            active[wid] = res
    held: dict[str, dict[str, tuple[int, float]]] = {}
    for res in active.values():
        snap = _mark(snap, res)
        h = _holds(res, snap)
        held[res.workload_id] = h
        snap = Snapshot(snap.spec, _shift(snap.nodes, h, -1), snap.running, snap.now)
    out: list[Admission] = []
    kept: dict[str, Reservation] = {}
    # Identical requests after one that queued see the same snapshot: reuse the decision.
    memo: dict[tuple, Admission] = {}
    blocked = False
    for req in queue_order(pending, policy, snap.now):
        wid = req.workload_id
        if blocked:
            out.append(Admission(wid, AdmissionOutcome.QUEUED, Reason.BLOCKED_BEHIND_HEAD))
            continue
        res = active.get(wid)
        if res is not None:
            snap = Snapshot(snap.spec, _shift(snap.nodes, held[wid], +1), snap.running, snap.now)
            a = _decide_reserved(req, res, snap, policy, running_ids)
            if a is None:  # victims gone, placement lost: decide afresh
                a = admit(req, snap, policy)
            elif a.outcome is AdmissionOutcome.QUEUED:
                kept[wid] = res
                snap = Snapshot(
                    snap.spec, _shift(snap.nodes, held[wid], -1), snap.running, snap.now
                )
        else:
            key = (req.namespace, req.priority, req.shape, req.allow_reshape, req.spread)
            prior = memo.get(key)
            if prior is not None and req.deadline_at is None:
                out.append(replace(prior, workload_id=wid))
                continue
            a = admit(req, snap, policy)
            if a.outcome is AdmissionOutcome.QUEUED:
                memo[key] = a
        out.append(a)
        if a.outcome is AdmissionOutcome.ADMITTED:
            assert a.placement is not None
            w = RunningWorkload(
                wid,
                req.namespace,
                req.priority,
                a.placement,
                started_at=snap.now,
                deadline_at=req.deadline_at,
                expected_duration_s=req.expected_duration_s,
            )
            snap = Snapshot(
                snap.spec, apply_placement(snap.nodes, a.placement), (*snap.running, w), snap.now
            )
            memo.clear()
        elif a.outcome is AdmissionOutcome.PREEMPT:
            assert a.placement is not None
            new = Reservation(wid, a.placement, a.victims, snap.now)
            snap = _mark(snap, new)
            if policy.reserve:
                kept[wid] = new
                h = _holds(new, snap)
                snap = Snapshot(snap.spec, _shift(snap.nodes, h, -1), snap.running, snap.now)
            memo.clear()
        elif a.outcome is AdmissionOutcome.QUEUED and policy.head_of_line_blocking:
            blocked = True
    return CycleResult(tuple(out), snap, kept)


def _decide_reserved(
    req: Request,
    res: Reservation,
    snap: Snapshot,
    policy: AdmissionPolicy,
    running_ids: set[str],
) -> Admission | None:
    """ADMITTED on the nominated placement once it fits; QUEUED (RESERVED) while victims
    drain; None when the victims are gone and the placement no longer fits."""
    wid = req.workload_id
    quota_why = None
    if policy.quotas:
        q = snap.spec.quota(req.namespace)
        if q is None:
            return None
        quota_why, borrowed, _ = _quota_check(req, snap, q)
    else:
        borrowed = False
    if quota_why is None and _fits(res.placement, snap.nodes):
        return Admission(
            wid,
            AdmissionOutcome.ADMITTED,
            Reason.BORROWING if borrowed else Reason.FITS,
            "on its nominated placement",
            placement=res.placement,
            borrowed=borrowed,
        )
    draining = sorted(v for v in res.victims if v in running_ids)
    if draining:
        return Admission(
            wid,
            AdmissionOutcome.QUEUED,
            Reason.RESERVED,
            f"holding {', '.join(f'{k}:{v}' for k, v in res.placement.gpus_by_node().items())}"
            f" while {', '.join(draining)} release",
            placement=res.placement,
            victims=tuple(draining),
        )
    return None
