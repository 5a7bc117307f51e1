"""Worker processes for benchmarks, standing where Ray's task workers stand.

``concurrent.futures.ProcessPoolExecutor`` moves every call and every result through two
helper threads inside the submitting process (a queue feeder and a manager), so each task
costs the driver process CPU and GIL turns of its own, and a worker waits for a new call
until those threads get the GIL. Ray does neither: ``.remote()`` hands the task to the
core worker (C++) and results land in the object store. This pool is closer to that: the
submitting thread writes each call to one shared pipe at once, each worker reads the next
call when it is free and writes its result to a pipe of its own, and the submitter reads
results only when it waits. No thread runs in the submitting process.

    pool = LeanPool(2)
    task = pool.submit(fn, arg)           # fn: a module-level function (pickled by name)
    done = pool.wait([task], timeout=1)   # [(task, result or the exception raised)]
    pool.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

_PIPE_BYTES = 1 << 20  # a worker never blocks writing a result the driver has not read yet


class LeanTask:
    """A submitted call (hashable by identity, like a Ray ObjectRef)."""

    __slots__ = ("id",)

    def __init__(self, task_id: int) -> None:
        self.id = task_id


def _serve(calls: Connection, lock: Any, results: Connection) -> None:
    while True:
        with lock:
            msg = calls.recv()
        if msg is None:
            return
        task_id, fn, arg = msg
        try:
            out: Any = fn(arg)
        except Exception as e:  # the task's own error, returned as its result
            out = e
        results.send((task_id, out))


def _widen(conn: Connection) -> None:
    with contextlib.suppress(OSError):  # over the system's limit: the default size works too
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class LeanPool:
    def __init__(self, workers: int, ctx: Any = None) -> None:
        ctx = ctx or multiprocessing.get_context("fork")
        self._calls_r, self._calls_w = ctx.Pipe(duplex=False)
        _widen(self._calls_w)
        lock = ctx.Lock()
        self._results: list[Connection] = []
        self._procs = []
        for _ in range(workers):
            r, w = ctx.Pipe(duplex=False)
            _widen(w)
            p = ctx.Process(target=_serve, args=(self._calls_r, lock, w), daemon=True)
            p.start()
            w.close()  # the worker's end
            self._results.append(r)
            self._procs.append(p)
        self._next = 0
        self._waiting: dict[int, LeanTask] = {}
        self._ready: dict[LeanTask, Any] = {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> LeanTask:
        self._next += 1
        task = LeanTask(self._next)
        self._waiting[task.id] = task
        self._calls_w.send((task.id, fn, arg))
        return task

    def _drain(self, timeout: float | None) -> None:
        for conn in wait(self._results, timeout):
            while conn.poll():
                task_id, out = conn.recv()
                task = self._waiting.pop(task_id, None)
                if task is not None:  # a cancelled task's result is dropped
                    self._ready[task] = out

    def wait(
        self, tasks: Sequence[LeanTask], timeout: float, linger: float = 0.0
    ) -> list[tuple[LeanTask, Any]]:
        """Results of those of ``tasks`` that are done: waits up to ``timeout`` for the
        first, then up to ``linger`` more for the others, so results come in batches (as
        ``futures.wait`` twice, FIRST_COMPLETED then ALL_COMPLETED, would)."""
        wanted = set(tasks)
        if not any(t in self._ready for t in wanted):
            self._drain(timeout)
        if linger > 0 and any(t in self._ready for t in wanted):
            end = time.monotonic() + linger
            while any(t.id in self._waiting for t in wanted) and time.monotonic() < end:
                self._drain(max(0.0, end - time.monotonic()))
        self._drain(0)
        return [(t, self._ready.pop(t)) for t in tasks if t in self._ready]

    def cancel(self, task: LeanTask) -> None:
        """Forget a task: its result, when it comes, is dropped (a running call is not
        interrupted, as with a Ray task cancelled without force)."""
        self._waiting.pop(task.id, None)
        self._ready.pop(task, None)

    def close(self) -> None:
        for _ in self._procs:
            self._calls_w.send(None)
        for p in self._procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        for conn in (*self._results, self._calls_r, self._calls_w):
            conn.close()

    def __enter__(self) -> LeanPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
