"""The benchmarks' worker pool (benchmarks/lean_pool.py): results, errors, cancels, batching."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from lean_pool import LeanPool


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def _slow(x: float) -> float:
    time.sleep(x)
    return x


def _collect(pool: LeanPool, tasks: list, timeout: float = 10.0) -> dict:
    got: dict = {}
    end = time.monotonic() + timeout
    while len(got) < len(tasks) and time.monotonic() < end:
        got.update(pool.wait([t for t in tasks if t not in got], 1.0))
    return got


def test_results_come_back_to_their_tasks_and_errors_are_results() -> None:
    with LeanPool(2) as pool:
        tasks = [pool.submit(_square, i) for i in range(50)]
        bad = pool.submit(_fail, 7)
        got = _collect(pool, [*tasks, bad])
        assert [got[t] for t in tasks] == [i * i for i in range(50)]
        assert isinstance(got[bad], ValueError) and "bad 7" in str(got[bad])
        assert len(set(pool.pids)) == 2


def test_a_wait_returns_nothing_before_its_timeout_when_nothing_is_done() -> None:
    with LeanPool(1) as pool:
        slow = pool.submit(_slow, 0.5)
        t0 = time.monotonic()
        assert pool.wait([slow], 0.05) == []
        assert time.monotonic() - t0 < 0.4
        assert _collect(pool, [slow])[slow] == 0.5


def test_a_cancelled_task_result_is_dropped() -> None:
    with LeanPool(1) as pool:
        gone = pool.submit(_slow, 0.1)
        kept = pool.submit(_square, 3)
        pool.cancel(gone)
        got = _collect(pool, [kept])
        assert got == {kept: 9}
        time.sleep(0.2)
        assert pool.wait([gone], 0.05) == []


def test_linger_batches_results_that_finish_close_together() -> None:
    with LeanPool(2) as pool:
        a, b = pool.submit(_slow, 0.05), pool.submit(_slow, 0.1)
        got = pool.wait([a, b], 5.0, linger=1.0)
        assert {t for t, _ in got} == {a, b}
