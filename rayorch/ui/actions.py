"""Actions from the UI: cancel, retry failed units, reprocess selected partitions.

Decide, then do: ``plan_*`` are pure and return the :class:`ActionPlan` the page shows as the
dry run (the units it touches and the exact command it will run); ``execute`` carries out a
plan the person confirmed. Work is started as the same ``rayorch backfill`` command a person
would type, in its own process (logged under ``RAYORCH_HOME/ui-actions/``), so the UI server
never drives Ray itself and a backfill it started outlives it.
"""

from __future__ import annotations

import enum
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayorch.ledger.store import Ledger
from rayorch.status.model import CellState
from rayorch.status.reader import BackfillDetail


class ActionKind(str, enum.Enum):
    CANCEL = "cancel"
    RETRY = "retry"  # re-run the backfill's failed units (resume with --reprocess failed)
    REPROCESS = "reprocess"  # re-run selected partitions (a new backfill, --reprocess all)


@dataclass(frozen=True, slots=True)
class ActionPlan:
    kind: ActionKind
    backfill_id: str
    units: tuple[str, ...]  # run keys the action acts on
    command: tuple[str, ...]  # `rayorch ...` arguments it runs; empty for cancel
    summary: str
    refused: str | None = None  # why it cannot run now (the page shows it instead of a button)
    extra: tuple[str, ...] = ()  # units a reprocess adds beyond the selection (its rectangle)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "backfill_id": self.backfill_id,
            "units": list(self.units),
            "command": ["rayorch", *self.command] if self.command else [],
            "summary": self.summary,
            "refused": self.refused,
            "extra": list(self.extra),
        }


def plan_cancel(detail: BackfillDetail) -> ActionPlan:
    bf = detail.backfill
    left = tuple(u.run_key for u in detail.units if not u.state.finished)
    refused = None
    if not bf.active and bf.state not in ("PREEMPTED", "INCOMPLETE"):  # resumable: cancellable
        refused = f"backfill {bf.id} already ended {bf.state}"
    elif bf.cancel_requested:
        refused = f"cancel of {bf.id} was already requested; its driver stops at the next step"
    return ActionPlan(
        ActionKind.CANCEL,
        bf.id,
        left,
        (),
        f"stop backfill {bf.id}: {len(left)} unfinished units are released (claims freed, "
        "running work dropped); done units stay committed",
        refused,
    )


def plan_retry(detail: BackfillDetail, config: str | None) -> ActionPlan:
    bf = detail.backfill
    failed = tuple(u.run_key for u in detail.units if u.state is CellState.FAILED)
    cmd = ("backfill", "-c", config or "?", "--resume", bf.id, "--reprocess", "failed")
    refused = None
    if not failed:
        refused = "no failed units to retry"
    elif bf.active:
        refused = f"backfill {bf.id} is still running; retry once it ends (or cancel it)"
    elif config is None:
        refused = _no_config(bf.pipeline)
    return ActionPlan(
        ActionKind.RETRY,
        bf.id,
        failed,
        cmd,
        f"resume {bf.id} re-running its {len(failed)} failed units (done units are skipped)",
        refused,
    )


def plan_reprocess(
    detail: BackfillDetail,
    selected: Sequence[str],
    config: str | None,
    planned_keys: Iterable[str] | None = None,
) -> ActionPlan:
    """Re-run the selected units as one new backfill over the smallest window x keys holding
    them. ``planned_keys``: run keys that backfill would plan (``plan_backfill`` on the
    command's window), so the dry run names every unit beyond the selection."""
    bf = detail.backfill
    by_key = {u.run_key: u for u in detail.units}
    chosen = [by_key[k] for k in dict.fromkeys(selected) if k in by_key]
    if not chosen:
        return ActionPlan(
            ActionKind.REPROCESS, bf.id, (), (), "nothing selected", "select cells on the grid"
        )
    steps = sorted({u.step for u in chosen}, key=lambda s: (s != "features", s))
    days = sorted(u.day for u in chosen)
    keys = _key_selection([u.row for u in chosen if u.step != "train"], bf.keys)
    cmd = ["backfill", "-c", config or "?", "--start", days[0], "--end", days[-1]]
    if keys:
        cmd += ["--keys", ";".join(f"{d}={','.join(v)}" for d, v in sorted(keys.items()))]
    cmd += ["--steps", ",".join(steps), "--reprocess", "all"]
    chosen_keys = tuple(u.run_key for u in chosen)
    extra = tuple(k for k in (planned_keys or ()) if k not in set(chosen_keys))
    refused = _no_config(bf.pipeline) if config is None else None
    return ActionPlan(
        ActionKind.REPROCESS,
        bf.id,
        chosen_keys,
        tuple(cmd),
        f"a new backfill re-runs {len(chosen_keys)} selected units"
        + (f" and {len(extra)} more in the same window x keys" if extra else "")
        + "; their partitions are replaced atomically",
        refused,
        extra,
    )


def _key_selection(
    rows: Sequence[str], planned: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in rows:
        for seg in row.split("/"):
            dim, eq, value = seg.partition("=")
            if eq:
                out.setdefault(dim, [])
                if value not in out[dim]:
                    out[dim].append(value)
    if not rows:  # training only: keep the backfill's key scope (its run keys depend on it)
        return {d: list(v) for d, v in planned.items()}
    return out


def _no_config(pipeline: str) -> str:
    return (
        f"no pipeline config for {pipeline!r} is known to this UI; start it with "
        f"`rayorch ui --configs DIR` (a folder holding {pipeline}'s YAML)"
    )


@dataclass(frozen=True, slots=True)
class ActionResult:
    kind: ActionKind
    backfill_id: str
    message: str
    pid: int | None = None
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "backfill_id": self.backfill_id,
            "message": self.message,
            "pid": self.pid,
            "log": self.log,
        }


def execute(plan: ActionPlan, ledger: Ledger, log_dir: Path) -> ActionResult:
    """Carry out a confirmed plan. Cancel goes to the ledger; the others start a process."""
    from rayorch.errors import ConflictError

    if plan.refused:
        raise ConflictError(f"{plan.kind.value} refused: {plan.refused}", backfill=plan.backfill_id)
    if plan.kind is ActionKind.CANCEL:
        bf = ledger.request_cancel(plan.backfill_id)
        return ActionResult(
            plan.kind, bf.id, f"cancel requested; backfill {bf.id} is {bf.state.value}"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{plan.kind.value}-{plan.backfill_id}.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayorch.cli.app", *plan.command],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the UI server; a Ctrl-C there does not stop it
        )
    return ActionResult(
        plan.kind,
        plan.backfill_id,
        f"started `rayorch {' '.join(plan.command)}` (pid {proc.pid})",
        proc.pid,
        str(log),
    )


def discover_configs(paths: Iterable[str | Path]) -> dict[str, str]:
    """Pipeline name -> config path, from YAML files and folders of them (others ignored)."""
    from rayorch.errors import RayorchError
    from rayorch.spec import load_pipeline

    found: dict[str, str] = {}
    for p in map(Path, paths):
        files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
        for f in files:
            try:
                found.setdefault(load_pipeline(f).name, str(f))
            except (RayorchError, OSError, ValueError):
                continue  # cluster.yaml, workloads: not pipelines
    return found
