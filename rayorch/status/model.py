"""The UI's read model: what a person sees of a backfill, derived from ledger rows (pure).

The ledger is the source of truth; this module turns its rows into display states and a
partition grid, as functions of the values it is given (rows, the backfill, the clock), so
the pages, the JSON API, the CLI views and the notebooks agree on what "held" or "stale"
means. Everything the UI reads from the ledger goes through :mod:`rayorch.status.reader`; only
this module and that one need to change when the ledger's row types do.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayorch.ledger.rows import BackfillRow, UnitRow
from rayorch.ledger.states import BackfillState, UnitState

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ALL_KEYS = "(all keys)"


class CellState(str, enum.Enum):
    """A unit's state as shown: the ledger state refined by lease, sensor and plan facts."""

    DONE = "done"
    RUNNING = "running"
    PENDING = "pending"
    WAITING = "waiting for data"  # its input partition is not complete yet (sensor PENDING)
    HELD = "held"  # claimed by another backfill whose lease is live
    FAILED = "failed"
    BLOCKED = "blocked"  # an upstream unit did not finish, so it never ran
    STALE = "stale"  # done, but built by another config, code or environment than planned

    @property
    def css(self) -> str:
        return "s-" + self.name.lower()

    @property
    def finished(self) -> bool:
        return self in (CellState.DONE, CellState.FAILED)


#: Display order (legend, counts, CLI grid), most actionable first after done.
CELL_ORDER = (
    CellState.DONE,
    CellState.RUNNING,
    CellState.PENDING,
    CellState.WAITING,
    CellState.HELD,
    CellState.FAILED,
    CellState.BLOCKED,
    CellState.STALE,
)


def classify(
    row: UnitRow,
    backfill_id: str,
    now: float,
    blocked: frozenset[str] = frozenset(),
    stale: frozenset[str] = frozenset(),
) -> CellState:
    """One unit's display state.

    ``blocked``: run keys the backfill reports blocked (upstream not done); ``stale``: done
    units whose output was built by another config, code or environment (see
    :func:`stale_keys`). A claim whose lease ran out (its driver died) shows as pending: the
    next driver takes it over with a higher token.
    """
    if row.state is UnitState.DONE:
        return CellState.STALE if row.run_key in stale else CellState.DONE
    if row.state is UnitState.FAILED:
        return CellState.FAILED
    sensor = (row.progress or {}).get("sensor") or {}
    if row.state is UnitState.RUNNING and row.lease_live(now):
        if row.holder != backfill_id:
            return CellState.HELD
        if sensor.get("status") == "PENDING":
            return CellState.WAITING
        return CellState.RUNNING
    # PENDING (never claimed, released) or a RUNNING claim whose lease expired
    if row.run_key in blocked:
        return CellState.BLOCKED
    if (row.last_error or "").startswith("DataNotReadyError") or sensor.get("status") in (
        "PENDING",
        "REJECTED",
    ):
        return CellState.WAITING
    return CellState.PENDING


def stale_keys(
    rows: Iterable[UnitRow], current: Mapping[str, Mapping[str, str]] | None
) -> frozenset[str]:
    """Done units whose recorded producing version (config, code, env) differs from what a
    commit of their step would record now (``rayorch.api.current_versions``). Without the
    current versions (the UI does not know the pipeline's config) nothing is stale."""
    if not current:
        return frozenset()
    from rayorch.backfill.versions import changed_parts

    return frozenset(
        r.run_key
        for r in rows
        if r.state is UnitState.DONE
        and r.step in current
        and changed_parts(getattr(r, "version", None), current[r.step])
    )


def split_partition(partition: str) -> tuple[str, str]:
    """``city=SF/date=2026-10-01`` -> ("city=SF", "2026-10-01"): the grid's row and column."""
    keys, day = [], ""
    for seg in partition.split("/"):
        _, _, value = seg.partition("=")
        if not day and _DATE.match(value):
            day = value
        else:
            keys.append(seg)
    return ("/".join(keys) or ALL_KEYS), day


@dataclass(frozen=True, slots=True)
class UnitView:
    run_key: str
    step: str
    partition: str
    row: str  # the grid row: the partition's key values without the date
    day: str
    state: CellState
    ledger_state: str
    attempts: int
    token: int
    holder: str | None
    lease_until: float | None
    error: str | None
    updated_at: float
    committed_at: float | None
    committed_by: str | None
    mlflow_run_id: str | None
    progress: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "step": self.step,
            "partition": self.partition,
            "row": self.row,
            "date": self.day,
            "state": self.state.value,
            "ledger_state": self.ledger_state,
            "attempts": self.attempts,
            "token": self.token,
            "holder": self.holder,
            "lease_until": self.lease_until,
            "error": self.error,
            "updated_at": self.updated_at,
            "committed_at": self.committed_at,
            "committed_by": self.committed_by,
            "mlflow_run_id": self.mlflow_run_id,
        }


def unit_view(row: UnitRow, state: CellState) -> UnitView:
    grid_row, day = split_partition(row.partition)
    return UnitView(
        run_key=row.run_key,
        step=row.step,
        partition=row.partition,
        row=grid_row,
        day=day,
        state=state,
        ledger_state=row.state.value,
        attempts=row.attempts,
        token=row.token,
        holder=row.holder,
        lease_until=row.lease_until,
        error=row.last_error,
        updated_at=row.updated_at,
        committed_at=row.committed_at,
        committed_by=row.committed_by,
        mlflow_run_id=(row.output or {}).get("mlflow_run_id"),
        progress=row.progress,
    )


@dataclass(frozen=True, slots=True)
class BackfillView:
    id: str
    pipeline: str
    state: str
    start: str
    end: str
    keys: Mapping[str, Sequence[str]]
    steps: tuple[str, ...]
    owner: str
    created_at: float
    updated_at: float
    cancel_requested: bool
    counts: Mapping[str, int]  # display state value -> units
    total: int
    eta_s: float | None  # None: not running, or nothing finished yet to estimate from

    @property
    def active(self) -> bool:
        """Work may still change: the page refreshes itself while this holds."""
        return self.state in (BackfillState.RUNNING.value, BackfillState.CREATED.value)

    @property
    def finished(self) -> int:
        return self.counts.get(CellState.DONE.value, 0) + self.counts.get(CellState.FAILED.value, 0)

    @property
    def done_fraction(self) -> float:
        return self.counts.get(CellState.DONE.value, 0) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "state": self.state,
            "start": self.start,
            "end": self.end,
            "keys": {k: list(v) for k, v in self.keys.items()},
            "steps": list(self.steps),
            "owner": self.owner,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "cancel_requested": self.cancel_requested,
            "counts": dict(self.counts),
            "total": self.total,
            "done_fraction": round(self.done_fraction, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "active": self.active,
        }


def count_states(states: Iterable[CellState]) -> dict[str, int]:
    counts = {s.value: 0 for s in CELL_ORDER}
    for s in states:
        counts[s.value] += 1
    return counts


def eta_seconds(created_at: float, now: float, finished: int, total: int) -> float | None:
    """Remaining time at the rate units finished so far (None when there is no rate yet)."""
    if finished <= 0 or finished >= total or now <= created_at:
        return None if finished < total else 0.0
    rate = finished / (now - created_at)
    return (total - finished) / rate


def backfill_view(
    bf: BackfillRow, counts: Mapping[str, int], total: int, now: float
) -> BackfillView:
    params = bf.params or {}
    view = BackfillView(
        id=bf.id,
        pipeline=bf.pipeline,
        state=bf.state.value,
        start=str(params.get("start", "")),
        end=str(params.get("end", "")),
        keys=params.get("keys") or {},
        steps=tuple(params.get("steps") or ()),
        owner=bf.owner,
        created_at=bf.created_at,
        updated_at=bf.updated_at,
        cancel_requested=bf.cancel_requested,
        counts=dict(counts),
        total=total,
        eta_s=None,
    )
    if not view.active:
        return view
    eta = eta_seconds(bf.created_at, now, view.finished, total)
    return BackfillView(**{**_fields(view), "eta_s": eta})


def _fields(v: BackfillView) -> dict[str, Any]:
    return {f: getattr(v, f) for f in BackfillView.__slots__}


def blocked_keys(bf: BackfillRow) -> frozenset[str]:
    """Run keys the backfill's end summary reports as blocked (upstream not done)."""
    return frozenset((bf.summary or {}).get("blocked") or ())


def ledger_counts_as_cells(counts: Mapping[str, int]) -> dict[str, int]:
    """The list page's cheap counts (one GROUP BY on ledger states) in display terms."""
    out = {s.value: 0 for s in CELL_ORDER}
    for state, n in counts.items():
        out[_LEDGER_TO_CELL.get(state, CellState.PENDING).value] += n
    return out


_LEDGER_TO_CELL = {
    UnitState.DONE.value: CellState.DONE,
    UnitState.FAILED.value: CellState.FAILED,
    UnitState.RUNNING.value: CellState.RUNNING,
    UnitState.PENDING.value: CellState.PENDING,
}


@dataclass(frozen=True, slots=True)
class Grid:
    """One step's units as key rows x date columns; ``cells[(row, day)]`` is a unit index."""

    step: str
    rows: tuple[str, ...]
    days: tuple[str, ...]
    cells: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def at(self, row: str, day: str) -> int | None:
        return self.cells.get((row, day))


def build_grid(units: Sequence[UnitView], step: str) -> Grid:
    rows: dict[str, None] = {}
    days: set[str] = set()
    cells: dict[tuple[str, str], int] = {}
    for i, u in enumerate(units):
        if u.step != step:
            continue
        rows.setdefault(u.row, None)
        days.add(u.day)
        cells[(u.row, u.day)] = i
    return Grid(step, tuple(sorted(rows)), tuple(sorted(days)), cells)


def steps_of(units: Sequence[UnitView], planned: Sequence[str] = ()) -> tuple[str, ...]:
    """Steps in plan order (features before train), then any others found."""
    seen = list(planned)
    for u in units:
        if u.step not in seen:
            seen.append(u.step)
    return tuple(s for s in seen if any(u.step == s for u in units)) or tuple(planned)


def fmt_ts(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
