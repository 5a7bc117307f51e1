"""Preemption: who may yield for a request, and the placement the request is nominated.

A preempting request is *nominated* a target placement (as Kueue nominates a flavor) and the
victims are chosen to make exactly that placement fit: on the fewest nodes first (a job that a
single node could hold is only ever nominated one node), and on that node the cheapest victims
first. The cycle then *reserves* the nominated capacity (``cycle.Reservation``): what the
victims free is not handed to anyone else while they drain.

Who may be a victim (never work started in this very cycle, never work already preempted
``max_preemptions_per_hour`` times in the last hour, never work already yielding):

* lower-priority work of the same namespace;
* borrowed work (beyond its own quota) of another namespace with lower priority;
* borrowed work of another namespace of any priority, when the requester is inside its own
  nominal quota (the owner reclaims what it lent);
* **defragmenting moves**: lower-priority work of another namespace that runs *inside* its
  quota, when the requester is inside its own nominal quota and no node has room although the
  quota is free. Allowed only when every such victim can be placed again, as it is, on what is
  left after the nominated placement: it loses one yield, not its guarantee.

Cheapest first: lowest priority, borrowed before defragmenting moves, most deadline slack,
latest started (least progress lost), fewest GPUs. Pure: no Ray imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rayorch.scheduling.model import (
    NodeState,
    PlacementPlan,
    Request,
    RunningWorkload,
    Snapshot,
    apply_placement,
)
from rayorch.scheduling.placement import Packing, place, place_shape
from rayorch.scheduling.shapes import JobShape

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class Candidate:
    workload: RunningWorkload
    defrag: bool  # a move of work inside its own quota (must be re-placeable)
    cost: tuple

    @property
    def workload_id(self) -> str:
        return self.workload.workload_id


@dataclass(frozen=True, slots=True)
class Nomination:
    placement: PlacementPlan
    victims: tuple[str, ...]
    defrag_moves: tuple[str, ...]
    borrowed: bool


def candidates(
    req: Request,
    snap: Snapshot,
    max_per_hour: int,
    defrag: bool = True,
) -> list[Candidate]:
    """Work that may be asked to yield for ``req``, cheapest first."""
    borrowed = snap.borrowed_ids()
    q = snap.spec.quota(req.namespace)
    g, c, _ = snap.usage(req.namespace)
    in_quota = (
        q is not None
        and g + req.shape.total_gpus <= q.gpus
        and c + req.shape.total_cpus <= q.cpus + 1e-9
    )
    out: list[Candidate] = []
    since = snap.now - HOUR_S
    for w in snap.running:
        if w.yielding or w.started_at >= snap.now > 0:
            continue
        if w.preemptions_since(since) >= max_per_hour:
            continue
        lower = w.priority.rank < req.priority.rank
        is_borrowed = w.workload_id in borrowed
        move = False
        if w.namespace == req.namespace:
            ok = lower
        elif is_borrowed:
            ok = lower or in_quota
        else:
            ok = move = defrag and lower and in_quota
        if ok:
            cost = (
                w.priority.rank,
                move,
                not is_borrowed,
                -min(w.slack(snap.now), 1e18),
                -w.started_at,
                w.gpus,
                w.workload_id,
            )
            out.append(Candidate(w, move, cost))
    out.sort(key=lambda cand: cand.cost)
    return out


def _replaceable(
    moves: Sequence[RunningWorkload], nodes: Sequence[NodeState], packing: Packing
) -> bool:
    """Can every moved unit run again, as it is, on ``nodes`` (one after another)?"""
    free = tuple(nodes)
    for w in sorted(moves, key=lambda w: -w.gpus):
        plan = place_shape(w.placement.shape, free, packing)
        if plan is None:
            return False
        free = apply_placement(free, plan)
    return True


Check = Callable[[Snapshot], tuple[object | None, bool]]


def nominate(
    req: Request,
    base: Snapshot,
    cands: Sequence[Candidate],
    quota_ok: Check,
    packing: Packing,
    reshape: bool,
) -> Nomination | None:
    """The cheapest (fewest nodes, then fewest/cheapest victims) placement preemption can make.

    ``base`` is the snapshot with yielding work already gone; ``quota_ok(snapshot)`` returns
    (blocking reason or None, borrowed?) for the request's namespace quota.
    """
    shapes: list[JobShape] = [req.shape]
    if reshape and req.allow_reshape:
        shapes += req.shape.reshapes()
    by_id = {c.workload_id: c for c in cands}
    best: tuple[tuple, Nomination] | None = None
    for shape in shapes:
        if not req.spread:
            for node in base.nodes:
                nom = _on_one_node(req, shape, node, base, cands, quota_ok, packing)
                if nom is not None:
                    key = (1, *_cost(nom, by_id))
                    if best is None or key < best[0]:
                        best = (key, nom)
        if best is not None:
            break
    if best is not None:
        return best[1]
    return _greedy(req, base, cands, quota_ok, packing, reshape)


def _cost(nom: Nomination, by_id: dict[str, Candidate]) -> tuple:
    gpus = sum(by_id[v].workload.gpus for v in nom.victims)
    worst = max((by_id[v].cost for v in nom.victims), default=())
    return (len(nom.defrag_moves), len(nom.victims), gpus, worst)


def _finish(
    req: Request,
    plan: PlacementPlan,
    chosen: list[Candidate],
    base: Snapshot,
    quota_ok: Check,
    packing: Packing,
    cands: Sequence[Candidate] = (),
) -> Nomination | None:
    """Check the quota and that moved work can run again; to make room for moved work,
    evict further (non-moved) candidates elsewhere, cheapest first."""
    chosen = list(chosen)
    moves = [c.workload for c in chosen if c.defrag]
    if moves:
        extra = [c for c in cands if not c.defrag and c not in chosen]
        while True:
            after = base.without(c.workload_id for c in chosen)
            if _replaceable(moves, apply_placement(after.nodes, plan), packing):
                break
            if not extra:
                return None
            chosen.append(extra.pop(0))
    after = base.without(c.workload_id for c in chosen)
    why, borrowed = quota_ok(after)
    if why is not None:
        return None
    return Nomination(
        plan,
        tuple(c.workload_id for c in chosen),
        tuple(w.workload_id for w in moves),
        borrowed,
    )


def _on_one_node(
    req: Request,
    shape: JobShape,
    node: NodeState,
    base: Snapshot,
    cands: Sequence[Candidate],
    quota_ok: Check,
    packing: Packing,
) -> Nomination | None:
    """Victims on ``node`` (cheapest first) until ``shape`` fits there as one group."""
    if shape.total_gpus > node.shape.gpus or shape.total_cpus > node.shape.cpus + 1e-9:
        return None
    if place_shape(shape, [NodeState.empty(node.node_id, node.shape)], packing) is None:
        return None  # accelerator mismatch
    here = [c for c in cands if node.node_id in c.workload.placement.gpus_by_node()]
    chosen: list[Candidate] = []
    free_g, free_c = node.free_gpus, node.free_cpus
    for cand in [None, *here]:
        if cand is not None:
            chosen.append(cand)
            for b in cand.workload.placement.bundles:
                if b.node_id == node.node_id:
                    free_g, free_c = free_g + b.gpus, free_c + b.cpus
        if free_g < shape.total_gpus or free_c + 1e-9 < shape.total_cpus:
            continue
        freed = NodeState(node.node_id, node.shape, free_g, free_c)
        plan = place_shape(shape, [freed], packing)
        if plan is None:
            continue
        if shape != req.shape:
            plan = PlacementPlan(plan.shape, plan.strategy, plan.bundles, req.shape)
        if not chosen:
            return None  # fits without preemption: not a nomination (admit handles it)
        return _finish(req, plan, _pruned(chosen, node, shape), base, quota_ok, packing, cands)
    return None


def _pruned(chosen: list[Candidate], node: NodeState, shape: JobShape) -> list[Candidate]:
    """Drop victims that turned out unnecessary on ``node``, most expensive first."""
    keep = list(chosen)
    for cand in sorted(chosen, key=lambda c: c.cost, reverse=True):
        trial = [c for c in keep if c is not cand]
        g = node.free_gpus + sum(
            b.gpus for c in trial for b in c.workload.placement.bundles if b.node_id == node.node_id
        )
        cpu = node.free_cpus + sum(
            b.cpus for c in trial for b in c.workload.placement.bundles if b.node_id == node.node_id
        )
        if g >= shape.total_gpus and cpu + 1e-9 >= shape.total_cpus:
            keep = trial
    return keep


def _greedy(
    req: Request,
    base: Snapshot,
    cands: Sequence[Candidate],
    quota_ok: Check,
    packing: Packing,
    reshape: bool,
) -> Nomination | None:
    """Jobs no single node can hold: add victims cheapest first until the job fits, prune."""

    def fits(chosen: list[Candidate]) -> PlacementPlan | None:
        after = base.without(c.workload_id for c in chosen)
        if quota_ok(after)[0] is not None:
            return None
        return place(req, after.nodes, packing, reshape=reshape)

    chosen: list[Candidate] = []
    plan = None
    for cand in cands:
        chosen.append(cand)
        plan = fits(chosen)
        if plan is not None:
            break
    if plan is None:
        return None
    for cand in list(reversed(chosen[:-1])):
        trial = [c for c in chosen if c is not cand]
        p = fits(trial)
        if p is not None:
            chosen, plan = trial, p
    return _finish(req, plan, chosen, base, quota_ok, packing, cands)
