"""Which table snapshots may be expired: a pure decision (no catalog, no clock).

A snapshot is kept when it is the current one, among the newest ``retain_last``, younger
than the cut-off, or read by a run a registered model version came from (its
``rayorch.snapshot_id``): ``rayorch reproduce`` of a registered model always finds its data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    snapshot_id: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class ExpiryPlan:
    expire: tuple[int, ...]
    kept_for_models: tuple[int, ...]  # old enough to expire, kept for a registered model


def plan_expiry(
    snapshots: Sequence[SnapshotRef],
    current: int | None,
    protected: Iterable[int],
    *,
    older_than_ms: int,
    retain_last: int,
) -> ExpiryPlan:
    keep = {current} if current is not None else set()
    newest = sorted(snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    keep |= {s.snapshot_id for s in newest[: max(retain_last, 0)]}
    guarded = set(protected)
    expire, for_models = [], []
    for s in sorted(snapshots, key=lambda s: s.timestamp_ms):
        if s.snapshot_id in keep or s.timestamp_ms >= older_than_ms:
            continue
        (for_models if s.snapshot_id in guarded else expire).append(s.snapshot_id)
    return ExpiryPlan(tuple(expire), tuple(for_models))
