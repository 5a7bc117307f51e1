"""Placement planning: which node each bundle of a job lands on, and the Ray strategy.

Best fit keeps whole nodes free for large shapes: a job goes on one node when it can
(``STRICT_PACK``), on the node whose free GPUs it fills most tightly; otherwise each bundle goes,
largest first, to the tightest node that still holds it (``PACK``). First fit, the naive
baseline the simulator compares against, takes the first node that holds each bundle.
Pure: no Ray imports.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from rayorch.scheduling.model import (
    BundlePlacement,
    NodeState,
    PlacementPlan,
    Request,
    Strategy,
)
from rayorch.scheduling.shapes import JobShape, NodeShape

_EPS = 1e-9


class Packing(str, enum.Enum):
    BEST_FIT = "best-fit"
    FIRST_FIT = "first-fit"


def _accepts(node_shape: NodeShape, shape: JobShape) -> bool:
    return shape.accelerator is None or node_shape.accelerator == shape.accelerator


def _holds(n: NodeState, gpus: int, cpus: float) -> bool:
    return n.free_gpus >= gpus and n.free_cpus + _EPS >= cpus


def _pick(
    nodes: Sequence[NodeState],
    free: dict[str, tuple[int, float]],
    gpus: int,
    cpus: float,
    packing: Packing,
    avoid: set[str],
) -> str | None:
    best: str | None = None
    best_key: tuple[float, ...] | None = None
    for i, n in enumerate(nodes):
        fg, fc = free[n.node_id]
        if n.node_id in avoid or fg < gpus or fc + _EPS < cpus:
            continue
        if packing is Packing.FIRST_FIT:
            return n.node_id
        # tightest GPU fit, then tightest CPU fit, then node order (deterministic)
        key = (fg - gpus, fc - cpus, i)
        if best_key is None or key < best_key:
            best, best_key = n.node_id, key
    return best


def place_shape(
    shape: JobShape,
    nodes: Sequence[NodeState],
    packing: Packing = Packing.BEST_FIT,
    spread: bool = False,
) -> PlacementPlan | None:
    """Place ``shape`` exactly as asked on the free capacity of ``nodes``, or None."""
    cands = [n for n in nodes if _accepts(n.shape, shape)]
    g, c, b = shape.gpus_per_bundle, shape.cpus_per_bundle, shape.bundles
    if not spread and packing is Packing.BEST_FIT:
        one = _pick(
            cands,
            {n.node_id: (n.free_gpus, n.free_cpus) for n in cands},
            g * b,
            c * b,
            packing,
            set(),
        )
        if one is not None:
            return PlacementPlan(
                shape, Strategy.STRICT_PACK, tuple(BundlePlacement(one, g, c) for _ in range(b))
            )
    free = {n.node_id: (n.free_gpus, n.free_cpus) for n in cands}
    chosen: list[BundlePlacement] = []
    used: set[str] = set()
    for _ in range(b):
        nid = _pick(cands, free, g, c, packing, used if spread else set())
        if nid is None:
            return None
        fg, fc = free[nid]
        free[nid] = (fg - g, fc - c)
        used.add(nid)
        chosen.append(BundlePlacement(nid, g, c))
    if spread:
        strategy = Strategy.SPREAD
    else:
        strategy = Strategy.STRICT_PACK if len(used) == 1 else Strategy.PACK
    return PlacementPlan(shape, strategy, tuple(chosen))


def place(
    request: Request,
    nodes: Sequence[NodeState],
    packing: Packing = Packing.BEST_FIT,
    reshape: bool = True,
) -> PlacementPlan | None:
    """Place a request on free capacity; if it may be reshaped, try other splits in turn.

    Returns None when nothing fits now. The plan's ``reshaped_from`` says when the job was
    cut differently from what it asked (e.g. asked 1x8, runs 2x4).
    """
    plan = place_shape(request.shape, nodes, packing, request.spread)
    if plan is not None or not (reshape and request.allow_reshape):
        return plan
    for alt in request.shape.reshapes():
        plan = place_shape(alt, nodes, packing, request.spread)
        if plan is not None:
            return PlacementPlan(plan.shape, plan.strategy, plan.bundles, request.shape)
    return None


def never_fits(request: Request, node_shapes: Sequence[NodeShape]) -> str | None:
    """Why the request can never run on this inventory even when it is empty, or None.

    Said at plan time (16 GPUs per bundle on 8-GPU nodes), not after hours in a queue.
    """
    shape = request.shape
    cands = [s for s in node_shapes if _accepts(s, shape)]
    if not cands:
        return (
            f"no node has accelerator {shape.accelerator!r} "
            f"(nodes: {sorted({str(s) for s in node_shapes}) or 'none'})"
        )
    empty = [NodeState.empty(f"n{i}", s) for i, s in enumerate(cands)]
    if place(request, empty, Packing.BEST_FIT, reshape=True) is not None:
        return None
    biggest = max(s.gpus for s in cands)
    if shape.gpus_per_bundle > biggest:
        why = f"a bundle of {shape.gpus_per_bundle} GPUs exceeds the largest node ({biggest} GPUs)"
    elif shape.cpus_per_bundle > max(s.cpus for s in cands) + _EPS:
        why = f"a bundle of {shape.cpus_per_bundle} CPUs exceeds every node's CPUs"
    else:
        why = (
            f"{shape} needs {shape.total_gpus} GPUs in bundles of {shape.gpus_per_bundle}; "
            f"the whole inventory cannot hold it"
        )
    alts = [a for a in shape.reshapes() if place_shape(a, empty) is not None]
    if alts and not request.allow_reshape:
        why += f"; it would fit as {alts[0]} (allow reshaping)"
    return why
