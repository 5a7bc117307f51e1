"""Plan-time cost: GPU-hours and an estimated duration for a list of units under a quota.

``estimate(units, quota)`` packs the units (longest first) into the namespace's nominal GPUs,
CPUs and ``max_concurrent_units`` on a virtual clock; with ``cluster_gpus`` and borrowing on it
also gives the duration if the whole idle cluster could be borrowed. Durations come from the
caller: configured per step, or measured from past runs. Pure: no Ray imports.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rayorch.scheduling.quota import NamespaceQuota

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class UnitCost:
    gpus: float
    cpus: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class Estimate:
    units: int
    gpu_hours: float
    cpu_hours: float
    duration_s: float | None  # under the nominal quota; None when a unit exceeds it
    duration_borrowing_s: float | None  # with the whole cluster borrowable (can_borrow only)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "gpu_hours": round(self.gpu_hours, 3),
            "cpu_hours": round(self.cpu_hours, 3),
            "duration_h": None if self.duration_s is None else round(self.duration_s / 3600, 3),
            "duration_borrowing_h": None
            if self.duration_borrowing_s is None
            else round(self.duration_borrowing_s / 3600, 3),
            "note": self.note,
        }


def unit_costs(
    units: Iterable[Any], durations_s: Mapping[str, float], default_s: float | None = None
) -> list[UnitCost]:
    """Costs for backfill plan units (anything with ``.gpus``, ``.cpus``, ``.step``).

    ``durations_s`` maps a step name (``features``, ``train``) to seconds per unit.
    """
    out = []
    for u in units:
        step = getattr(u.step, "value", u.step)
        d = durations_s.get(step, default_s)
        if d is None:
            raise KeyError(f"no duration for step {step!r}; pass durations_s[{step!r}]")
        out.append(UnitCost(float(u.gpus), float(u.cpus), float(d)))
    return out


def _makespan(units: list[UnitCost], gpus: float, cpus: float, slots: int) -> float | None:
    if any(u.gpus > gpus + _EPS or u.cpus > cpus + _EPS for u in units):
        return None
    order = sorted(units, key=lambda u: -u.duration_s)  # longest first
    t, free_g, free_c, free_n = 0.0, gpus, cpus, slots
    ends: list[tuple[float, float, float]] = []
    for u in order:
        while u.gpus > free_g + _EPS or u.cpus > free_c + _EPS or free_n < 1:
            end, g, c = heapq.heappop(ends)
            t = max(t, end)
            free_g, free_c, free_n = free_g + g, free_c + c, free_n + 1
        free_g, free_c, free_n = free_g - u.gpus, free_c - u.cpus, free_n - 1
        heapq.heappush(ends, (t + u.duration_s, u.gpus, u.cpus))
    return max((e for e, _, _ in ends), default=t)


def estimate(
    units: Iterable[UnitCost],
    quota: NamespaceQuota,
    cluster_gpus: float | None = None,
    cluster_cpus: float | None = None,
) -> Estimate:
    us = list(units)
    gpu_h = sum(u.gpus * u.duration_s for u in us) / 3600
    cpu_h = sum(u.cpus * u.duration_s for u in us) / 3600
    dur = _makespan(us, quota.gpus, quota.cpus, quota.max_concurrent_units)
    note = (
        ""
        if dur is not None
        else ("a unit needs more than the namespace's nominal quota; it runs only by borrowing")
    )
    borrow = None
    if quota.can_borrow and cluster_gpus is not None:
        g = (
            cluster_gpus
            if quota.borrowing_limit_gpus is None
            else min(cluster_gpus, quota.gpus + quota.borrowing_limit_gpus)
        )
        borrow = _makespan(
            us,
            max(g, quota.gpus),
            max(cluster_cpus or quota.cpus, quota.cpus),
            quota.max_concurrent_units,
        )
    return Estimate(len(us), gpu_h, cpu_h, dur, borrow, note)
