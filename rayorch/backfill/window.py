"""How many units a backfill keeps in flight when ``max_concurrency`` is not set (pure)."""

from __future__ import annotations

#: The fewest units in flight by default. Each loop turn costs the driver a few milliseconds
#: (a fenced claim and a fenced commit transaction), so the queue must hold more work than
#: the workers finish in that time, or they idle between turns: with small feature units on
#: a 2-CPU machine, 16 in flight publish 2,700 partitions 14 % faster than 8 (docs/tables.md).
MIN_DEFAULT_CONCURRENCY = 16
#: The same for a plan of feature units only: each is a short CPU task that waits in Ray's
#: queue without holding anything, so a deeper queue only keeps the workers busy through the
#: driver's turns (64 against 16: 2,700 partitions published ~20 % faster; with short units
#: grouped into tasks, 128 against 64 again, docs/tables.md). A plan with training keeps the
#: shallower window: training runs must not all start at once.
MIN_DEFAULT_FEATURE_CONCURRENCY = 128


def default_concurrency(cluster_cpus: float | None, *, features_only: bool = False) -> int:
    """Units in flight when ``max_concurrency`` is not set: 2 per cluster CPU, at least 16
    (at least 128 when every unit of the plan is a feature unit)."""
    floor = MIN_DEFAULT_FEATURE_CONCURRENCY if features_only else MIN_DEFAULT_CONCURRENCY
    return max(floor, int(2 * (cluster_cpus or 4)))
