"""Values the scheduling decisions read and return: requests, nodes, running work, snapshots.

All are frozen dataclasses; the controller and the simulator build them, the pure functions in
``admission``, ``placement`` and ``fragmentation`` consume them. Pure: no Ray imports.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.scheduling.shapes import JobShape, NodeShape

#: Ray's built-in per-node label; a bundle selector on it pins the bundle to the planned node.
NODE_ID_LABEL = "ray.io/node-id"


class Strategy(str, enum.Enum):
    """Ray placement-group strategies rayorch emits."""

    STRICT_PACK = "STRICT_PACK"  # every bundle on one node
    PACK = "PACK"  # as few nodes as possible
    SPREAD = "SPREAD"  # one bundle per node where possible


@dataclass(frozen=True, slots=True)
class Request:
    """One unit asking to run: identity, namespace, priority and shape."""

    workload_id: str
    namespace: str
    shape: JobShape
    priority: PriorityClass = PriorityClass.BACKFILL
    allow_reshape: bool = False  # may run as e.g. 2x4 instead of 1x8
    spread: bool = False  # bundles on distinct nodes (e.g. for fault isolation)
    submitted_at: float = 0.0
    # False: the scheduler accounts the capacity but creates no placement group, because the
    # work makes its own from the plan (Ray Train); reserving twice would deadlock.
    reserve: bool = True
    # Deadline-aware admission: epoch seconds the work must finish by, and its expected run
    # time (configured or measured). Slack = deadline - now - expected duration.
    deadline_at: float | None = None
    expected_duration_s: float | None = None
    # Who renews this request's lease (a driver id); "" = not leased (in-process use).
    holder: str = ""

    def slack(self, now: float) -> float:
        """Seconds to spare before the deadline is missed; +inf without a deadline."""
        if self.deadline_at is None:
            return float("inf")
        return self.deadline_at - now - (self.expected_duration_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload_id": self.workload_id,
            "namespace": self.namespace,
            "shape": str(self.shape),
            "cpus_per_bundle": self.shape.cpus_per_bundle,
            "priority": self.priority.value,
            "allow_reshape": self.allow_reshape,
            "spread": self.spread,
            "submitted_at": self.submitted_at,
            "reserve": self.reserve,
            "deadline_at": self.deadline_at,
            "expected_duration_s": self.expected_duration_s,
            "holder": self.holder,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Request:
        from rayorch.scheduling.shapes import parse_job_shape

        return cls(
            d["workload_id"],
            d["namespace"],
            parse_job_shape(d["shape"], d.get("cpus_per_bundle", 1.0)),
            PriorityClass(d["priority"]),
            allow_reshape=d.get("allow_reshape", False),
            spread=d.get("spread", False),
            submitted_at=d.get("submitted_at", 0.0),
            reserve=d.get("reserve", True),
            deadline_at=d.get("deadline_at"),
            expected_duration_s=d.get("expected_duration_s"),
            holder=d.get("holder", ""),
        )


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node: its shape and what is free on it now (as the scheduler accounts it)."""

    node_id: str
    shape: NodeShape
    free_gpus: int
    free_cpus: float

    @property
    def used_gpus(self) -> int:
        return self.shape.gpus - self.free_gpus

    @classmethod
    def empty(cls, node_id: str, shape: NodeShape) -> NodeState:
        return cls(node_id, shape, shape.gpus, shape.cpus)


@dataclass(frozen=True, slots=True)
class BundlePlacement:
    node_id: str
    gpus: int
    cpus: float


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """Bundles, the Ray strategy, and the node each bundle lands on."""

    shape: JobShape
    strategy: Strategy
    bundles: tuple[BundlePlacement, ...]
    reshaped_from: JobShape | None = None

    def ray_bundles(self) -> list[dict[str, float]]:
        """Bundle dicts for ``ray.util.placement_group``."""
        out = []
        for b in self.bundles:
            d: dict[str, float] = {"CPU": b.cpus}
            if b.gpus:
                d["GPU"] = float(b.gpus)
            out.append(d)
        return out

    def label_selectors(self) -> list[dict[str, str]]:
        """Per-bundle selectors pinning each bundle to its planned node."""
        return [{NODE_ID_LABEL: b.node_id} for b in self.bundles]

    def gpus_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.bundles:
            out[b.node_id] = out.get(b.node_id, 0) + b.gpus
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": str(self.shape),
            "strategy": self.strategy.value,
            "bundles": [
                {"node_id": b.node_id, "gpus": b.gpus, "cpus": b.cpus} for b in self.bundles
            ],
            "reshaped_from": str(self.reshaped_from) if self.reshaped_from else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlacementPlan:
        from rayorch.scheduling.shapes import parse_job_shape

        bundles = tuple(BundlePlacement(b["node_id"], b["gpus"], b["cpus"]) for b in d["bundles"])
        cpus = bundles[0].cpus if bundles else 1.0
        return cls(
            parse_job_shape(d["shape"], cpus),
            Strategy(d["strategy"]),
            bundles,
            parse_job_shape(d["reshaped_from"], cpus) if d.get("reshaped_from") else None,
        )


@dataclass(frozen=True, slots=True)
class RunningWorkload:
    """Admitted work holding capacity. ``yielding``: asked to yield, not yet released.

    ``reserved_for``: the preemptor whose nominated placement this yielding work is being
    drained for; its capacity is spoken for and nobody else counts on it being freed.
    ``preempted_at``: when this unit was asked to yield before (bounds preemptions per hour).
    """

    workload_id: str
    namespace: str
    priority: PriorityClass
    placement: PlacementPlan
    started_at: float = 0.0
    yielding: bool = False
    reserved_for: str | None = None
    preempted_at: tuple[float, ...] = ()
    deadline_at: float | None = None
    expected_duration_s: float | None = None

    def slack(self, now: float) -> float:
        """Seconds to spare if it were stopped now and restarted; +inf without a deadline."""
        if self.deadline_at is None:
            return float("inf")
        return self.deadline_at - now - (self.expected_duration_s or 0.0)

    def preemptions_since(self, since: float) -> int:
        return sum(1 for t in self.preempted_at if t > since)

    @property
    def gpus(self) -> int:
        return self.placement.shape.total_gpus

    @property
    def cpus(self) -> float:
        return self.placement.shape.total_cpus


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``admit`` looks at: quotas, per-node free capacity, running work."""

    spec: ClusterSpec
    nodes: tuple[NodeState, ...]
    running: tuple[RunningWorkload, ...] = ()
    now: float = 0.0
    _borrowed: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def usage(self, namespace: str) -> tuple[int, float, int]:
        """(GPUs, CPUs, units) held by a namespace's running work."""
        g, c, n = 0, 0.0, 0
        for w in self.running:
            if w.namespace == namespace:
                g, c, n = g + w.gpus, c + w.cpus, n + 1
        return g, c, n

    def borrowed_ids(self) -> frozenset[str]:
        """Running work beyond its namespace's nominal quota.

        Within a namespace, work is ranked by (priority, earliest start); whatever pushes the
        cumulative GPU or CPU use above the nominal quota is borrowed. So the flag follows the
        quota: when a namespace's earlier work ends, its later work stops being borrowed.
        """
        if self._borrowed is not None:
            return self._borrowed
        out: set[str] = set()
        by_ns: dict[str, list[RunningWorkload]] = {}
        for w in self.running:
            by_ns.setdefault(w.namespace, []).append(w)
        for ns, ws in by_ns.items():
            q = self.spec.quota(ns)
            g, c = 0, 0.0
            for w in sorted(ws, key=lambda w: (-w.priority.rank, w.started_at, w.workload_id)):
                g, c = g + w.gpus, c + w.cpus
                if q is None or g > q.gpus or c > q.cpus + 1e-9:
                    out.add(w.workload_id)
        frozen = frozenset(out)
        object.__setattr__(self, "_borrowed", frozen)
        return frozen

    def without(self, ids: Iterable[str]) -> Snapshot:
        """The snapshot as it would be once the given running work released its capacity."""
        drop = set(ids)
        if not drop:
            return self
        freed: dict[str, tuple[int, float]] = {}
        for w in self.running:
            if w.workload_id in drop:
                for b in w.placement.bundles:
                    g, c = freed.get(b.node_id, (0, 0.0))
                    freed[b.node_id] = (g + b.gpus, c + b.cpus)
        nodes = tuple(
            replace(
                n,
                free_gpus=n.free_gpus + freed[n.node_id][0],
                free_cpus=n.free_cpus + freed[n.node_id][1],
            )
            if n.node_id in freed
            else n
            for n in self.nodes
        )
        running = tuple(w for w in self.running if w.workload_id not in drop)
        return Snapshot(self.spec, nodes, running, self.now)


def apply_placement(nodes: Iterable[NodeState], plan: PlacementPlan) -> tuple[NodeState, ...]:
    """Nodes after ``plan`` took its bundles."""
    take: dict[str, tuple[int, float]] = {}
    for b in plan.bundles:
        g, c = take.get(b.node_id, (0, 0.0))
        take[b.node_id] = (g + b.gpus, c + b.cpus)
    return tuple(
        replace(
            n,
            free_gpus=n.free_gpus - take[n.node_id][0],
            free_cpus=n.free_cpus - take[n.node_id][1],
        )
        if n.node_id in take
        else n
        for n in nodes
    )


def release_placement(nodes: Iterable[NodeState], plan: PlacementPlan) -> tuple[NodeState, ...]:
    """Nodes after ``plan`` gave its bundles back."""
    give: dict[str, tuple[int, float]] = {}
    for b in plan.bundles:
        g, c = give.get(b.node_id, (0, 0.0))
        give[b.node_id] = (g + b.gpus, c + b.cpus)
    return tuple(
        replace(
            n,
            free_gpus=n.free_gpus + give[n.node_id][0],
            free_cpus=n.free_cpus + give[n.node_id][1],
        )
        if n.node_id in give
        else n
        for n in nodes
    )
