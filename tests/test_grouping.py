"""Short feature units share a task: sizes, and every result back to its own unit."""

from __future__ import annotations

import pytest

from rayorch.backfill.grouping import GroupPolicy, TaskGroups, UnitTimes, group_sizes

ON = GroupPolicy(target_task_s=0.25, max_units=32)


def test_one_task_per_unit_until_grouping_pays():
    assert group_sizes(10, 2, 0.001, GroupPolicy(target_task_s=0)) == [1] * 10  # off
    assert group_sizes(10, 2, 0.001, GroupPolicy(max_units=1)) == [1] * 10  # off
    assert group_sizes(10, 2, None, ON) == [1] * 10  # nothing measured yet
    assert group_sizes(4, 4, 0.001, ON) == [1] * 4  # every unit starts at once anyway
    assert group_sizes(0, 4, 0.001, ON) == []


def test_sizes_fill_every_slot_fit_the_target_and_balance():
    # 30 pending on 2 slots, 1 ms units: spread over both slots (15 each)
    assert group_sizes(30, 2, 0.001, ON) == [15, 15]
    # never more than max_units
    assert group_sizes(100, 1, 0.001, ON) == [25, 25, 25, 25]
    # 100 ms units fit two to a 0.25 s task
    assert group_sizes(7, 1, 0.1, ON) == [2, 2, 2, 1]
    # a unit longer than the target keeps a task of its own
    assert group_sizes(9, 2, 1.0, ON) == [1] * 9
    # balanced: sizes differ by at most one and add up
    sizes = group_sizes(61, 3, 0.001, ON)
    assert sum(sizes) == 61 and max(sizes) - min(sizes) <= 1 and len(sizes) == 3


def test_unit_times_moving_average():
    t = UnitTimes(weight=0.5)
    assert t.mean is None
    t.add([1.0])
    t.add([3.0, -5.0])  # a negative clock reading counts as 0
    assert t.mean == pytest.approx(1.0)


class _Launcher:
    def __init__(self) -> None:
        self.launched: list[list[str]] = []

    def __call__(self, items: list[str]) -> str:
        self.launched.append(items)
        return f"task{len(self.launched)}"


def _groups(slots: int = 1, measured: float | None = 0.001) -> tuple[TaskGroups, _Launcher]:
    launch = _Launcher()
    groups = TaskGroups(launch, ON, lambda: slots)
    if measured is not None:
        groups.times.add([measured])
    return groups, launch


def test_flush_groups_in_order_and_results_go_back_to_each_member():
    groups, launch = _groups(slots=2)
    members = [groups.add(x) for x in "abcde"]
    assert launch.launched == []  # nothing starts before flush
    groups.flush()
    assert launch.launched == [["a", "b", "c"], ["d", "e"]]
    assert groups.tasks(members) == ["task1", "task2"]
    got = groups.finished("task2", [("D", 0.002), (ValueError("e broke"), 0.003)])
    assert [(m.item, r if isinstance(r, str) else repr(r)) for m, r in got] == [
        ("d", "D"),
        ("e", "ValueError('e broke')"),
    ]
    assert not groups.owns("task2") and groups.owns("task1")
    assert groups.times.mean is not None and groups.times.mean > 0.001  # measured


def test_a_task_that_dies_fails_each_of_its_members():
    groups, _ = _groups()
    a, b = groups.add("a"), groups.add("b")
    groups.flush()
    boom = RuntimeError("worker died")
    assert groups.finished("task1", boom) == [(a, boom), (b, boom)]


def test_a_cancelled_member_is_dropped_and_the_last_one_stops_the_task():
    groups, launch = _groups()
    a, b, c = groups.add("a"), groups.add("b"), groups.add("c")
    assert groups.cancel(c) is None  # still pending: never launched
    groups.flush()
    assert launch.launched == [["a", "b"]]
    assert groups.cancel(a) is None  # b still wants the task
    assert groups.cancel(b) == "task1"  # nobody does: stop it
    assert not groups.owns("task1")


def test_results_of_cancelled_members_never_reach_the_driver():
    groups, _ = _groups()
    a, b = groups.add("a"), groups.add("b")
    groups.flush()
    groups.cancel(a)
    assert groups.finished("task1", [("A", 0.001), ("B", 0.001)]) == [(b, "B")]


def test_a_task_answering_for_the_wrong_number_of_units_is_an_error():
    groups, _ = _groups()
    groups.add("a"), groups.add("b")
    groups.flush()
    with pytest.raises(RuntimeError, match="2 units"):
        groups.finished("task1", [("A", 0.001)])


def test_a_unit_launched_alone_is_tracked_like_a_group_of_one():
    groups, _ = _groups()
    m = groups.launch_alone("x", lambda items: ("placed", tuple(items)))
    assert m.task == ("placed", ("x",)) and groups.owns(m.task)
    assert groups.finished(m.task, [("X", 0.1)]) == [(m, "X")]
