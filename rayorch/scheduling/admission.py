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

Who may be preempted, and which placement the preemptor is nominated: ``preemption``. Work
inside its nominal quota is never *evicted* by another namespace; it may only be *moved*
(defragmenting preemption) when it can run again elsewhere at once. The cycle (``cycle``)
reserves a preemptor's nominated placement until its victims have released.

Pure: no Ray imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from rayorch.scheduling.model import PlacementPlan, Request, Snapshot
from rayorch.scheduling.placement import Packing, never_fits, place
from rayorch.scheduling.preemption import candidates, nominate
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
    DEFRAGMENTING = "quota free but no node has room: lower-priority work moves to other nodes"
    RESERVED = "nominated placement being drained for this request"


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
    defragment: bool = True  # may move lower-priority in-quota work to make a node whole
    reserve: bool = True  # hold what preemption frees for the preemptor (nomination)
    max_preemptions_per_hour: int = 2  # per unit; beyond it a unit is not a victim
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
    # Yielding work reserved for another preemptor is spoken for: nobody else counts on it.
    yielding = [w.workload_id for w in snap.running if w.yielding and w.reserved_for is None]
    base = snap.without(yielding)
    if yielding and _try(req, base, policy)[0] is None:
        return Admission(
            wid,
            AdmissionOutcome.QUEUED,
            Reason.WAITING_FOR_YIELD,
            f"waiting for {', '.join(sorted(yielding))} to release",
        )
    cands = candidates(req, base, policy.max_preemptions_per_hour, policy.defragment)

    def quota_ok(s: Snapshot) -> tuple[Reason | None, bool]:
        if not policy.quotas:
            return None, False
        why, borrowed, _ = _quota_check(req, s, snap.spec.namespaces[req.namespace])
        return why, borrowed

    nom = nominate(req, base, cands, quota_ok, policy.packing, policy.reshape)
    if nom is None:
        return queued
    moves = f" ({', '.join(nom.defrag_moves)} move to other nodes)" if nom.defrag_moves else ""
    return Admission(
        wid,
        AdmissionOutcome.PREEMPT,
        Reason.DEFRAGMENTING if nom.defrag_moves else Reason.PREEMPTING,
        f"{', '.join(nom.victims)} must yield{moves}; nominated "
        + ", ".join(f"{k}:{v}" for k, v in nom.placement.gpus_by_node().items()),
        placement=nom.placement,
        victims=nom.victims,
        borrowed=nom.borrowed,
    )
