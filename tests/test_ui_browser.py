"""The UI in a real browser (headless Chromium from Debian, driven by Playwright) over real
backfills on Ray: every grid cell in its ledger state, a failed cell's real error, cancel
through the page, no console errors. Screenshots go to test-artifacts/ui/."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

import rayorch
from rayorch.ledger.states import BackfillState
from rayorch.ledger.store import Ledger
from rayorch.ui.app import UIConfig
from rayorch.ui.server import BackgroundServer
from rayorch.ui.testing import city_keys
from tests.helpers import small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.e2e]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
DAY = "2026-10-01"
BAD = f"city=C07/date={DAY}"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if exe is None:
        missing = (
            "no chromium on PATH (apt-get install chromium chromium-driver; scripts/test.sh does)"
        )
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests need a browser in CI: {missing}")
        pytest.skip(missing)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = ctx.new_page()
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
    yield pg
    ctx.close()


def test_grid_of_a_real_30_city_backfill(ray_session, tmp_path, settings, page):
    cfg = small_config(tmp_path, hours=2, rows=5, params={"fail_partitions": [BAD]})
    keys = city_keys(30)
    rayorch.generate_data(cfg, DAY, DAY, keys)
    summary = rayorch.run_backfill(cfg, DAY, DAY, keys, "features")
    bf_id = summary.backfill_id
    ledger = Ledger(settings.db_url)
    truth = {
        r.run_key: r.state.value for r in ledger.get_units(ledger.backfill_run_keys(bf_id)).values()
    }
    ledger.close()
    assert len(truth) == 30 and list(truth.values()).count("FAILED") == 1

    with BackgroundServer(UIConfig(settings)) as url:
        page.goto(f"{url}/backfills")
        page.wait_for_selector(f'tr[data-id="{bf_id}"]')
        page.screenshot(path=str(ARTIFACTS / "backfills.png"), full_page=True)

        page.goto(f"{url}/backfills/{bf_id}")
        cells = page.eval_on_selector_all(
            "a.cell", "els => els.map(e => [e.dataset.k, e.className])"
        )
        assert len(cells) == 30
        css = {"DONE": "s-done", "FAILED": "s-failed"}
        for key, cls in cells:
            assert css[truth[key]] in cls.split(), (key, cls, truth[key])

        failed_key = next(k for k, s in truth.items() if s == "FAILED")
        page.click(f'a.cell[data-k="{failed_key}"]')
        page.wait_for_selector("#unit-error")
        error = page.inner_text("#unit-error")
        assert f"injected failure for {BAD}" in error
        page.screenshot(path=str(ARTIFACTS / "grid-30-cities.png"), full_page=True)

        page.click('button.filter[data-filter="failed"]')
        assert page.get_attribute("#grid", "data-filter") == "failed"
        page.goto(f"{url}/cluster")
        page.wait_for_selector("h1")
        page.screenshot(path=str(ARTIFACTS / "cluster.png"), full_page=True)
    assert page.console_errors == []


def test_cancel_through_the_page(ray_session, tmp_path, settings, page):
    cfg = small_config(tmp_path, hours=2, rows=5, params={"sleep_s": 1.0})
    keys = city_keys(12)
    rayorch.generate_data(cfg, DAY, DAY, keys)
    result: dict[str, object] = {}

    def drive() -> None:
        try:
            result["summary"] = rayorch.run_backfill(
                cfg, DAY, DAY, keys, "features", max_concurrency=1, lease_s=3.0
            )
        except BaseException as e:  # reported below, instead of a bare selector timeout
            result["error"] = e
            raise

    worker = threading.Thread(target=drive, daemon=True)
    worker.start()
    ledger = Ledger(settings.db_url)
    try:
        with BackgroundServer(UIConfig(settings, allow_actions=True, refresh_s=0.5)) as url:
            page.goto(f"{url}/backfills")
            try:
                page.wait_for_selector("tr[data-id] a", timeout=60_000)
            except Exception:
                pytest.fail(f"no backfill on the page; driver: {result}, ledger: "
                            f"{[(b.id, b.state) for b in ledger.list_backfills()]}")  # fmt: skip
            page.click("tr[data-id] a")
            page.wait_for_selector("a.cell.s-running, a.cell.s-done", timeout=60_000)
            bf_id = page.get_attribute("body", "data-backfill")
            # auto-refresh: cells move to done in place while the page stays loaded
            page.evaluate("window.__sameDocument = true")
            before = page.eval_on_selector_all("a.cell.s-done", "els => els.length")
            page.wait_for_function(
                f"document.querySelectorAll('a.cell.s-done').length > {before}", timeout=30_000
            )
            assert page.evaluate("window.__sameDocument === true")  # no reload happened
            page.click("#act-cancel")
            page.wait_for_selector("#plan-summary")
            assert "unfinished units are released" in page.inner_text("#plan-summary")
            page.screenshot(path=str(ARTIFACTS / "cancel-dry-run.png"), full_page=True)
            page.click("#confirm")
            page.wait_for_selector("#action-result")
            assert "cancel requested" in page.inner_text("#action-result")
            worker.join(timeout=120)
            assert not worker.is_alive()
            assert ledger.get_backfill(bf_id).state is BackfillState.CANCELLED
            page.click("#back")
            page.wait_for_selector("#bf-state")
            assert "CANCELLED" in page.inner_text("#bf-state")
            page.screenshot(path=str(ARTIFACTS / "cancelled.png"), full_page=True)
    finally:
        ledger.close()
    assert result["summary"].state is BackfillState.CANCELLED
    assert page.console_errors == []


def test_retry_failed_and_reprocess_selected_through_the_page(
    ray_session, tmp_path, settings, page
):
    flaky = f"city=SF/date={DAY}"
    cfg = small_config(
        tmp_path, hours=2, rows=5, params={"fail_partitions": [flaky], "fail_times": 1}
    )
    rayorch.generate_data(cfg, DAY, DAY)
    first = rayorch.run_backfill(cfg, DAY, DAY, steps="features")
    assert first.state is BackfillState.FAILED
    bf_id = first.backfill_id
    ui = UIConfig(settings, allow_actions=True, configs={"fraud": str(cfg)})
    ledger = Ledger(settings.db_url)
    try:
        with BackgroundServer(ui) as url:
            page.goto(f"{url}/backfills/{bf_id}")
            # reprocess selected: pick two cells, read the dry run (not executed here)
            page.check("#select-mode")
            picked = page.eval_on_selector_all(
                "a.cell", "els => els.slice(0, 2).map(e => e.dataset.k)"
            )
            for k in picked:
                page.click(f'a.cell[data-k="{k}"]')
            page.click("#act-reprocess")
            page.wait_for_selector("#plan-units")
            listed = page.inner_text("#plan-units")
            assert all(k in listed for k in picked)
            assert "--reprocess all" in page.inner_text("#plan-command")

            page.goto(f"{url}/backfills/{bf_id}/actions/retry")
            assert f"{flaky}" in page.inner_text("#plan-units")
            assert "--resume " + bf_id in page.inner_text("#plan-command")
            page.screenshot(path=str(ARTIFACTS / "retry-dry-run.png"), full_page=True)
            page.click("#confirm")
            page.wait_for_selector("#action-result")
            assert "started `rayorch backfill" in page.inner_text("#action-result")
            deadline = time.monotonic() + 150  # the retry is its own process (and Ray)
            while ledger.get_backfill(bf_id).state is not BackfillState.SUCCEEDED:
                assert time.monotonic() < deadline, ledger.get_backfill(bf_id)
                time.sleep(1)
            page.click("#back")
            assert "SUCCEEDED" in page.inner_text("#bf-state")
            page.screenshot(path=str(ARTIFACTS / "retried.png"), full_page=True)
        row = ledger.get_units([f"fraud/features/{flaky}"])[f"fraud/features/{flaky}"]
        assert row.state.value == "DONE" and row.attempts == 2
        assert ledger.get_backfill(bf_id).state is BackfillState.SUCCEEDED
    finally:
        ledger.close()
    assert page.console_errors == []
