"""Server-side SVG charts (pure): a unit's training curves, no JavaScript or CDN needed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

Series = Sequence[tuple[float, float]]  # (step, value)

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    out, t = [], first
    while t <= hi + 1e-12:
        out.append(round(t, 12))
        t += step
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    series: Mapping[str, Series],
    *,
    title: str = "",
    width: int = 560,
    height: int = 260,
    x_label: str = "step",
) -> str:
    """One SVG with a line per series, shared axes, a legend. Empty series are left out."""
    data = {k: sorted(v) for k, v in series.items() if v}
    pad_l, pad_r, pad_t, pad_b = 52, 12, 26, 34
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title or "chart")}">'
        f'<text x="{pad_l}" y="16" class="chart-title">{escape(title)}</text>'
    )
    if not data:
        return head + f'<text x="{pad_l}" y="{height // 2}">no metrics logged</text></svg>'
    xs = [x for v in data.values() for x, _ in v]
    ys = [y for v in data.values() for _, y in v if math.isfinite(y)]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    iw, ih = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * iw

    def sy(y: float) -> float:
        return pad_t + ih - (y - y0) / (y1 - y0) * ih

    parts = [head]
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{iw}" height="{ih}" class="chart-frame"/>')
    for t in _ticks(y0, y1):
        y = sy(t)
        parts.append(
            f'<line x1="{pad_l}" x2="{pad_l + iw}" y1="{y:.1f}" y2="{y:.1f}" class="chart-grid"/>'
            f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in _ticks(x0, x1):
        x = sx(t)
        parts.append(
            f'<text x="{x:.1f}" y="{pad_t + ih + 14}" text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<text x="{pad_l + iw / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for i, (name, pts) in enumerate(data.items()):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if math.isfinite(y))
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8" '
            f'data-series="{escape(name)}"/>'
        )
        lx = pad_l + 8 + (i % 3) * 150
        ly = pad_t + 12 + (i // 3) * 14
        parts.append(
            f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly - 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
