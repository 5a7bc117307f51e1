"""UI speed on a 30 x 90 (2,700-unit) backfill: the JSON API, the page, the grid in Chromium.

The backfill is written straight into a fresh SQLite ledger through the ledger's public API
(80% done, 3% failed, 7% running, 10% pending; ``rayorch.ui.testing``), served by the real
app over HTTP on loopback, and timed from a client: ``GET /api/backfills/{id}`` (every unit and
its state), ``GET /backfills/{id}`` (the server-rendered grid page), and the page loaded in
headless Chromium until every cell is in the DOM and the load event fired.

    python benchmarks/bench_ui.py [--requests 20] [--loads 5]

Targets (issue 17, 2 cores): API and page < 300 ms each, grid render in Chromium < 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def timed_get(url: str, n: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            body = r.read()
        times.append(time.perf_counter() - t)
        size = len(body)
    return times, size


def fmt(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):6.0f} ms   p95 {p95:6.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()
    os.environ["RAYORCH_HOME"] = tempfile.mkdtemp(prefix="bench-ui-")

    from rayorch.ledger.store import Ledger
    from rayorch.settings import load_settings
    from rayorch.spec import load_pipeline
    from rayorch.ui.app import UIConfig
    from rayorch.ui.server import BackgroundServer
    from rayorch.ui.testing import city_keys, write_backfill

    st = load_settings()
    ledger = Ledger(st.db_url)
    t = time.perf_counter()
    sb = write_backfill(
        ledger,
        load_pipeline(REPO / "configs/pricing.yaml"),
        "2026-01-01",
        "2026-03-31",
        city_keys(30),
    )
    print(
        f"wrote {len(sb.plan.units)} units through the ledger API in {time.perf_counter() - t:.2f}s"
    )
    rows = []
    with BackgroundServer(UIConfig(st)) as url:
        timed_get(f"{url}/backfills/{sb.backfill_id}", 2)  # warm templates and the pool
        api, api_size = timed_get(f"{url}/api/backfills/{sb.backfill_id}", args.requests)
        compact, compact_size = timed_get(
            f"{url}/api/backfills/{sb.backfill_id}?compact=1", args.requests
        )
        page, page_size = timed_get(f"{url}/backfills/{sb.backfill_id}", args.requests)
        rows += [
            ("GET /api/backfills/{id}", fmt(api), f"{api_size / 1e6:.2f} MB", "< 300 ms"),
            (
                "GET /api/backfills/{id}?compact=1 (poll)",
                fmt(compact),
                f"{compact_size / 1e6:.2f} MB",
                "-",
            ),
            ("GET /backfills/{id} (page)", fmt(page), f"{page_size / 1e6:.2f} MB", "< 300 ms"),
        ]
        rows.append(chromium_row(f"{url}/backfills/{sb.backfill_id}", args.loads))
    ledger.close()
    print(f"\n{'what':44} {'time':36} {'size':9} target")
    for what, took, size, target in rows:
        print(f"{what:44} {took:36} {size:9} {target}")


def chromium_row(url: str, loads: int) -> tuple[str, str, str, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        exe = None
    if exe is None:
        return ("grid render in Chromium", "skipped: no chromium/playwright", "", "< 1 s")
    walls, loaded = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        pg = b.new_page(viewport={"width": 1500, "height": 1000})
        pg.goto(url)  # warm the browser's process and caches once
        for _ in range(loads):
            t = time.perf_counter()
            pg.goto(url, wait_until="load")
            n = pg.eval_on_selector_all("a.cell", "els => els.length")
            walls.append(time.perf_counter() - t)
            nav = pg.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
            loaded.append(nav / 1000)
        b.close()
    assert n == 2700, n
    return (
        "grid render in Chromium (navigation -> load)",
        fmt(loaded),
        f"{n} cells",
        "< 1 s",
    )


if __name__ == "__main__":
    main()
