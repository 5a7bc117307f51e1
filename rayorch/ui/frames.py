"""The UI's read model for notebooks: a backfill's units as a DataFrame, the grid as a plot.

Same states and colours as the web page (:mod:`rayorch.status.model`), so a notebook and
``rayorch ui`` never disagree about what is held or stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rayorch.ledger.store import Ledger
from rayorch.settings import Settings, load_settings
from rayorch.status.model import CELL_ORDER, build_grid
from rayorch.status.reader import BackfillDetail, ReadModel

if TYPE_CHECKING:
    import pandas as pd

#: The page's palette (static/ui.css), by display state.
COLORS = {
    "done": "#2e7d32",
    "running": "#1565c0",
    "pending": "#cfd8dc",
    "waiting for data": "#f9a825",
    "held": "#7b1fa2",
    "failed": "#c62828",
    "blocked": "#6d4c41",
    "stale": "#ef6c00",
}


def backfill_detail(
    backfill_id: str | None = None, settings: Settings | None = None
) -> BackfillDetail:
    """One backfill with every unit's display state (default: the newest backfill)."""
    ledger = Ledger((settings or load_settings()).db_url)
    try:
        model = ReadModel(ledger)
        if backfill_id is None:
            newest = model.list_backfills(limit=1)
            if not newest:
                from rayorch.errors import NotFoundError

                raise NotFoundError("the ledger has no backfills yet; run one first")
            backfill_id = newest[0].id
        return model.backfill(backfill_id)
    finally:
        ledger.close()


def status_frame(detail: BackfillDetail | str | None = None) -> pd.DataFrame:
    """One row per unit: step, partition, key row, date, state, attempts, token, error."""
    import pandas as pd

    d = detail if isinstance(detail, BackfillDetail) else backfill_detail(detail)
    cols = ("run_key", "step", "partition", "row", "date", "state", "attempts", "token", "error")
    return pd.DataFrame([{c: u.to_dict()[c] for c in cols} for u in d.units], columns=list(cols))


def plot_grid(
    detail: BackfillDetail | str | None = None, step: str | None = None, ax: Any = None
) -> Any:
    """The partition grid (keys x dates, one cell per unit, coloured by state) on ``ax``."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    d = detail if isinstance(detail, BackfillDetail) else backfill_detail(detail)
    step = step or (d.steps[0] if d.steps else "features")
    grid = build_grid(d.units, step)
    order = [s.value for s in CELL_ORDER]
    values = [
        [
            order.index(d.units[i].state.value)
            if (i := grid.at(r, day)) is not None
            else float("nan")
            for day in grid.days
        ]
        for r in grid.rows
    ]
    if ax is None:
        _, ax = plt.subplots(
            figsize=(max(4, 0.25 * len(grid.days) + 2), max(2, 0.3 * len(grid.rows) + 1))
        )
    cmap = ListedColormap([COLORS[s] for s in order])
    ax.imshow(values, cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5, aspect="auto")
    ax.set_yticks(range(len(grid.rows)), grid.rows)
    ax.set_xticks(range(len(grid.days)), [day[5:] for day in grid.days], rotation=90)
    ax.set_title(f"{d.backfill.pipeline} {d.backfill.id} - {step}")
    present = sorted({u.state.value for u in d.units if u.step == step}, key=order.index)
    ax.legend(
        handles=[Patch(color=COLORS[s], label=s) for s in present],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize="small",
    )
    return ax
