"""Flat combining: concurrent calls for one key are carried out as batches by one thread.

The coordinator actor takes promotions from many clients at once (a threaded actor). Each
call queues its item under its key (the model) and then waits for the key's lock; whoever holds
it takes *every* item queued for the key so far and runs them as one batch, then hands each
caller its own result. Callers that arrive while a batch runs form the next batch. So a batch
costs one set of round trips (the model's lock, rayorch's alias row, one read of MLflow's
alias) however many promotions it carries, no call waits longer than for the batch ahead of it,
and a lone caller runs a batch of one at once: no timer, no added latency.

Batches of one key never overlap (the key's lock), so a batch sees every earlier batch's
effects. Pure threading; nothing here knows about promotions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "value")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.value: R | None = None
        self.error: BaseException | None = None


class Combiner(Generic[K, T, R]):
    def __init__(
        self,
        run: Callable[[K, Sequence[T]], Sequence[R | BaseException]],
        max_batch: int = 64,
        linger_s: float = 0.0,
    ) -> None:
        """``run(key, items)`` returns, for each item in order, its result or the exception
        its caller raises; an exception out of ``run`` itself is raised to every caller.

        ``linger_s``: group commit. When a batch ends, its callers are likely to come back (a
        client loop) while those that queued meanwhile are already waiting; the next batch
        waits up to ``linger_s`` for as many items as both together, so alternating halves
        merge into one batch. A lone caller (a batch of one, nobody queued) never waits."""
        self._run = run
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._expect: dict[K, int] = {}  # items the next batch of a key may wait for
        # One condition guards the queues and the busy keys. A caller waits on it, not on a
        # per-key lock: callers whose items a batch carried return as soon as it ends, instead
        # of taking the key's lock one after another only to find they are done (meanwhile a
        # fast re-submitter would run batches of one: measured, 2 items a batch of 8 callers).
        self._cond = threading.Condition()
        self._queues: dict[K, list[_Slot[T, R]]] = {}
        self._busy: set[K] = set()
        self.batches = 0  # batches run so far (observability, benchmarks)
        self.items = 0

    def submit(self, key: K, item: T) -> R:
        """Run ``item`` in a batch of ``key``; returns its result or raises its exception."""
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._queues.setdefault(key, []).append(slot)
            self._cond.notify_all()  # a lingering batch may be waiting for this item
        while True:
            with self._cond:
                while not slot.done and key in self._busy:
                    self._cond.wait()
                if slot.done:
                    break
                # not busy and not done: the slot is still queued; this caller runs the batch
                self._busy.add(key)
                expect = min(self._expect.pop(key, 0), self._max_batch)
                if expect > len(self._queues[key]) and self._linger_s > 0:
                    deadline = time.monotonic() + self._linger_s
                    while len(self._queues[key]) < expect:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                queue = self._queues[key]
                batch, self._queues[key] = queue[: self._max_batch], queue[self._max_batch :]
            try:
                self._run_batch(key, batch)
            finally:
                self._release(key, len(batch))
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]

    @contextmanager
    def exclusive(self, key: K) -> Iterator[None]:
        """Hold ``key`` as a batch would (no batch of ``key`` runs meanwhile)."""
        with self._cond:
            while key in self._busy:
                self._cond.wait()
            self._busy.add(key)
        try:
            yield
        finally:
            self._release(key)

    def _release(self, key: K, ran: int = 0) -> None:
        with self._cond:
            self._busy.discard(key)
            waiting = len(self._queues.get(key, ()))
            if ran + waiting > 1:  # contention: the next batch may wait for the returners
                self._expect[key] = ran + waiting
            self._cond.notify_all()

    def _run_batch(self, key: K, batch: list[_Slot[T, R]]) -> None:
        try:
            outs = list(self._run(key, [s.item for s in batch]))
            if len(outs) != len(batch):
                raise RuntimeError(f"batch runner returned {len(outs)} results for {len(batch)}")
        except Exception as e:  # the whole batch failed: every caller sees the error
            outs = [e] * len(batch)
        with self._cond:  # done is read under the condition
            self.batches += 1
            self.items += len(batch)
            for s, out in zip(batch, outs, strict=True):
                if isinstance(out, BaseException):
                    s.error = out
                else:
                    s.value = out
                s.done = True
