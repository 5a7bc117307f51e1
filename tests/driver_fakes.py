"""In-process parts for driver tests: a clock the tests advance, and a scripted runner.

The runner does what Ray would (start work, report results, cancel, publish) without Ray, so
the real driver and the real SQLite ledger are exercised in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from rayorch.backfill.executor import Reconciled
from rayorch.backfill.plan import BackfillPlan, Step, Unit, make_run_key
from rayorch.ledger.owners import Observation, OwnerInfo
from rayorch.partitions import PartitionKey
from rayorch.results import Staged, Trained, Yielded

HOST = socket.gethostname()


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(s, 0.001)


class Crash(BaseException):
    """Raised by an injected crash point: the driver stops with no cleanup, like SIGKILL."""


def crash_at(point: str, nth: int = 1) -> Callable[[str], None]:
    hits = {"n": 0}

    def hook(name: str) -> None:
        if name == point:
            hits["n"] += 1
            if hits["n"] >= nth:
                raise Crash(point)

    return hook


class Processes:
    """The process table the ledger's observer sees: which (host, pid) are alive."""

    def __init__(self) -> None:
        self.alive: dict[int, float] = {}

    def start(self, pid: int, host: str = HOST, started_at: float = 100.0) -> OwnerInfo:
        if host == HOST:
            self.alive[pid] = started_at
        return OwnerInfo(host, pid, started_at)

    def kill(self, owner: OwnerInfo) -> None:
        self.alive.pop(owner.pid, None)

    def observe(self, owner: OwnerInfo) -> Observation:
        started = self.alive.get(owner.pid) if owner.host == HOST else None
        return Observation(HOST, started, None)


def staged(unit: Unit, token: int) -> Staged:
    return Staged({"partition": str(unit.partition), "token": token, "files": []}, {}, 10)


@dataclass
class ScriptedExecutor:
    """Results per (run key, attempt): a WorkResult, an exception, or "hang" (runs until
    cancelled or asked to yield). Anything unscripted succeeds."""

    clock: FakeClock
    script: dict[tuple[str, int], Any] = field(default_factory=dict)
    on_wait: Callable[[ScriptedExecutor], None] | None = None
    submitted: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    published: dict[str, int] = field(default_factory=dict)  # run key -> token
    missing: set[str] = field(default_factory=set)  # committed outputs that "vanished"
    yield_asked: list[str] = field(default_factory=list)
    _running: dict[int, tuple[Unit, int, Any]] = field(default_factory=dict)
    _attempts: dict[str, int] = field(default_factory=dict)
    _next: int = 0

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> int:
        n = self._attempts[unit.run_key] = self._attempts.get(unit.run_key, 0) + 1
        outcome = self.script.get((unit.run_key, n))
        if outcome is None:
            outcome = (
                Trained("run-" + unit.run_key, "/ckpt", "d", {"auc": 0.9}, ())
                if unit.step is Step.TRAIN
                else staged(unit, token)
            )
        self._next += 1
        self._running[self._next] = (unit, token, outcome)
        self.submitted.append((unit.run_key, token))
        return self._next

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
        if self.on_wait is not None:
            self.on_wait(self)
        out = []
        for h in handles:
            _unit, _token, outcome = self._running[h]
            if isinstance(outcome, str) and outcome == "hang":
                continue
            out.append((h, outcome))
            del self._running[h]
        if not out:
            self.clock.sleep(timeout)
        return out

    def cancel(self, handle: Any) -> None:
        got = self._running.pop(handle, None)
        if got is not None:
            self.cancelled.append(got[0].run_key)

    def publish(self, unit: Unit, token: int, result: Any) -> dict[str, Any] | None:
        self.published[unit.run_key] = token
        return {"model_version": "1"} if isinstance(result, Trained) else None

    def reconcile(self, unit: Unit, token: int, output: dict[str, Any] | None) -> Reconciled:
        if unit.run_key in self.missing:
            return Reconciled(Reconciled.Outcome.MISSING, "files gone")
        if self.published.get(unit.run_key, -1) < token:
            self.published[unit.run_key] = token
            return Reconciled(Reconciled.Outcome.ROLLED_FORWARD)
        return Reconciled(Reconciled.Outcome.NOTHING)

    def publish_many(self, items: list[tuple[Unit, int, Any]]) -> list[dict[str, Any] | None]:
        return [self.publish(u, t, r) for u, t, r in items]

    def reconcile_many(self, items: list[tuple[Unit, int, Any]]) -> list[Reconciled]:
        return [self.reconcile(u, t, o) for u, t, o in items]

    def request_yield(self, unit: Unit, token: int, why: str) -> bool:
        if unit.step is not Step.TRAIN:
            return False
        self.yield_asked.append(unit.run_key)
        for h, (u, t, _) in self._running.items():
            if u.run_key == unit.run_key:
                self._running[h] = (u, t, Yielded("run", "/ckpt", {"step": 7}))
        return True

    def live_progress(self, unit: Unit, generation: int) -> dict[str, Any] | None:
        return None


def make_plan(keys: list[str], days: int = 1, train: bool = False, name: str = "p") -> BackfillPlan:
    start = dt.date(2026, 10, 1)
    units: list[Unit] = []
    feats: list[str] = []
    for d in range(days):
        day = start + dt.timedelta(days=d)
        for k in keys:
            pk = PartitionKey.of({"city": k}, date=day.isoformat())
            rk = make_run_key(name, Step.FEATURES, pk)
            feats.append(rk)
            units.append(Unit(rk, Step.FEATURES, pk, day, inputs=(pk,)))
    if train:
        pk = PartitionKey.of({"date": start.isoformat()})
        units.append(
            Unit(make_run_key(name, Step.TRAIN, pk), Step.TRAIN, pk, start, depends_on=tuple(feats))
        )
    steps = (Step.FEATURES, Step.TRAIN) if train else (Step.FEATURES,)
    params = {"pipeline": name, "keys": keys, "days": days, "train": train}
    return BackfillPlan(name, start, start, {"city": keys}, steps, tuple(units), "fp", params)


class TableExecutor(ScriptedExecutor):
    """The scripted runner over a real Iceberg table (pyiceberg, SQL catalog, parquet files):
    a feature unit stages a real data file (its rows: ``<partition>#<i>``, value = token),
    publishing is :meth:`StepTable.publish_many` (one table commit, token check) and
    reconciling compares with the table's live tokens, as the Ray executor does. When a
    training unit starts, what the table holds at that moment is recorded."""

    def __init__(self, clock: FakeClock, table: Any, **kw: Any) -> None:
        super().__init__(clock, **kw)
        self.table = table
        self.publishes: list[list[str]] = []  # run keys of each publish_many with items
        self.live_at_train_start: dict[str, set[str]] = {}

    def submit(self, unit: Unit, token: int, generation: int, placement: Any = None) -> int:
        from rayorch.data import outputs

        if unit.step is Step.TRAIN:
            self.live_at_train_start[unit.run_key] = set(self.table.live())
        h = super().submit(unit, token, generation, placement)
        u, t, outcome = self._running[h]
        if unit.step is Step.FEATURES and isinstance(outcome, Staged):
            ids = [f"{unit.partition}#{i}" for i in range(3)]
            data = pa.table({"id": ids, "v": [float(token)] * 3})
            manifest = outputs.stage(
                self.table, unit.partition, data, run_key=unit.run_key, token=token,
                unique_key=["id"],
            )  # fmt: skip
            self._running[h] = (u, t, Staged(manifest, {}, 3))
        return h

    def publish_many(self, items: list[tuple[Unit, int, Any]]) -> list[dict[str, Any] | None]:
        from rayorch.data import outputs

        feats = [(u, r) for u, _, r in items if u.step is Step.FEATURES]
        got = {}
        if feats:
            self.publishes.append([u.run_key for u, _ in feats])
            results = self.table.publish_many([outputs.publish_item(r.manifest) for _, r in feats])
            got = {r.run_key: r for r in results}
        out: list[dict[str, Any] | None] = []
        for u, t, r in items:
            if u.step is Step.FEATURES:
                res = got[u.run_key]
                self.published[u.run_key] = res.live_token
                out.append({"snapshot_id": res.snapshot_id, "published": res.outcome.name})
            else:
                out.append(self.publish(u, t, r))
        return out

    def reconcile_many(self, items: list[tuple[Unit, int, Any]]) -> list[Reconciled]:
        from rayorch.data import outputs

        live = self.table.live()
        out: dict[int, Reconciled] = {}
        todo = []
        for i, (u, t, o) in enumerate(items):
            cur = live.get(str(u.partition))
            if u.step is not Step.FEATURES or (cur is not None and cur.token >= t):
                out[i] = Reconciled(Reconciled.Outcome.NOTHING)
            else:
                todo.append((i, outputs.publish_item(o["manifest"])))
        if todo:
            self.publishes.append([it.run_key for _, it in todo])
            for (i, _), r in zip(
                todo, self.table.publish_many([it for _, it in todo]), strict=True
            ):
                self.published[r.run_key] = r.live_token
                extra = {"snapshot_id": r.snapshot_id, "published": r.outcome.name}
                out[i] = Reconciled(Reconciled.Outcome.ROLLED_FORWARD, extra=extra)
        return [out[i] for i in range(len(items))]

    def rows(self) -> list[tuple[str, float]]:
        """Every visible row of the table (id, value = the token that wrote it)."""
        t = self.table.require().scan().to_arrow()
        return sorted(zip(t["id"].to_pylist(), t["v"].to_pylist(), strict=True))
