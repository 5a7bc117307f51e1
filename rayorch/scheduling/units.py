"""Backfill units as scheduler requests, and the plan-time check of a whole backfill plan.

A unit's shape comes from the pipeline config as the plan recorded it: a training unit is
``train.scaling.num_workers`` bundles of (``gpus_per_worker``, ``cpus_per_worker``), one Ray
Train worker per bundle; a feature unit is one bundle of ``features.num_cpus`` CPUs and no GPU.
``check_plan`` says, before anything runs, which shapes can never be admitted (and why) and
what the plan costs under the namespace quota. Pure: no Ray imports; units are anything with
``run_key``, ``step``, ``cpus``, ``gpus`` and ``workers`` (``rayorch.backfill.plan.Unit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rayorch.errors import ConfigError
from rayorch.scheduling.estimate import Estimate, estimate, unit_costs
from rayorch.scheduling.model import Request
from rayorch.scheduling.placement import never_fits
from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.scheduling.shapes import JobShape

_EPS = 1e-9

#: Seconds per unit when neither the caller nor the ledger knows better.
DEFAULT_DURATIONS_S: dict[str, float] = {"features": 60.0, "train": 1800.0}


def _step(unit: Any) -> str:
    return str(getattr(unit.step, "value", unit.step))


def unit_shape(unit: Any) -> JobShape:
    """``workers`` bundles, each with the unit's per-worker GPUs and CPUs."""
    workers = max(int(unit.workers), 1)
    per_gpu = float(unit.gpus) / workers
    if abs(per_gpu - round(per_gpu)) > _EPS:
        raise ConfigError(
            f"{unit.run_key}: train.scaling.gpus_per_worker={per_gpu:g} is fractional; the "
            "scheduler places whole GPUs per worker (use 1, 2, 4 or 8, or run without --cluster)",
            field="train.scaling.gpus_per_worker",
            value=per_gpu,
        )
    return JobShape(workers, round(per_gpu), float(unit.cpus) / workers)


def unit_request(
    unit: Any, namespace: str, priority: PriorityClass = PriorityClass.BACKFILL
) -> Request:
    """The scheduler request of a unit: workload id = run key.

    Training units do not reserve a placement group in the scheduler: Ray Train creates its
    own from the plan (``placement_strategy`` + per-worker ``label_selector``); a second
    reservation of the same GPUs would never become ready.
    """
    return Request(
        unit.run_key,
        namespace,
        unit_shape(unit),
        priority,
        reserve=_step(unit) != "train",
    )


@dataclass(frozen=True, slots=True)
class ShapeCheck:
    step: str
    shape: JobShape
    units: int
    outcome: str  # "OK" | "REJECTED"
    reason: str = ""  # Reason name when rejected
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "shape": str(self.shape),
            "cpus_per_bundle": self.shape.cpus_per_bundle,
            "units": self.units,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class PlanCheck:
    namespace: str
    priority: PriorityClass
    shapes: tuple[ShapeCheck, ...]
    estimate: Estimate | None
    durations_s: Mapping[str, float]
    duration_source: Mapping[str, str]  # step -> "configured" | "measured" | "default"

    @property
    def rejected(self) -> list[ShapeCheck]:
        return [c for c in self.shapes if c.outcome == "REJECTED"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "priority": self.priority.value,
            "shapes": [c.to_dict() for c in self.shapes],
            "rejected": len(self.rejected),
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "durations_s": dict(self.durations_s),
            "duration_source": dict(self.duration_source),
        }


def _rejection(req: Request, cluster: ClusterSpec) -> tuple[str, str] | None:
    """What ``admit`` would say for this shape on any snapshot: REJECTED reason, or None."""
    quota = cluster.quota(req.namespace)
    if quota is None:
        known = ", ".join(sorted(cluster.namespaces))
        return (
            "UNKNOWN_NAMESPACE",
            f"namespace {req.namespace!r} is not in the cluster config ({known})",
        )
    shapes = cluster.node_shapes()
    if shapes:
        why = never_fits(req, shapes)
        if why:
            return "NEVER_FITS", why
    s = req.shape
    if not quota.can_borrow and (s.total_gpus > quota.gpus or s.total_cpus > quota.cpus + _EPS):
        return (
            "EXCEEDS_QUOTA",
            f"{s} ({s.total_gpus} GPUs, {s.total_cpus:g} CPUs) is larger than namespace "
            f"{req.namespace!r}'s quota ({quota.gpus} GPUs, {quota.cpus:g} CPUs), which may not "
            "borrow",
        )
    return None


def check_plan(
    units: Iterable[Any],
    cluster: ClusterSpec,
    namespace: str,
    priority: PriorityClass = PriorityClass.BACKFILL,
    durations_s: Mapping[str, float] | None = None,
    duration_source: Mapping[str, str] | None = None,
) -> PlanCheck:
    """Every distinct unit shape against quotas and the configured inventory, plus the cost.

    The inventory is ``cluster.nodes`` (the live scheduler re-checks against Ray's nodes at
    submit). The estimate covers the units that can run; it is None when none can.
    """
    us = list(units)
    seen: dict[tuple[str, JobShape], list[Any]] = {}
    for u in us:
        seen.setdefault((_step(u), unit_shape(u)), []).append(u)
    checks: list[ShapeCheck] = []
    runnable: list[Any] = []
    for (step, shape), group in seen.items():
        why = _rejection(Request(group[0].run_key, namespace, shape, priority), cluster)
        if why is None:
            checks.append(ShapeCheck(step, shape, len(group), "OK"))
            runnable.extend(group)
        else:
            checks.append(ShapeCheck(step, shape, len(group), "REJECTED", *why))
    durations = {**DEFAULT_DURATIONS_S, **(durations_s or {})}
    source = {k: "default" for k in DEFAULT_DURATIONS_S}
    for k in durations_s or {}:
        source[k] = (duration_source or {}).get(k, "configured")
    quota = cluster.quota(namespace)
    est = None
    if quota is not None and runnable:
        nodes = cluster.node_shapes()
        est = estimate(
            unit_costs(runnable, durations),
            quota,
            cluster_gpus=float(sum(n.gpus for n in nodes)) if nodes else None,
            cluster_cpus=float(sum(n.cpus for n in nodes)) if nodes else None,
        )
    return PlanCheck(namespace, priority, tuple(checks), est, durations, source)
