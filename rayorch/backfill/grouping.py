"""Several short feature units in one task: how many, and which result is whose.

A feature unit of a few milliseconds (a small partition) costs about as much in per-task
overhead (scheduling, argument and result transfer, the driver's bookkeeping) as in work.
Once the executor has seen how long feature units take (``UnitTimes``, measured inside the
task, per unit), pending units are packed into tasks of about ``target_task_s`` each, never
more than ``max_units``, and never fewer tasks than there are CPU slots to run them:
long units, and the first turn of a backfill, keep one task per unit. Every unit keeps its
own claim, token, commit, result and error; a task that dies takes only its own units
down, and each is retried alone by the driver's usual policy.

Pure bookkeeping: :class:`TaskGroups` is handed a ``launch`` function (a Ray task in
:class:`rayorch.backfill.executor.RayExecutor`, a process pool in the benchmark).
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: A grouped task's answer per member, in order: (result or the exception it raised, the
#: seconds its work took inside the task).
MemberOutcome = tuple[Any, float]


def run_each(work: Callable[[Any], Any], items: Sequence[Any]) -> list[MemberOutcome]:
    """A grouped task's body: ``work`` on each item in turn, one failure not stopping the
    others; per item its result or its (portable) error, and the seconds it took."""
    out: list[MemberOutcome] = []
    for item in items:
        t0 = time.perf_counter()
        try:
            res = work(item)
        except Exception as exc:  # this unit's failure, not its neighbours'
            res = _portable(exc)
        out.append((res, time.perf_counter() - t0))
    return out


def _portable(exc: Exception) -> Exception:
    """The error as it can travel back to the driver (unpicklable ones by type and text)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """``target_task_s`` 0 (or ``max_units`` 1) turns grouping off: one task per unit."""

    target_task_s: float = 0.25
    max_units: int = 32

    @property
    def enabled(self) -> bool:
        return self.target_task_s > 0 and self.max_units > 1


def group_sizes(pending: int, slots: int, unit_s: float | None, policy: GroupPolicy) -> list[int]:
    """How ``pending`` units split into tasks (sizes, in submission order).

    One unit per task when grouping is off, when no unit time has been measured yet, or when
    there are no more units than ``slots`` (every unit can start at once). Otherwise the size
    is the smallest of: units that fit ``target_task_s``, ``max_units``, and what spreads the
    units over every slot; the groups are balanced (sizes differ by at most one).
    """
    if pending <= 0:
        return []
    slots = max(1, slots)
    if not policy.enabled or unit_s is None or pending <= slots:
        return [1] * pending
    by_time = max(1, math.floor(policy.target_task_s / max(unit_s, 1e-6)))
    size = max(1, min(policy.max_units, by_time, math.ceil(pending / slots)))
    groups = math.ceil(pending / size)
    base, extra = divmod(pending, groups)
    return [base + 1] * extra + [base] * (groups - extra)


class UnitTimes:
    """A moving average of how long one feature unit's work takes (seconds)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.mean: float | None = None

    def add(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            s = max(0.0, float(s))
            self.mean = s if self.mean is None else self.mean + self.weight * (s - self.mean)


class Member:
    """The driver's handle of one unit inside a grouped task (hashed by identity)."""

    __slots__ = ("cancelled", "item", "task")

    def __init__(self, item: Any) -> None:
        self.item = item  # what the task needs for this unit (unit, token, ...)
        self.task: Any = None  # the launched task's handle (None while pending)
        self.cancelled = False

    def __repr__(self) -> str:
        return f"Member({self.item!r}, launched={self.task is not None})"


class TaskGroups:
    """Units waiting to be grouped, the launched tasks, and their members."""

    def __init__(
        self,
        launch: Callable[[list[Any]], Any],
        policy: GroupPolicy,
        slots: Callable[[], int],
    ) -> None:
        self.launch, self.policy, self.slots = launch, policy, slots
        self.times = UnitTimes()
        self._pending: list[Member] = []
        self._members: dict[Any, list[Member]] = {}  # task handle -> its members, in order

    def add(self, item: Any) -> Member:
        member = Member(item)
        self._pending.append(member)
        return member

    def launch_alone(self, item: Any, launch: Callable[[list[Any]], Any]) -> Member:
        """One unit in a task of its own, launched now by ``launch`` (e.g. into its
        placement group)."""
        member = Member(item)
        member.task = launch([item])
        self._members[member.task] = [member]
        return member

    def flush(self) -> None:
        """Launch every pending unit, grouped by :func:`group_sizes`."""
        pending, self._pending = self._pending, []  # a cancelled one was removed already
        at = 0
        for size in group_sizes(len(pending), self.slots(), self.times.mean, self.policy):
            members = pending[at : at + size]
            at += size
            task = self.launch([m.item for m in members])
            for m in members:
                m.task = task
            self._members[task] = members

    def tasks(self, members: Iterable[Member]) -> list[Any]:
        """The launched tasks holding ``members`` (each once)."""
        return list(dict.fromkeys(m.task for m in members if m.task is not None))

    def owns(self, task: Any) -> bool:
        return task in self._members

    def finished(self, task: Any, outcome: Any) -> list[tuple[Member, Any]]:
        """A task's end, per live member: its result or error. ``outcome`` is the task's
        list of :data:`MemberOutcome`, or the exception the whole task raised (every member
        gets it)."""
        members = self._members.pop(task, [])
        if isinstance(outcome, BaseException):
            per: Sequence[Any] = [outcome] * len(members)
        else:
            if len(outcome) != len(members):
                raise RuntimeError(
                    f"a grouped task answered {len(outcome)} results for {len(members)} units"
                )
            self.times.add(s for _, s in outcome)
            per = [r for r, _ in outcome]
        return [(m, r) for m, r in zip(members, per, strict=True) if not m.cancelled]

    def cancel(self, member: Member) -> Any | None:
        """Forget one unit; the task to stop when it was the last live member (else None:
        the task goes on for the others and this unit's result is dropped)."""
        member.cancelled = True
        if member.task is None:
            self._pending = [m for m in self._pending if m is not member]
            return None
        members = self._members.get(member.task, [])
        if all(m.cancelled for m in members):
            self._members.pop(member.task, None)
            return member.task
        return None
