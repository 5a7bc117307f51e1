"""Late data: which units a partition that has just become READY makes runnable again.

Pure: the backfill plan(s) of interest, what the ledger says about each unit and the sensor
statuses of the raw partitions go in; a :class:`WatchDecision` comes out, naming the partitions
that became READY, every affected unit (the partition's feature unit and each training unit
whose window includes it) and the narrowed backfill requests that re-run exactly those units.
``rayorch sensors watch`` observes, calls :func:`decide_watch`, and acts on the decision.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayorch.backfill.plan import BackfillPlan, Step, Unit
from rayorch.data.sensors import SensorStatus
from rayorch.ledger.states import UnitState


class UnitVerdict(str, enum.Enum):
    RUNNABLE = "runnable"  # every input READY (or already processed): re-run it
    BLOCKED = "blocked"  # its window still holds a partition that is not READY
    DONE = "done"  # already committed: nothing to pick up


@dataclass(frozen=True, slots=True)
class AffectedUnit:
    unit: Unit
    verdict: UnitVerdict
    because_of: tuple[str, ...]  # the newly READY partitions it reads
    blocked_by: tuple[str, ...] = ()  # inputs still not READY (with their status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_key": self.unit.run_key,
            "step": self.unit.step.value,
            "partition": str(self.unit.partition),
            "day": self.unit.day.isoformat(),
            "verdict": self.verdict.value,
            "because_of": list(self.because_of),
            "blocked_by": list(self.blocked_by),
        }


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    """Arguments for ``rayorch.api.run_backfill`` that cover exactly the runnable units."""

    start: str
    end: str
    keys: dict[str, list[str]]
    steps: tuple[str, ...]
    run_keys: tuple[str, ...]  # what it is expected to (re)run

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "keys": self.keys,
            "steps": list(self.steps),
            "run_keys": list(self.run_keys),
        }


@dataclass(frozen=True, slots=True)
class WatchDecision:
    newly_ready: tuple[str, ...]
    waiting: dict[str, str]  # partition -> status, for candidates that are still not READY
    affected: tuple[AffectedUnit, ...]
    requests: tuple[BackfillRequest, ...] = field(default=())

    @property
    def runnable(self) -> list[AffectedUnit]:
        return [a for a in self.affected if a.verdict is UnitVerdict.RUNNABLE]

    def to_dict(self) -> dict[str, Any]:
        return {
            "newly_ready": list(self.newly_ready),
            "waiting": dict(self.waiting),
            "affected": [a.to_dict() for a in self.affected],
            "requests": [r.to_dict() for r in self.requests],
        }


def _feature_units(plans: Sequence[BackfillPlan]) -> dict[str, Unit]:
    """Feature units by raw partition (feature units read exactly their own raw partition)."""
    return {str(u.partition): u for p in plans for u in p.units if u.step is Step.FEATURES}


def candidates(
    plans: Sequence[BackfillPlan], known: Mapping[str, UnitState]
) -> list[tuple[str, Unit]]:
    """Raw partitions worth re-checking: their feature unit is not committed nor in flight.

    That covers units released as not ready (PENDING with the sensor's error), FAILED ones and
    units no backfill has reached yet.
    """
    out = []
    for part, unit in sorted(_feature_units(plans).items()):
        state = known.get(unit.run_key)
        if state in (UnitState.DONE, UnitState.RUNNING):
            continue
        out.append((part, unit))
    return out


def decide_watch(
    plans: Sequence[BackfillPlan],
    known: Mapping[str, UnitState],
    status: Mapping[str, SensorStatus],
    previous: Mapping[str, SensorStatus] | None = None,
) -> WatchDecision:
    """Decide what a freshly observed set of sensor statuses makes runnable.

    ``status`` holds the current status of the candidate partitions (see :func:`candidates`);
    ``previous`` what the last pass saw (a long-running watch remembers it, so a partition
    is reported once when it turns READY). A partition is newly READY when it is READY now,
    was not READY on the previous pass and its feature unit is not committed.
    """
    previous = previous or {}
    features = _feature_units(plans)
    cands = {p for p, _ in candidates(plans, known)}
    newly = tuple(
        sorted(
            p
            for p in cands
            if status.get(p) is SensorStatus.READY and previous.get(p) is not SensorStatus.READY
        )
    )
    waiting = {
        p: status[p].value
        for p in sorted(cands)
        if p in status and status[p] is not SensorStatus.READY
    }
    newly_set = set(newly)

    def input_ready(part: str) -> bool:
        unit = features.get(part)
        if unit is not None and known.get(unit.run_key) is UnitState.DONE:
            return True
        return status.get(part) is SensorStatus.READY

    affected: dict[str, AffectedUnit] = {}
    for plan in plans:
        for u in plan.units:
            if u.run_key in affected:
                continue
            reads = tuple(sorted({str(p) for p in u.inputs} & newly_set))
            if not reads:
                continue
            blocked = tuple(
                f"{p} ({status[p].value if p in status else 'unknown'})"
                for p in sorted({str(p) for p in u.inputs})
                if not input_ready(p)
            )
            if known.get(u.run_key) is UnitState.DONE:
                verdict = UnitVerdict.DONE
            elif blocked:
                verdict = UnitVerdict.BLOCKED
            else:
                verdict = UnitVerdict.RUNNABLE
            affected[u.run_key] = AffectedUnit(u, verdict, reads, blocked)
    ordered = tuple(
        sorted(affected.values(), key=lambda a: (a.unit.step is Step.TRAIN, a.unit.run_key))
    )
    return WatchDecision(newly, waiting, ordered, tuple(_requests(plans, ordered)))


def _requests(
    plans: Sequence[BackfillPlan], affected: Iterable[AffectedUnit]
) -> list[BackfillRequest]:
    """Narrowed backfills that plan the runnable units and nothing else that could run.

    Training: one request per run of consecutive as-of days, with the plan's keys and steps (a
    training unit's run key, its scope, depends on the key selection); the feature units of
    those windows are planned with it, and the backfill skips those already committed.
    Features outside those windows: one features-only request per day with the exact key
    values (split further when a cross product of values would name other partitions).
    """
    runnable = {a.unit.run_key for a in affected if a.verdict is UnitVerdict.RUNNABLE}
    out: list[BackfillRequest] = []
    taken: set[str] = set()
    for plan in plans:
        mine = [u for u in plan.units if u.run_key in runnable and u.run_key not in taken]
        taken.update(u.run_key for u in mine)
        trains = sorted((u for u in mine if u.step is Step.TRAIN), key=lambda u: u.day)
        covered: set[str] = set()
        for group in _consecutive(trains):
            deps = {k for u in group for k in u.depends_on}
            covered |= deps
            out.append(
                BackfillRequest(
                    group[0].day.isoformat(),
                    group[-1].day.isoformat(),
                    {d: list(v) for d, v in plan.keys.items()},
                    tuple(s.value for s in plan.steps),
                    tuple(sorted({u.run_key for u in group} | (deps & runnable))),
                )
            )
        feats = [u for u in mine if u.step is Step.FEATURES and u.run_key not in covered]
        by_day: dict[Any, list[Unit]] = {}
        for u in feats:
            by_day.setdefault(u.day, []).append(u)
        for day, units in sorted(by_day.items()):
            for group_units in _exact_key_groups(units, list(plan.keys)):
                keys: dict[str, list[str]] = {}
                for u in group_units:
                    for d in plan.keys:
                        if u.partition[d] not in keys.setdefault(d, []):
                            keys[d].append(u.partition[d])
                out.append(
                    BackfillRequest(
                        day.isoformat(),
                        day.isoformat(),
                        {d: sorted(v) for d, v in keys.items()},
                        (Step.FEATURES.value,),
                        tuple(sorted(u.run_key for u in group_units)),
                    )
                )
    return out


def _consecutive(units: list[Unit]) -> list[list[Unit]]:
    groups: list[list[Unit]] = []
    for u in units:
        if groups and (u.day - groups[-1][-1].day).days == 1:
            groups[-1].append(u)
        else:
            groups.append([u])
    return groups


def _exact_key_groups(units: list[Unit], dims: list[str]) -> list[list[Unit]]:
    """All units at once when their key values' cross product is exactly them, else one each."""
    values = [{u.partition[d] for u in units} for d in dims]
    size = 1
    for v in values:
        size *= len(v)
    return [units] if size == len(units) else [[u] for u in units]
