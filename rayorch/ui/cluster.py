"""The cluster page's data: the scheduler's status report (read-only) as nodes x GPU slots.

``read_cluster`` asks the same status API as ``rayorch cluster status`` (the named scheduler
actor, or the bare Ray inventory without one) plus the actor's event log for preemptions;
``slot_rows`` is pure and says who holds each GPU slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayorch.errors import RayorchError


@dataclass(frozen=True, slots=True)
class NodeSlots:
    node_id: str
    shape: str
    slots: tuple[str | None, ...]  # one entry per GPU: the workload holding it, or None (free)
    stranded: int
    free_cpus: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "shape": self.shape,
            "slots": list(self.slots),
            "stranded": self.stranded,
            "free_cpus": self.free_cpus,
        }


def slot_rows(report: dict[str, Any]) -> list[NodeSlots]:
    """Per node, GPU slots filled in placement order by the running workloads' bundles."""
    held: dict[str, list[str]] = {}
    for w in report.get("running", []):
        for b in (w.get("placement") or {}).get("bundles", []):
            held.setdefault(b["node_id"], []).extend([w["workload_id"]] * int(b.get("gpus", 0)))
    out = []
    for n in report.get("nodes", []):
        owners = held.get(n["node_id"], [])
        # without a scheduler there are no placements: used GPUs show as held by "?"
        used = max(int(n.get("used_gpus", 0)), len(owners))
        slots = [*owners, *["?"] * (used - len(owners))]
        slots += [None] * max(0, int(n.get("gpus", 0)) - len(slots))
        out.append(
            NodeSlots(
                n["node_id"],
                n.get("shape", ""),
                tuple(slots),
                int(n.get("stranded_gpus", 0)),
                float(n.get("free_cpus", 0.0)),
            )
        )
    return out


def preemptions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scheduler's preempt events, newest first."""
    return sorted(
        (e for e in events if e.get("event") == "preempt"), key=lambda e: -e.get("seq", 0)
    )


def read_cluster(address: str | None = None) -> dict[str, Any]:
    """The status report, with ``preemptions`` and ``error`` (None when Ray answered)."""
    try:
        import ray

        from rayorch.scheduling.client import live_status
        from rayorch.scheduling.controller import SCHEDULER_NAME, SCHEDULER_NAMESPACE

        report = live_status(address)
        events: list[dict[str, Any]] = []
        if report.get("scheduler") == "running":
            actor = ray.get_actor(SCHEDULER_NAME, namespace=SCHEDULER_NAMESPACE)
            events = ray.get(actor.events.remote(0), timeout=10)
        report["preemptions"] = preemptions(events)
        report["error"] = None
        return report
    except RayorchError as e:
        return {"error": e.message, "nodes": [], "queue": [], "namespaces": {}, "preemptions": []}
