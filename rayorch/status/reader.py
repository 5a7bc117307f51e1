"""The one adapter between the UI and the ledger (plus a unit's training files and MLflow run).

Pages, the JSON API, ``rayorch status`` views and notebooks read through :class:`ReadModel`,
which uses only the ledger's public query methods (``list_backfills``, ``get_backfill``,
``backfill_run_keys``, ``get_units``, ``unit_counts``, ``events``). Read-only: nothing here
writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rayorch.ledger.store import Ledger
from rayorch.status.model import (
    BackfillView,
    UnitView,
    backfill_view,
    blocked_keys,
    classify,
    count_states,
    ledger_counts_as_cells,
    stale_keys,
    steps_of,
    unit_view,
)

#: pipeline name -> what a commit of each step would record now (None: unknown, nothing stale)
VersionsFn = Callable[[str], "Mapping[str, Mapping[str, str]] | None"]


@dataclass(frozen=True, slots=True)
class BackfillDetail:
    backfill: BackfillView
    units: tuple[UnitView, ...]  # in plan order
    steps: tuple[str, ...]
    summary: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backfill": self.backfill.to_dict(),
            "steps": list(self.steps),
            "units": [u.to_dict() for u in self.units],
        }


@dataclass(frozen=True, slots=True)
class UnitDetail:
    unit: UnitView
    backfill_id: str | None
    events: tuple[dict[str, Any], ...]
    sensor: dict[str, Any] | None  # the last sensor verdict (missing sub-partitions, reasons)
    training: dict[str, Any] | None  # epoch, step, last checkpoint, restarts, stragglers
    output: dict[str, Any] | None  # what the commit recorded (rows, manifest summary, run id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit.to_dict(),
            "backfill_id": self.backfill_id,
            "events": list(self.events),
            "sensor": self.sensor,
            "training": self.training,
            "output": self.output,
        }


class ReadModel:
    """Read-only queries the UI needs, over one :class:`Ledger`."""

    def __init__(
        self,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        versions: VersionsFn | None = None,
    ) -> None:
        self.ledger = ledger
        self.clock = clock
        self.versions = versions or (lambda pipeline: None)

    def list_backfills(self, pipeline: str | None = None, limit: int = 50) -> list[BackfillView]:
        now = self.clock()
        out = []
        for bf in self.ledger.list_backfills(pipeline, limit):
            counts = self.ledger.unit_counts(bf.id)
            out.append(backfill_view(bf, ledger_counts_as_cells(counts), sum(counts.values()), now))
        return out

    def backfill(self, backfill_id: str) -> BackfillDetail:
        bf = self.ledger.get_backfill(backfill_id)  # NotFoundError names the id
        keys = self.ledger.backfill_run_keys(bf.id)
        rows = self.ledger.get_units(keys)
        now = self.clock()
        blocked = blocked_keys(bf)
        stale = stale_keys(rows.values(), self.versions(bf.pipeline))
        units = tuple(
            unit_view(r, classify(r, bf.id, now, blocked, stale))
            for k in keys
            if (r := rows.get(k)) is not None
        )
        view = backfill_view(bf, count_states(u.state for u in units), len(units), now)
        return BackfillDetail(view, units, steps_of(units, view.steps), bf.summary)

    def unit(self, run_key: str, backfill_id: str | None = None) -> UnitDetail:
        from rayorch.errors import NotFoundError

        rows = self.ledger.get_units([run_key])
        if run_key not in rows:
            raise NotFoundError(f"no unit {run_key!r} in the ledger", run_key=run_key)
        row = rows[run_key]
        blocked: frozenset[str] = frozenset()
        stale: frozenset[str] = frozenset()
        viewer = backfill_id or row.holder or row.committed_by or ""
        if backfill_id:
            bf = self.ledger.get_backfill(backfill_id)
            blocked, stale = blocked_keys(bf), stale_keys([row], self.versions(bf.pipeline))
        view = unit_view(row, classify(row, viewer, self.clock(), blocked, stale))
        events = tuple(
            {
                "event": e["event"],
                "token": e["token"],
                "at": e["at"],
                "backfill_id": e["backfill_id"],
                "detail": e["detail"],
            }
            for e in self.ledger.events(run_key)
        )
        progress = row.progress or {}
        return UnitDetail(
            unit=view,
            backfill_id=backfill_id,
            events=events,
            sensor=progress.get("sensor"),
            training=read_training(progress.get("training")),
            output=_output_summary(row.output),
        )


def read_training(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """A training unit's live progress from the control files next to its checkpoints."""
    if not where:
        return None
    from rayorch.train.control import RunFiles

    live = RunFiles(where["storage"], where["run_name"]).read_progress()
    if live is None:
        return {"status": "not started", "run_name": where["run_name"]}
    keep = ("status", "epoch", "epochs", "step", "last_checkpoint", "restarts", "stragglers")
    return {k: live.get(k) for k in keep} | {"run_name": where["run_name"]}


def _output_summary(output: dict[str, Any] | None) -> dict[str, Any] | None:
    """The commit record without bulky file lists (the manifest keeps them)."""
    if not output:
        return None
    keep: dict[str, Any] = {}
    for k in ("kind", "rows", "mlflow_run_id", "model_name", "model_version", "metrics"):
        if k in output:
            keep[k] = output[k]
    manifest = output.get("manifest") or {}
    if manifest:
        keep["files"] = len(manifest.get("files") or ())
        keep["manifest_rows"] = manifest.get("rows")
    return keep
