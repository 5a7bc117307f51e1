"""The pure backfill planner: date range x key values -> units with deterministic run keys.

``plan_backfill`` returns the very object the driver executes and ``--dry-run`` prints. It
does no I/O; ``annotate`` adds what the ledger already knows (done, failed, held) to a plan,
again as a pure function of the values it is given.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayorch.errors import ConfigError
from rayorch.ledger.states import Reprocess, UnitState
from rayorch.partitions import PartitionKey, date_range, key_product
from rayorch.spec import PipelineSpec

if TYPE_CHECKING:
    from rayorch.ledger.rows import UnitRow


class Step(str, enum.Enum):
    FEATURES = "features"
    TRAIN = "train"


ALL_STEPS = (Step.FEATURES, Step.TRAIN)


def parse_steps(text: str | Sequence[str] | None) -> tuple[Step, ...]:
    if text is None:
        return ALL_STEPS
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Step] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            step = Step(item)
        except ValueError:
            raise ConfigError(
                f"--steps: unknown step {item!r}; choose from {', '.join(s.value for s in Step)}",
                field="steps",
            ) from None
        if step not in out:
            out.append(step)
    if not out:
        raise ConfigError("--steps names no step", field="steps")
    return tuple(sorted(out, key=ALL_STEPS.index))


def make_run_key(pipeline: str, step: Step, partition: PartitionKey, scope: str = "") -> str:
    """Deterministic identity of a unit: the same plan always yields the same keys."""
    base = f"{pipeline}/{step.value}/{partition}"
    return f"{base}@{scope}" if scope else base


@dataclass(frozen=True, slots=True)
class Unit:
    run_key: str
    step: Step
    partition: PartitionKey
    day: dt.date
    inputs: tuple[PartitionKey, ...] = ()  # partitions read (raw for features, features for train)
    depends_on: tuple[str, ...] = ()  # run keys that must be DONE first (within this plan)
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "step": self.step.value,
            "partition": str(self.partition),
            "day": self.day.isoformat(),
            "inputs": [str(p) for p in self.inputs],
            "depends_on": list(self.depends_on),
            "resources": {"cpus": self.cpus, "gpus": self.gpus, "workers": self.workers},
        }


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    pipeline: str
    start: dt.date
    end: dt.date
    keys: dict[str, list[str]]
    steps: tuple[Step, ...]
    units: tuple[Unit, ...]
    config_fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)

    def by_step(self, step: Step) -> list[Unit]:
        return [u for u in self.units if u.step is step]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "keys": self.keys,
            "steps": [s.value for s in self.steps],
            "config_fingerprint": self.config_fingerprint,
            "counts": {s.value: len(self.by_step(s)) for s in self.steps},
            "units": [u.to_dict() for u in self.units],
        }


def plan_backfill(
    spec: PipelineSpec,
    start: str | dt.date,
    end: str | dt.date,
    keys: dict[str, list[str]] | None = None,
    steps: Sequence[Step] | str | None = None,
) -> BackfillPlan:
    """Plan features per (key, day) and training per as-of day.

    Training for as-of day D reads features for days D-window+1 .. D, so feature units are
    planned for the look-back days before ``start`` as well.
    """
    days = date_range(start, end)
    step_set = parse_steps(
        steps
        if steps is None or isinstance(steps, str)
        else [s.value if isinstance(s, Step) else s for s in steps]
    )
    if steps is None and spec.train is None:
        step_set = (Step.FEATURES,)  # default: every step the pipeline has
    if Step.TRAIN in step_set and spec.train is None:
        raise ConfigError(
            f"pipeline {spec.name!r} has no train section; use --steps features",
            field="train",
        )
    selection = spec.select_keys(keys)
    combos = [dict(kv) for kv in key_product(selection)]
    window = spec.train.window_days if spec.train and Step.TRAIN in step_set else 1
    feature_days = date_range(days[0] - dt.timedelta(days=window - 1), days[-1])
    tdim = spec.time_dim
    units: list[Unit] = []
    feature_keys: dict[tuple[dt.date, tuple[tuple[str, str], ...]], str] = {}
    if Step.FEATURES in step_set:
        for day in feature_days:
            for kv in combos:
                pk = PartitionKey.of(kv, **{tdim: day.isoformat()})
                rk = make_run_key(spec.name, Step.FEATURES, pk)
                feature_keys[(day, tuple(sorted(kv.items())))] = rk
                units.append(
                    Unit(rk, Step.FEATURES, pk, day, inputs=(pk,), cpus=spec.features.num_cpus)
                )
    if Step.TRAIN in step_set and spec.train is not None:
        scope = _scope(spec, selection)
        sc = spec.train.scaling
        for day in days:
            pk = PartitionKey.of({tdim: day.isoformat()})
            window_days = [day - dt.timedelta(days=i) for i in range(window - 1, -1, -1)]
            inputs = tuple(
                PartitionKey.of(kv, **{tdim: d.isoformat()}) for d in window_days for kv in combos
            )
            deps = tuple(
                feature_keys[(d, tuple(sorted(kv.items())))]
                for d in window_days
                for kv in combos
                if (d, tuple(sorted(kv.items()))) in feature_keys
            )
            units.append(
                Unit(
                    make_run_key(spec.name, Step.TRAIN, pk, scope),
                    Step.TRAIN,
                    pk,
                    day,
                    inputs=inputs,
                    depends_on=deps,
                    cpus=sc.cpus_per_worker * sc.num_workers,
                    gpus=sc.gpus_per_worker * sc.num_workers,
                    workers=sc.num_workers,
                )
            )
    params = {
        "pipeline": spec.name,
        "start": days[0].isoformat(),
        "end": days[-1].isoformat(),
        "keys": selection,
        "steps": [s.value for s in step_set],
    }
    return BackfillPlan(
        spec.name, days[0], days[-1], selection, step_set, tuple(units), spec.fingerprint(), params
    )


def _scope(spec: PipelineSpec, selection: Mapping[str, list[str]]) -> str:
    """Training scope tag, empty when training covers every configured key value."""
    if {d: sorted(v) for d, v in selection.items()} == {
        d: sorted(v) for d, v in spec.partitions.keys.items()
    }:
        return ""
    return ";".join(f"{d}={'+'.join(sorted(v))}" for d, v in sorted(selection.items()))


class UnitPlanStatus(str, enum.Enum):
    NEW = "new"
    WILL_RUN = "will run"  # known, not done (pending or expired claim)
    ALREADY_DONE = "already done"
    WILL_RERUN = "will re-run"  # done or failed, and the reprocess policy re-runs it
    FAILED_BEFORE = "failed before"
    HELD = "held by another backfill"
    STALE = "stale"  # done, but built by another config, code or environment


@dataclass(frozen=True, slots=True)
class AnnotatedUnit:
    unit: Unit
    status: UnitPlanStatus
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.unit.to_dict(), "status": self.status.value, "detail": self.detail}


def annotate(
    plan: BackfillPlan,
    known: Mapping[str, UnitRow],
    now: float,
    reprocess: Reprocess = Reprocess.MISSING,
    own_backfill: str | None = None,
    stale: Mapping[str, Sequence[str]] | None = None,
) -> list[AnnotatedUnit]:
    """What would happen to each unit if the plan ran now. ``stale``: committed units built
    by another version, with the parts that changed (see rayorch.backfill.versions)."""
    out: list[AnnotatedUnit] = []
    claimable = reprocess.claimable()
    stale = stale or {}
    for u in plan.units:
        row = known.get(u.run_key)
        if row is None:
            out.append(AnnotatedUnit(u, UnitPlanStatus.NEW))
            continue
        if row.lease_live(now) and row.holder != own_backfill:
            out.append(
                AnnotatedUnit(u, UnitPlanStatus.HELD, f"held by {row.holder} (token {row.token})")
            )
        elif row.state is UnitState.DONE:
            detail = f"committed {_iso(row.committed_at)} by {row.committed_by}"
            changed = stale.get(u.run_key)
            if changed:
                detail = f"built by another {'/'.join(changed)} ({u.step.value}); " + detail
            if UnitState.DONE in claimable or (changed and reprocess is Reprocess.STALE):
                status = UnitPlanStatus.WILL_RERUN
            elif changed:
                status = UnitPlanStatus.STALE
            else:
                status = UnitPlanStatus.ALREADY_DONE
            out.append(AnnotatedUnit(u, status, detail))
        elif row.state is UnitState.FAILED:
            detail = (
                f"failed: {(row.last_error or '').splitlines()[0][:160] if row.last_error else ''}"
            )
            status = (
                UnitPlanStatus.WILL_RERUN
                if UnitState.FAILED in claimable
                else UnitPlanStatus.FAILED_BEFORE
            )
            out.append(AnnotatedUnit(u, status, detail))
        else:
            out.append(AnnotatedUnit(u, UnitPlanStatus.WILL_RUN))
    return out


def _iso(ts: float | None) -> str:
    if ts is None:
        return "?"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
