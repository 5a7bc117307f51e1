"""A large backfill written straight into a ledger, for UI tests and ``bench_ui.py``.

Plans a real backfill (the pure planner) and moves its units to a deterministic mix of states
through the ledger's public API only - claims, fenced commits, failures - so the UI reads
exactly what a driver would have left, without running 2,700 units on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayorch.backfill.plan import BackfillPlan, plan_backfill
from rayorch.ledger.store import Ledger, UnitSpec
from rayorch.partitions import PartitionKey
from rayorch.spec import PipelineSpec

#: Per 100 units (by plan position): 0-79 done, 80-82 failed, 83-89 running, rest pending.
_DONE, _FAILED, _RUNNING = 80, 83, 90


@dataclass(frozen=True, slots=True)
class SyntheticBackfill:
    backfill_id: str
    plan: BackfillPlan
    done: tuple[str, ...]
    failed: tuple[str, ...]
    running: tuple[str, ...]
    pending: tuple[str, ...]


def city_keys(n: int) -> dict[str, list[str]]:
    """``{"city": ["C01", ..., "Cnn"]}``: n key values for a wide grid."""
    return {"city": [f"C{i:02d}" for i in range(1, n + 1)]}


def write_backfill(
    ledger: Ledger,
    spec: PipelineSpec,
    start: str,
    end: str,
    keys: dict[str, list[str]] | None = None,
    steps: str = "features",
) -> SyntheticBackfill:
    """Persist the plan as a backfill, then claim, commit and fail units in the fixed mix."""
    plan = plan_backfill(spec, start, end, keys, steps)
    planned = [
        UnitSpec(u.run_key, plan.pipeline, u.step.value, str(u.partition)) for u in plan.units
    ]
    bf, _ = ledger.start_backfill(plan.pipeline, plan.params, plan.config_fingerprint, planned)
    owner = bf.ownership
    groups: dict[str, list[str]] = {"done": [], "failed": [], "running": [], "pending": []}
    for i, u in enumerate(plan.units):
        slot = i % 100
        name = (
            "done"
            if slot < _DONE
            else "failed"
            if slot < _FAILED
            else "running"
            if slot < _RUNNING
            else "pending"
        )
        groups[name].append(u.run_key)
    claimed = groups["done"] + groups["failed"] + groups["running"]
    tokens = {r.run_key: r.token for r in ledger.claim_many(owner, claimed) if r.token}
    commits = [
        (k, tokens[k], {"kind": "staged", "rows": 100, "manifest": {"files": [], "rows": 100}})
        for k in groups["done"]
    ]
    for err in ledger.commit_many(owner, commits):
        if err is not None:
            raise err
    for k in groups["failed"]:
        part = PartitionKey.parse(k.split("/", 2)[2])
        ledger.fail(owner, k, tokens[k], f"RuntimeError: injected failure for {part}")
    return SyntheticBackfill(
        bf.id,
        plan,
        tuple(groups["done"]),
        tuple(groups["failed"]),
        tuple(groups["running"]),
        tuple(groups["pending"]),
    )
