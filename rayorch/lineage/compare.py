"""What differs between a recorded run and now: data, environment, metrics. Pure."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayorch.env.diff import EnvDiff


class PartitionStatus(str, enum.Enum):
    UNCHANGED = "UNCHANGED"
    CHANGED = "CHANGED"  # the committed content hash differs from the recorded one
    MISSING = "MISSING"  # no committed manifest any more
    FILES_ALTERED = "FILES_ALTERED"  # same manifest, but a listed file is gone or resized


@dataclass(frozen=True, slots=True)
class CurrentPartition:
    """What the committed manifest of one partition says now (metadata only)."""

    content_hash: str
    rows: int
    files_ok: bool = True  # every listed file exists with the listed size


@dataclass(frozen=True, slots=True)
class PartitionChange:
    partition: str
    status: PartitionStatus
    recorded_hash: str
    current_hash: str | None
    recorded_rows: int
    current_rows: int | None

    def line(self) -> str:
        if self.status is PartitionStatus.MISSING:
            return f"{self.partition}: no committed manifest (recorded {self.recorded_hash[:12]})"
        if self.status is PartitionStatus.FILES_ALTERED:
            return f"{self.partition}: files listed in the manifest are missing or resized"
        return (
            f"{self.partition}: content {self.recorded_hash[:12]} → {(self.current_hash or '')[:12]}"
            f" (rows {self.recorded_rows} → {self.current_rows})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "status": self.status.value,
            "recorded_hash": self.recorded_hash,
            "current_hash": self.current_hash,
            "recorded_rows": self.recorded_rows,
            "current_rows": self.current_rows,
            "line": self.line(),
        }


def compare_partitions(
    recorded: Sequence[Mapping[str, Any]], current: Mapping[str, CurrentPartition | None]
) -> list[PartitionChange]:
    """Every recorded partition whose committed content is not what the run read."""
    out: list[PartitionChange] = []
    for r in sorted(recorded, key=lambda m: m["partition"]):
        name, rh, rrows = r["partition"], r["content_hash"], int(r["rows"])
        now = current.get(name)
        if now is None:
            out.append(PartitionChange(name, PartitionStatus.MISSING, rh, None, rrows, None))
        elif now.content_hash != rh:
            out.append(
                PartitionChange(
                    name, PartitionStatus.CHANGED, rh, now.content_hash, rrows, now.rows
                )
            )
        elif not now.files_ok:
            out.append(
                PartitionChange(
                    name, PartitionStatus.FILES_ALTERED, rh, now.content_hash, rrows, now.rows
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class ReproduceCheck:
    run_id: str
    run_key: str
    partitions_checked: int
    data_changes: tuple[PartitionChange, ...]
    env: EnvDiff | None  # None: the run recorded no fingerprint
    recorded_dataset_digest: str | None = None
    current_dataset_digest: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def code_changed(self) -> bool:
        return bool(self.env and self.env.of("code"))

    @property
    def same(self) -> bool:
        """Data and environment are what the run recorded (a code change also counts)."""
        env_ok = self.env is not None and self.env.equal and not self.code_changed
        return not self.data_changes and env_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_key": self.run_key,
            "same": self.same,
            "partitions_checked": self.partitions_checked,
            "partitions_changed": [c.to_dict() for c in self.data_changes],
            "recorded_dataset_digest": self.recorded_dataset_digest,
            "current_dataset_digest": self.current_dataset_digest,
            "environment": self.env.to_dict() if self.env else None,
            "packages_changed": [c.line() for c in self.env.of("package")] if self.env else [],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class MetricMatch:
    name: str
    original: float
    reproduced: float | None
    match: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "original": self.original,
            "reproduced": self.reproduced,
            "match": self.match,
        }


def compare_metrics(
    original: Mapping[str, float], reproduced: Mapping[str, float], tolerance: float
) -> list[MetricMatch]:
    """Each metric of the original run against the reproduction (rel. and abs. tolerance)."""
    out = []
    for name in sorted(original):
        a, b = float(original[name]), reproduced.get(name)
        ok = b is not None and math.isclose(a, float(b), rel_tol=tolerance, abs_tol=tolerance)
        out.append(MetricMatch(name, a, None if b is None else float(b), ok))
    return out
