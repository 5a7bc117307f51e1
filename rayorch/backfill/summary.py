"""What a backfill run did, unit by unit: the summary the CLI prints and the ledger keeps.

``ok`` (exit 0) only when every unit of the plan is DONE (now or before). Anything else is a
non-success state that lists each unit not done, why, who holds it and until when.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayorch.backfill.machine import Holder, Phase
from rayorch.ledger.states import BackfillState
from rayorch.results import Yielded

if TYPE_CHECKING:
    from rayorch.backfill.core import BackfillCore
    from rayorch.ledger.rows import Opened

#: How each terminal phase is counted (stable keys of ``counts`` in --json).
COUNT_KEYS: dict[Phase, str] = {
    Phase.DONE: "done",
    Phase.ALREADY_DONE: "skipped_done",
    Phase.FAILED_BEFORE: "skipped_failed",
    Phase.NOT_DONE: "not_done",
    Phase.BLOCKED: "blocked",
    Phase.FAILED: "failed",
    Phase.CANCELLED: "cancelled",
    Phase.YIELDED: "yielded",
}

#: Process exit status per final state (documented in the README).
EXIT_CODES: dict[BackfillState, int] = {
    BackfillState.SUCCEEDED: 0,
    BackfillState.FAILED: 1,
    BackfillState.INCOMPLETE: 4,
    BackfillState.CANCELLED: 5,
    BackfillState.PREEMPTED: 75,
}


@dataclass(frozen=True, slots=True)
class UnitReport:
    run_key: str
    phase: Phase
    why: str = ""
    holder: Holder | None = None

    @property
    def done(self) -> bool:
        return self.phase in (Phase.DONE, Phase.ALREADY_DONE)

    def to_dict(self, now: float) -> dict[str, Any]:
        d: dict[str, Any] = {"run_key": self.run_key, "state": self.phase.name, "why": self.why}
        if self.holder is not None:
            d["held_by"] = self.holder.backfill_id
            d["holder_driver"] = self.holder.owner
            d["holder_liveness"] = self.holder.liveness
            d["lease_until"] = self.holder.lease_until
            if self.holder.lease_until is not None:
                d["lease_expires_in_s"] = round(max(0.0, self.holder.lease_until - now), 1)
        return d


@dataclass(frozen=True, slots=True)
class BackfillSummary:
    backfill_id: str
    resumed: bool
    state: BackfillState
    units: tuple[UnitReport, ...]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    yielded: dict[str, Yielded] = field(default_factory=dict)
    took_over_from: str | None = None
    reconciled: tuple[str, ...] = ()
    invalidated: tuple[str, ...] = ()
    wall_s: float = 0.0
    now: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is BackfillState.SUCCEEDED and all(u.done for u in self.units)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.state, 1)

    @property
    def phases(self) -> dict[str, Phase]:
        return {u.run_key: u.phase for u in self.units}

    @property
    def failed(self) -> list[str]:
        return [u.run_key for u in self.units if u.phase is Phase.FAILED]

    @property
    def not_done(self) -> list[UnitReport]:
        return [u for u in self.units if not u.done]

    @property
    def errors(self) -> dict[str, str]:
        return {u.run_key: u.why for u in self.units if u.why}

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(COUNT_KEYS.values(), 0)
        for u in self.units:
            key = COUNT_KEYS.get(u.phase, "not_done")
            out[key] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "backfill_id": self.backfill_id,
            "resumed": self.resumed,
            "took_over_from": self.took_over_from,
            "state": self.state.value,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "not_done": [u.to_dict(self.now) for u in self.not_done],
            "failed": [{"run_key": k, "error": self.errors.get(k, "")} for k in self.failed],
            "blocked": [u.run_key for u in self.units if u.phase is Phase.BLOCKED],
            "trained": [
                {
                    "run_key": k,
                    **{
                        x: o.get(x)
                        for x in (
                            "mlflow_run_id",
                            "model_name",
                            "model_version",
                            "metrics",
                            "training",
                        )
                    },
                }
                for k, o in self.outputs.items()
                if o.get("kind") == "trained"
            ],
            "yielded": [
                {
                    "run_key": k,
                    "step": y.step,
                    "checkpoint": y.checkpoint,
                    "note": self.errors.get(k),
                }
                for k, y in self.yielded.items()
                if any(u.run_key == k and u.phase is Phase.YIELDED for u in self.units)
            ],
            "reconciled": list(self.reconciled),
            "invalidated": list(self.invalidated),
            "wall_s": round(self.wall_s, 3),
        }


def summarize(
    backfill_id: str,
    opened: Opened,
    core: BackfillCore,
    outputs: dict[str, dict[str, Any]],
    *,
    reconciled: list[str],
    invalidated: list[str],
    wall_s: float,
    now: float,
) -> BackfillSummary:
    reports = []
    yielded: dict[str, Yielded] = {}
    for key in core.order:
        run = core.runs[key]
        phase = run.phase if run.phase.is_terminal else Phase.NOT_DONE
        why = run.reason or ("" if run.phase.is_terminal else f"stopped while {run.phase.value}")
        reports.append(UnitReport(key, phase, why, run.holder))
        if isinstance(run.result, Yielded):
            yielded[key] = run.result
    return BackfillSummary(
        backfill_id,
        opened.resumed,
        core.final_state(),
        tuple(reports),
        outputs,
        yielded,
        opened.took_over_from.label() if opened.took_over_from else None,
        tuple(reconciled),
        tuple(invalidated),
        wall_s,
        now,
    )
