"""Readable summaries of large plans and backfills for `rayorch plan` and `rayorch status -b`.

A 30 x 90 plan is 2,700 rows as a table; people want counts by step and status and a compact
key x date grid (one character per unit), readable at 80 columns. Every unit is printed only
with ``--all`` (or ``--json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from rayorch.backfill.plan import AnnotatedUnit, UnitPlanStatus
from rayorch.status.model import CELL_ORDER, CellState, split_partition
from rayorch.status.reader import BackfillDetail

#: One character and a style per plan status (single-width, ASCII-safe fallbacks in legend).
PLAN_GLYPHS: dict[str, tuple[str, str]] = {
    UnitPlanStatus.NEW.value: ("o", "cyan"),
    UnitPlanStatus.WILL_RUN.value: ("o", "blue"),
    UnitPlanStatus.ALREADY_DONE.value: ("#", "green"),
    UnitPlanStatus.WILL_RERUN.value: ("R", "yellow"),
    UnitPlanStatus.FAILED_BEFORE.value: ("x", "red"),
    UnitPlanStatus.HELD.value: ("H", "magenta"),
}

CELL_GLYPHS: dict[str, tuple[str, str]] = {
    CellState.DONE.value: ("#", "green"),
    CellState.RUNNING.value: (">", "blue"),
    CellState.PENDING.value: (".", "dim"),
    CellState.WAITING.value: ("w", "yellow"),
    CellState.HELD.value: ("H", "magenta"),
    CellState.FAILED.value: ("x", "bold red"),
    CellState.BLOCKED.value: ("b", "red"),
    CellState.STALE.value: ("s", "dark_orange"),
}


def counts_table(
    rows: Iterable[tuple[str, str]], statuses: Sequence[str], title: str = ""
) -> Table:
    """Units by step (rows) and status (columns); only statuses that occur get a column."""
    by: dict[str, dict[str, int]] = {}
    for step, status in rows:
        by.setdefault(step, {}).setdefault(status, 0)
        by[step][status] += 1
    present = [s for s in statuses if any(s in c for c in by.values())]
    present += sorted({s for c in by.values() for s in c} - set(present))
    table = Table(title=title or None, title_justify="left")
    table.add_column("step")
    for s in present:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for step, c in by.items():
        table.add_row(step, *[str(c.get(s, 0) or "") for s in present], str(sum(c.values())))
    return table


def key_date_grid(
    cells: Iterable[tuple[str, str, str]],
    glyphs: Mapping[str, tuple[str, str]],
    width: int = 80,
) -> list[Text]:
    """(row, day, status) -> lines of one character per unit, wrapped into date blocks."""
    grid: dict[str, dict[str, str]] = {}
    days: set[str] = set()
    for row, day, status in cells:
        grid.setdefault(row, {})[day] = status
        days.add(day)
    if not grid:
        return []
    ordered = sorted(days)
    label_w = min(max(len(r) for r in grid), 24)
    per_block = max(7, width - label_w - 2)
    lines: list[Text] = []
    for b in range(0, len(ordered), per_block):
        block = ordered[b : b + per_block]
        span = f"{block[0]} .. {block[-1]}" if len(block) > 1 else block[0]
        if label_w + 1 + len(span) > width:
            span = f"{block[0][5:]}..{block[-1][5:]}"
        head = Text(" " * (label_w + 1))
        head.append(span[: max(0, width - label_w - 1)], style="dim")
        lines.append(head)
        for row in sorted(grid):
            line = Text(row[:label_w].ljust(label_w) + " ")
            for day in block:
                status = grid[row].get(day)
                ch, style = glyphs.get(status or "", (" ", ""))
                line.append(ch, style=style)
            lines.append(line)
    return lines


def legend(glyphs: Mapping[str, tuple[str, str]], present: Iterable[str]) -> Text:
    seen = set(present)
    out = Text()
    for status, (ch, style) in glyphs.items():
        if status in seen:
            out.append(ch, style=style)
            out.append(f" {status}   ")
    return out


def plan_summary(annotated: Sequence[AnnotatedUnit], width: int = 80) -> RenderableType:
    """Counts by step and status, then one grid per step (keys x dates)."""
    statuses = [s.value for s in UnitPlanStatus]
    parts: list[RenderableType] = [
        counts_table(((a.unit.step.value, a.status.value) for a in annotated), statuses)
    ]
    steps = list(dict.fromkeys(a.unit.step.value for a in annotated))
    for step in steps:
        cells = [
            (*split_partition(str(a.unit.partition)), a.status.value)
            for a in annotated
            if a.unit.step.value == step
        ]
        parts.append(Text(f"\n{step}", style="bold"))
        parts.extend(key_date_grid(cells, PLAN_GLYPHS, width))
    parts.append(legend(PLAN_GLYPHS, (a.status.value for a in annotated)))
    parts.append(Text("every unit: --all (table) or --json", style="dim"))
    return Group(*parts)


def backfill_summary(detail: BackfillDetail, width: int = 80) -> RenderableType:
    """`rayorch status -b ID` for people: counts, grids, and the units needing attention."""
    bf = detail.backfill
    order = [s.value for s in CELL_ORDER]
    head = Text(f"backfill {bf.id} ({bf.state}) {bf.pipeline} {bf.start} .. {bf.end}", style="bold")
    parts: list[RenderableType] = [
        head,
        counts_table(((u.step, u.state.value) for u in detail.units), order),
    ]
    for step in detail.steps:
        parts.append(Text(f"\n{step}", style="bold"))
        parts.extend(
            key_date_grid(
                ((u.row, u.day, u.state.value) for u in detail.units if u.step == step),
                CELL_GLYPHS,
                width,
            )
        )
    parts.append(legend(CELL_GLYPHS, (u.state.value for u in detail.units)))
    attention = [u for u in detail.units if u.state in (CellState.FAILED, CellState.HELD)]
    for u in attention[:10]:
        first = (u.error or u.holder or "").splitlines()[0][:200] if (u.error or u.holder) else ""
        parts.append(Text(f"{u.state.value} {u.run_key}: {first}", style="red"))
    if len(attention) > 10:
        parts.append(Text(f"... {len(attention) - 10} more failed or held", style="red"))
    parts.append(Text("every unit: --all (table) or --json; rayorch ui for the grid", style="dim"))
    return Group(*parts)
