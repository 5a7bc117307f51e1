"""Pure training-time decisions: when to checkpoint, and which worker is a straggler.

No Ray, torch or MLflow here: the session feeds numbers in and acts on the typed answer, so
both policies are table-tested in milliseconds.
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from rayorch.spec import CheckpointSpec, StragglerSpec


class CheckpointReason(str, enum.Enum):
    EPOCH = "epoch"  # every N epochs
    STEPS = "steps"  # every N optimizer steps
    SECONDS = "seconds"  # every T seconds since the last checkpoint
    FINAL = "final"  # the last epoch: the model the unit returns
    YIELD = "yield"  # asked to yield: checkpoint at this step boundary, then stop
    STRAGGLER = "straggler"  # restart without a slow node: checkpoint first


@dataclass(frozen=True, slots=True)
class CheckpointClock:
    """Where the last checkpoint was taken (global step, wall time)."""

    step: int
    at: float


def checkpoint_due(
    spec: CheckpointSpec,
    *,
    step: int,
    now: float,
    last: CheckpointClock,
    epoch_end: int | None = None,
    final: bool = False,
) -> CheckpointReason | None:
    """Is a checkpoint due at this boundary? ``epoch_end`` is the epoch just finished (if any).

    Step and time triggers fire only at step boundaries after at least one new step, so a
    checkpoint never duplicates the previous one.
    """
    if final:
        return CheckpointReason.FINAL
    if epoch_end is not None and spec.every_epochs and (epoch_end + 1) % spec.every_epochs == 0:
        return CheckpointReason.EPOCH
    if step <= last.step:
        return None
    if spec.every_steps and step - last.step >= spec.every_steps:
        return CheckpointReason.STEPS
    if spec.every_seconds and now - last.at >= spec.every_seconds:
        return CheckpointReason.SECONDS
    return None


@dataclass(frozen=True, slots=True)
class StragglerFlag:
    rank: int
    node: str
    ratio: float  # the worker's step time / median of the others, at the flagging step
    consecutive: int
    step: int

    def describe(self) -> str:
        return (
            f"worker rank {self.rank} on node {self.node} is a straggler: {self.ratio:.1f}x the "
            f"median step time for {self.consecutive} consecutive steps (at step {self.step})"
        )


@dataclass
class StragglerDetector:
    """Counts, per worker, consecutive steps slower than ``slowdown`` x the others' median.

    A flag is raised once per streak when the count reaches ``consecutive_steps``; a normal
    step resets the streak. ``busy`` times exclude time spent waiting in collectives, so the
    slow worker, not the ones waiting for it, is the one that stands out.
    """

    spec: StragglerSpec
    nodes: Sequence[str]
    streak: dict[int, int] = field(default_factory=dict)

    def observe(
        self, step: int, busy: Sequence[float], since_start: int | None = None
    ) -> list[StragglerFlag]:
        """``since_start``: steps since this attempt started (warm-up steps are not judged)."""
        if not self.spec.enabled or len(busy) < 2:
            return []
        if since_start is not None and since_start <= self.spec.warmup_steps:
            return []
        new: list[StragglerFlag] = []
        for rank, t in enumerate(busy):
            others = [x for i, x in enumerate(busy) if i != rank]
            median = statistics.median(others)
            slow = t >= self.spec.min_step_s and t > self.spec.slowdown * max(median, 1e-9)
            if not slow:
                self.streak[rank] = 0
                continue
            self.streak[rank] = self.streak.get(rank, 0) + 1
            if self.streak[rank] == self.spec.consecutive_steps:
                flag = StragglerFlag(
                    rank=rank,
                    node=self.nodes[rank] if rank < len(self.nodes) else "?",
                    ratio=t / max(median, 1e-9),
                    consecutive=self.streak[rank],
                    step=step,
                )
                new.append(flag)
        return new
