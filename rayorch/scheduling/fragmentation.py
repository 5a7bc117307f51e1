"""Fragmentation: free GPUs that no queued shape can use, and reshapes that would run now.

A node's free GPUs are *usable* up to the most GPUs that bundles of queued shapes (sizes as
asked, accelerator matching) can fill on it; the rest is *stranded*. With nothing queued, free
GPUs are idle, not stranded. The measure is per node and ignores that a multi-bundle job needs
all its bundles at once, so it is a lower bound on waste. Pure: no Ray imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayorch.scheduling.model import NodeState, Request, Snapshot
from rayorch.scheduling.placement import Packing, place_shape
from rayorch.scheduling.shapes import JobShape


def _fillable(free: int, sizes: set[int]) -> int:
    """Most GPUs out of ``free`` that bundles of the given sizes can fill (unbounded knapsack)."""
    if not sizes or free <= 0:
        return 0
    reach = [False] * (free + 1)
    reach[0] = True
    for g in range(1, free + 1):
        reach[g] = any(s <= g and reach[g - s] for s in sizes)
    return max(g for g in range(free + 1) if reach[g])


def stranded_gpus(nodes: Sequence[NodeState], queued: Sequence[JobShape]) -> dict[str, int]:
    """Per node, free GPUs that no queued shape can use."""
    out: dict[str, int] = {}
    if not queued:
        return {n.node_id: 0 for n in nodes}
    for n in nodes:
        sizes = {
            s.gpus_per_bundle
            for s in queued
            if s.gpus_per_bundle > 0
            and (s.accelerator is None or s.accelerator == n.shape.accelerator)
            and s.cpus_per_bundle <= n.free_cpus + 1e-9
        }
        out[n.node_id] = n.free_gpus - _fillable(n.free_gpus, sizes)
    return out


@dataclass(frozen=True, slots=True)
class ReshapeSuggestion:
    workload_id: str
    asked: JobShape
    fits_as: JobShape

    def to_dict(self) -> dict[str, str]:
        return {
            "workload_id": self.workload_id,
            "asked": str(self.asked),
            "fits_as": str(self.fits_as),
            "text": f"{self.workload_id}: {self.asked} could run now as {self.fits_as}",
        }


def reshape_suggestions(
    queued: Sequence[Request], nodes: Sequence[NodeState]
) -> list[ReshapeSuggestion]:
    """Queued requests that do not fit as asked but would fit now cut differently (1x8 -> 2x4)."""
    out = []
    for r in queued:
        if place_shape(r.shape, nodes, Packing.BEST_FIT, r.spread) is not None:
            continue
        for alt in r.shape.reshapes():
            if place_shape(alt, nodes, Packing.BEST_FIT, r.spread) is not None:
                out.append(ReshapeSuggestion(r.workload_id, r.shape, alt))
                break
    return out


def fragmentation_report(snapshot: Snapshot, queued: Sequence[Request]) -> dict[str, Any]:
    """Per node free/used GPUs, queued shapes, stranded GPUs and reshape suggestions."""
    shapes = [r.shape for r in queued]
    stranded = stranded_gpus(snapshot.nodes, shapes)
    holders: dict[str, list[str]] = {}
    for w in snapshot.running:
        for nid in w.placement.gpus_by_node():
            holders.setdefault(nid, []).append(w.workload_id)
    nodes = [
        {
            "node_id": n.node_id,
            "shape": str(n.shape),
            "gpus": n.shape.gpus,
            "used_gpus": n.used_gpus,
            "free_gpus": n.free_gpus,
            "free_cpus": n.free_cpus,
            "stranded_gpus": stranded[n.node_id],
            "workloads": sorted(holders.get(n.node_id, [])),
        }
        for n in snapshot.nodes
    ]
    queued_shapes: dict[str, int] = {}
    for s in shapes:
        queued_shapes[str(s)] = queued_shapes.get(str(s), 0) + 1
    return {
        "nodes": nodes,
        "total_gpus": sum(n.shape.gpus for n in snapshot.nodes),
        "free_gpus": sum(n.free_gpus for n in snapshot.nodes),
        "stranded_gpus": sum(stranded.values()),
        "queued_shapes": queued_shapes,
        "suggestions": [s.to_dict() for s in reshape_suggestions(queued, snapshot.nodes)],
    }
