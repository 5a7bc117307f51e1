"""Admission: a pure decision for one request against a snapshot.

``admit(request, snapshot) -> Admission``. A unit is admitted only if its namespace quota allows
it **and** its bundles fit on actual free capacity per node (never a cluster-wide sum).

Outcomes (ordered like Kueue's fit modes, with a reason each):

* ``ADMITTED``  - fits now; ``placement`` says where. ``borrowed`` when beyond nominal quota.
* ``QUEUED``    - cannot run now (quota, concurrency, no node holds it, or waiting for work
  that was asked to yield); retried every scheduling cycle.
* ``PREEMPT``   - fits once ``victims`` yield (checkpoint, release); the controller asks them.
* ``REJECTED``  - can never run (unknown namespace, a shape no node can ever hold, or bigger
  than a quota that may not borrow). Said at plan time, not after hours in a queue.

Who may be preempted (a namespace inside its nominal quota is never preempted by another):

* lower-priority work of the same namespace;
* borrowed work (beyond its own quota) of another namespace with lower priority;
* borrowed work of another namespace of any priority, when the requester is inside its own
  nominal quota (the owner reclaims what it lent).

Pure: no Ray imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from rayorch.scheduling.model import PlacementPlan, Request, RunningWorkload, Snapshot
from rayorch.scheduling.placement import Packing, never_fits, place
from rayorch.scheduling.quota import NamespaceQuota
from rayorch.scheduling.shapes import JobShape, NodeShape

_EPS = 1e-9


class AdmissionOutcome(str, enum.Enum):
    ADMITTED = "ADMITTED"
    QUEUED = "QUEUED"
    PREEMPT = "PREEMPT"
    REJECTED = "REJECTED"


class Reason(str, enum.Enum):
    FITS = "fits within quota"
    BORROWING = "borrows idle capacity beyond quota"
    UNKNOWN_NAMESPACE = "unknown namespace"
    NEVER_FITS = "shape can never fit the node inventory"
    EXCEEDS_QUOTA = "larger than the namespace quota, which may not borrow"
    QUOTA_EXHAUSTED = "namespace quota in use"
    BORROWING_LIMIT = "namespace borrowing limit reached"
    CONCURRENCY_LIMIT = "namespace max_concurrent_units reached"
    NO_CAPACITY = "no node has room for the bundles now"
    WAITING_FOR_YIELD = "waiting for preempted work to checkpoint and release"
    BLOCKED_BEHIND_HEAD = "strict FIFO: an earlier request is queued"
    PREEMPTING = "lower-priority or borrowed work must yield"


@dataclass(frozen=True, slots=True)
class Admission:
    workload_id: str
    outcome: AdmissionOutcome
    reason: Reason
    detail: str = ""
    placement: PlacementPlan | None = None
    victims: tuple[str, ...] = ()
    borrowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload_id": self.workload_id,
            "outcome": self.outcome.value,
            "reason": self.reason.name,
            "detail": self.detail or self.reason.value,
            "placement": self.placement.to_dict() if self.placement else None,
            "victims": list(self.victims),
            "borrowed": self.borrowed,
        }


class QueueOrder(str, enum.Enum):
    PRIORITY = "priority"  # priority class, then submission time
    FIFO = "fifo"  # submission time only


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """Switches that turn rayorch's policy into the baselines the simulator compares against."""

    name: str = "rayorch"
    quotas: bool = True
    preemption: bool = True
    packing: Packing = Packing.BEST_FIT
    reshape: bool = True  # honour request.allow_reshape
    order: QueueOrder = QueueOrder.PRIORITY
    head_of_line_blocking: bool = False  # strict FIFO: nothing passes a queued request
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


RAYORCH = AdmissionPolicy()
FIRST_FIT = AdmissionPolicy(
    "first-fit", quotas=False, preemption=False, packing=Packing.FIRST_FIT, reshape=False
)
FIFO_NO_QUOTA = AdmissionPolicy(
    "fifo",
    quotas=False,
    preemption=False,
    packing=Packing.FIRST_FIT,
    reshape=False,
    order=QueueOrder.FIFO,
    head_of_line_blocking=True,
)
POLICIES = {p.name: p for p in (RAYORCH, FIRST_FIT, FIFO_NO_QUOTA)}


@lru_cache(maxsize=4096)
def _never_fits(
    shape: JobShape, allow_reshape: bool, spread: bool, nodes: tuple[NodeShape, ...]
) -> str | None:
    return never_fits(
        Request("probe", "probe", shape, allow_reshape=allow_reshape, spread=spread), nodes
    )


def _quota_check(
    req: Request, snap: Snapshot, q: NamespaceQuota
) -> tuple[Reason | None, bool, str]:
    """(blocking reason or None, borrowed?, detail) for the namespace's quota alone."""
    g, c, n = snap.usage(req.namespace)
    if n >= q.max_concurrent_units:
        return Reason.CONCURRENCY_LIMIT, False, f"{n}/{q.max_concurrent_units} units running"
    over_g = g + req.shape.total_gpus - q.gpus
    over_c = c + req.shape.total_cpus - q.cpus
    if over_g <= 0 and over_c <= _EPS:
        return None, False, ""
    if not q.can_borrow:
        return (
            Reason.QUOTA_EXHAUSTED,
            False,
            f"{g}/{q.gpus} GPUs, {c:g}/{q.cpus:g} CPUs in use; +{req.shape.total_gpus} GPUs "
            "exceeds the quota and can_borrow is off",
        )
    if q.borrowing_limit_gpus is not None and over_g > q.borrowing_limit_gpus:
        return (
            Reason.BORROWING_LIMIT,
            True,
            f"would borrow {over_g} GPUs; borrowing_limit_gpus={q.borrowing_limit_gpus}",
        )
    return None, True, ""


def _try(
    req: Request, snap: Snapshot, policy: AdmissionPolicy
) -> tuple[Reason | None, PlacementPlan | None, bool, str]:
    borrowed = False
    if policy.quotas:
        q = snap.spec.namespaces[req.namespace]
        why, borrowed, detail = _quota_check(req, snap, q)
        if why is not None:
            return why, None, borrowed, detail
    plan = place(req, snap.nodes, policy.packing, reshape=policy.reshape)
    if plan is None:
        free = ", ".join(f"{n.node_id}:{n.free_gpus}" for n in snap.nodes)
        return Reason.NO_CAPACITY, None, borrowed, f"{req.shape} does not fit; free GPUs {free}"
    return None, plan, borrowed, ""


def _candidates(req: Request, snap: Snapshot) -> list[RunningWorkload]:
    """Work that may be asked to yield for ``req``, cheapest to preempt first."""
    borrowed = snap.borrowed_ids()
    q = snap.spec.quota(req.namespace)
    g, _, _ = snap.usage(req.namespace)
    requester_in_quota = q is not None and g + req.shape.total_gpus <= q.gpus
    out = []
    for w in snap.running:
        if w.yielding:
            continue
        lower = w.priority.rank < req.priority.rank
        if w.namespace == req.namespace:
            ok = lower
        else:
            ok = w.workload_id in borrowed and (lower or requester_in_quota)
        if ok:
            out.append(w)
    # lowest priority, borrowed first, latest started (least progress lost), then id
    out.sort(
        key=lambda w: (w.priority.rank, w.workload_id not in borrowed, -w.started_at, w.workload_id)
    )
    return out


def admit(request: Request, snapshot: Snapshot, policy: AdmissionPolicy = RAYORCH) -> Admission:
    """Decide what happens to ``request`` given ``snapshot``. Pure and deterministic."""
    req, snap, wid = request, snapshot, request.workload_id
    if policy.quotas and snap.spec.quota(req.namespace) is None:
        return Admission(
            wid,
            AdmissionOutcome.REJECTED,
            Reason.UNKNOWN_NAMESPACE,
            f"namespace {req.namespace!r} is not in the cluster config; declared: "
            f"{', '.join(sorted(snap.spec.namespaces))}",
        )
    why = _never_fits(
        req.shape,
        req.allow_reshape and policy.reshape,
        req.spread,
        tuple(n.shape for n in snap.nodes),
    )
    if why is not None:
        return Admission(wid, AdmissionOutcome.REJECTED, Reason.NEVER_FITS, why)
    if policy.quotas:
        q = snap.spec.namespaces[req.namespace]
        cap = (
            q.gpus
            + (q.borrowing_limit_gpus if q.borrowing_limit_gpus is not None else 10**9)
            * q.can_borrow
        )
        if req.shape.total_gpus > cap or (not q.can_borrow and req.shape.total_cpus > q.cpus):
            return Admission(
                wid,
                AdmissionOutcome.REJECTED,
                Reason.EXCEEDS_QUOTA,
                f"{req.shape} needs {req.shape.total_gpus} GPUs / "
                f"{req.shape.total_cpus:g} CPUs; namespace {req.namespace!r} has "
                f"{q.gpus} GPUs / {q.cpus:g} CPUs (raise the quota or can_borrow)",
            )
    reason, plan, borrowed, detail = _try(req, snap, policy)
    if reason is None:
        return Admission(
            wid,
            AdmissionOutcome.ADMITTED,
            Reason.BORROWING if borrowed else Reason.FITS,
            placement=plan,
            borrowed=borrowed,
        )
    queued = Admission(wid, AdmissionOutcome.QUEUED, reason, detail, borrowed=borrowed)
    if not policy.preemption:
        return queued
    yielding = [w.workload_id for w in snap.running if w.yielding]
    base = snap.without(yielding)
    if yielding and _try(req, base, policy)[0] is None:
        return Admission(
            wid,
            AdmissionOutcome.QUEUED,
            Reason.WAITING_FOR_YIELD,
            f"waiting for {', '.join(sorted(yielding))} to release",
        )
    cands = _candidates(req, snap)
    chosen: list[str] = []
    result = None
    for w in cands:
        chosen.append(w.workload_id)
        r = _try(req, base.without(chosen), policy)
        if r[0] is None:
            result = r
            break
    if result is None:
        return queued
    # drop victims that turned out unnecessary (latest added is needed by construction)
    for vid in list(reversed(chosen[:-1])):
        trial = [v for v in chosen if v != vid]
        r = _try(req, base.without(trial), policy)
        if r[0] is None:
            chosen, result = trial, r
    return Admission(
        wid,
        AdmissionOutcome.PREEMPT,
        Reason.PREEMPTING,
        f"{', '.join(chosen)} must yield",
        placement=result[1],
        victims=tuple(chosen),
        borrowed=result[2],
    )
