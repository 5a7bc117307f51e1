"""The UI's read model, views, actions and JSON API (no Ray; the app through its test client)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from rayorch.cli.views import backfill_summary, key_date_grid, plan_summary
from rayorch.ledger.rows import UnitRow
from rayorch.ledger.states import UnitState
from rayorch.ledger.store import Ledger
from rayorch.status.model import (
    ALL_KEYS,
    CellState,
    build_grid,
    classify,
    eta_seconds,
    split_partition,
    stale_keys,
)
from rayorch.status.reader import ReadModel
from rayorch.ui import actions as act
from rayorch.ui.app import UIConfig, create_app
from rayorch.ui.charts import line_chart
from rayorch.ui.cluster import preemptions, slot_rows
from rayorch.ui.server import check_bind
from rayorch.ui.testing import city_keys, write_backfill
from tests.conftest import CONFIGS

NOW = 1_000.0


def row(state: UnitState, **kw) -> UnitRow:
    base = dict(
        run_key="p/features/city=SF/date=2026-10-01",
        step="features",
        partition="city=SF/date=2026-10-01",
        state=state,
        token=1,
        holder=None,
        lease_until=None,
        attempts=1,
        last_error=None,
        committed_token=None,
        committed_at=None,
        committed_by=None,
        output=None,
        progress=None,
        updated_at=NOW,
    )
    return UnitRow(**(base | kw))


LIVE = {"holder": "bf-me", "lease_until": NOW + 30}


@pytest.mark.parametrize(
    ("unit", "blocked", "stale", "want"),
    [
        (row(UnitState.DONE), False, False, CellState.DONE),
        (row(UnitState.DONE), False, True, CellState.STALE),
        (row(UnitState.FAILED, last_error="boom"), False, False, CellState.FAILED),
        (row(UnitState.RUNNING, **LIVE), False, False, CellState.RUNNING),
        (
            row(UnitState.RUNNING, holder="bf-other", lease_until=NOW + 30),
            False,
            False,
            CellState.HELD,
        ),
        (
            row(UnitState.RUNNING, holder="bf-me", lease_until=NOW - 1),
            False,
            False,
            CellState.PENDING,
        ),
        (
            row(UnitState.RUNNING, **LIVE, progress={"sensor": {"status": "PENDING"}}),
            False,
            False,
            CellState.WAITING,
        ),
        (
            row(UnitState.PENDING, last_error="DataNotReadyError: input x REJECTED: schema"),
            False,
            False,
            CellState.WAITING,
        ),
        (row(UnitState.PENDING, attempts=0), True, False, CellState.BLOCKED),
        (row(UnitState.PENDING, attempts=0), False, False, CellState.PENDING),
    ],
)
def test_classify(unit, blocked, stale, want):
    keys = frozenset({unit.run_key})
    got = classify(
        unit, "bf-me", NOW, keys if blocked else frozenset(), keys if stale else frozenset()
    )
    assert got is want


@pytest.mark.parametrize(
    ("partition", "want"),
    [
        ("city=SF/date=2026-10-01", ("city=SF", "2026-10-01")),
        ("date=2026-10-01", (ALL_KEYS, "2026-10-01")),
        ("city=SF/date=2026-10-01/region=west", ("city=SF/region=west", "2026-10-01")),
    ],
)
def test_split_partition(partition, want):
    assert split_partition(partition) == want


@pytest.mark.parametrize(
    ("created", "now", "finished", "total", "want"),
    [(0, 10, 5, 10, 10.0), (0, 10, 0, 10, None), (0, 10, 10, 10, 0.0), (0, 30, 10, 40, 90.0)],
)
def test_eta(created, now, finished, total, want):
    assert eta_seconds(created, now, finished, total) == want


def test_stale_keys_compare_the_producing_version():
    v = {"config": "c1", "code": "k1", "env": "e1"}
    rows = [
        row(UnitState.DONE, run_key="a", version={**v, "code": "k0"}),
        row(UnitState.DONE, run_key="b", version=v),
        row(UnitState.DONE, run_key="c"),  # no record: unknown, not stale
        row(UnitState.FAILED, run_key="d", version={**v, "env": "e0"}),
    ]
    assert stale_keys(rows, {"features": v}) == {"a"}
    assert stale_keys(rows, None) == frozenset()


def test_chart_has_one_line_per_series_and_handles_empty():
    svg = line_chart({"train_loss": [(0, 1.0), (1, 0.5)], "val_loss": [(0, 1.2), (1, 0.9)]})
    assert svg.count("<polyline") == 2 and 'data-series="val_loss"' in svg
    assert "no metrics logged" in line_chart({})


def test_slot_rows_and_preemptions():
    report = {
        "nodes": [{"node_id": "n1", "shape": "A100:4", "gpus": 4, "used_gpus": 3}],
        "running": [
            {"workload_id": "w1", "placement": {"bundles": [{"node_id": "n1", "gpus": 2}]}},
            {"workload_id": "w2", "placement": {"bundles": [{"node_id": "n1", "gpus": 1}]}},
        ],
    }
    (n,) = slot_rows(report)
    assert n.slots == ("w1", "w1", "w2", None)
    evs = [
        {"event": "preempt", "seq": 1},
        {"event": "admitted", "seq": 2},
        {"event": "preempt", "seq": 3},
    ]
    assert [e["seq"] for e in preemptions(evs)] == [3, 1]


@pytest.mark.parametrize(
    ("host", "actions", "remote", "ok"),
    [
        ("127.0.0.1", True, False, True),
        ("localhost", True, False, True),
        ("0.0.0.0", False, False, True),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", True, True, True),
    ],
)
def test_actions_bind_to_loopback_unless_told(host, actions, remote, ok):
    from rayorch.errors import ConfigError

    if ok:
        check_bind(host, actions, remote)
    else:
        with pytest.raises(ConfigError, match="--allow-remote-actions"):
            check_bind(host, actions, remote)


def test_key_date_grid_wraps_at_width():
    cells = [(f"city=C{k}", f"2026-01-{d:02d}", "done") for k in range(3) for d in range(1, 31)]
    lines = key_date_grid(cells, {"done": ("#", "")}, width=30)
    assert max(len(t.plain) for t in lines) <= 30
    assert sum(t.plain.count("#") for t in lines) == 90


# -- a 2,700-unit backfill written through the ledger's public API ------------------------------
@pytest.fixture()
def big(settings, fraud_spec):
    from rayorch.spec import load_pipeline

    ledger = Ledger(settings.db_url)
    sb = write_backfill(
        ledger, load_pipeline(CONFIGS / "pricing.yaml"), "2026-01-01", "2026-03-31", city_keys(30)
    )
    yield ledger, sb
    ledger.close()


def test_read_model_and_grid_of_2700_units(big):
    ledger, sb = big
    d = ReadModel(ledger).backfill(sb.backfill_id)
    assert len(d.units) == 2700 and d.backfill.total == 2700
    assert d.backfill.counts["failed"] == len(sb.failed) == 81
    assert d.backfill.counts["done"] == len(sb.done)
    grid = build_grid(d.units, "features")
    assert len(grid.rows) == 30 and len(grid.days) == 90
    assert d.units[grid.at("city=C07", "2026-02-01")].partition == "city=C07/date=2026-02-01"
    text = "".join(str(x) for x in backfill_summary(d).renderables)
    assert "features" in text


def test_plan_summary_counts_every_unit(fraud_spec):
    from rayorch.backfill.plan import annotate, plan_backfill

    plan = plan_backfill(fraud_spec, "2026-10-01", "2026-10-03")
    group = plan_summary(annotate(plan, {}, NOW))
    grid_chars = sum(getattr(r, "plain", "").count("o") for r in group.renderables[1:-2])
    assert grid_chars >= len(plan.units)


def test_an_empty_list_reloads_until_a_backfill_appears(settings):
    """A page opened before the first backfill starts must show it without a manual reload."""
    c = TestClient(create_app(UIConfig(settings)))
    page = c.get("/backfills").text
    assert "No backfills in the ledger yet" in page
    assert 'data-reload="1"' in page


def test_api_lists_backfills_and_every_unit_state(big, settings):
    _, sb = big
    c = TestClient(create_app(UIConfig(settings)))
    listed = c.get("/api/backfills").json()["backfills"]
    assert [b["id"] for b in listed] == [sb.backfill_id]
    body = c.get(f"/api/backfills/{sb.backfill_id}").json()
    states = {u["run_key"]: u["state"] for u in body["units"]}
    assert len(states) == 2700
    assert {states[k] for k in sb.failed} == {"failed"}
    assert {states[k] for k in sb.running} == {"running"}
    assert {states[k] for k in sb.pending} == {"pending"}
    page = c.get(f"/backfills/{sb.backfill_id}").text
    assert page.count('class="cell ') == 2700
    assert page.count('class="cell s-failed"') == 81
    unit = c.get(f"/api/units/{sb.failed[0]}", params={"backfill": sb.backfill_id}).json()
    assert "injected failure" in unit["unit"]["error"]
    assert [e["event"] for e in unit["events"]] == ["CLAIM", "FAIL"]
    assert c.get("/api/backfills/bf-nope").status_code == 404
    assert c.get("/backfills/bf-nope").status_code == 404


def test_actions_need_the_flag_and_a_csrf_token(big, settings):
    ledger, sb = big
    off = TestClient(create_app(UIConfig(settings)))
    assert off.get(f"/backfills/{sb.backfill_id}/actions/cancel").status_code == 409
    assert "Cancel backfill" not in off.get(f"/backfills/{sb.backfill_id}").text

    on = TestClient(create_app(UIConfig(settings, allow_actions=True)))
    preview = on.get(f"/backfills/{sb.backfill_id}/actions/cancel")
    assert preview.status_code == 200 and "dry run" in preview.text
    n_open = len(sb.running) + len(sb.pending)
    assert f"Units ({n_open})" in preview.text
    assert not ledger.get_backfill(sb.backfill_id).cancel_requested  # the preview changed nothing
    url = f"/backfills/{sb.backfill_id}/actions/cancel"
    assert on.post(url, data={"csrf": "forged"}).status_code == 403
    assert not ledger.get_backfill(sb.backfill_id).cancel_requested
    token = re.search(r'name="csrf" value="([^"]+)"', preview.text).group(1)
    done = on.post(url, data={"csrf": token})
    assert done.status_code == 200 and "cancel requested" in done.text
    assert ledger.get_backfill(sb.backfill_id).cancel_requested


def test_retry_and_reprocess_plans(big, settings):
    ledger, sb = big
    d = ReadModel(ledger).backfill(sb.backfill_id)
    cfg = str(CONFIGS / "pricing.yaml")
    retry = act.plan_retry(d, cfg)
    assert set(retry.units) == set(sb.failed)
    assert "still running" in (retry.refused or "")  # its driver (this process) is alive
    assert retry.command[-4:] == ("--resume", sb.backfill_id, "--reprocess", "failed")

    picked = [sb.failed[0], sb.done[0]]
    draft = act.plan_reprocess(d, picked, cfg)
    assert draft.refused is None and set(draft.units) == set(picked)
    assert "--reprocess" in draft.command and draft.command[-1] == "all"
    assert act.plan_reprocess(d, picked, None).refused  # no config: says how to give one


def test_cluster_page_shows_slots_queue_reasons_quota_and_preemptions(settings):
    report = {
        "scheduler": "running",
        "policy": "rayorch",
        "cycles": 7,
        "total_gpus": 8,
        "free_gpus": 3,
        "stranded_gpus": 2,
        "nodes": [
            {
                "node_id": "node-a",
                "shape": "A100:8",
                "gpus": 8,
                "used_gpus": 5,
                "free_cpus": 10.0,
                "stranded_gpus": 2,
            }
        ],
        "running": [
            {
                "workload_id": "fraud/train/d1",
                "placement": {"bundles": [{"node_id": "node-a", "gpus": 4}]},
            },
            {
                "workload_id": "pricing/train/d2",
                "placement": {"bundles": [{"node_id": "node-a", "gpus": 1}]},
            },
        ],
        "queue": [
            {
                "workload_id": "ranking/train/d3",
                "namespace": "ads",
                "priority": "backfill",
                "shape": "1x4",
                "decision": {
                    "outcome": "NO_FIT",
                    "reason": "QUOTA",
                    "detail": "ads over its 4-GPU quota",
                },
            }
        ],
        "namespaces": {
            "ads": {
                "gpus_used": 4,
                "gpus_quota": 4,
                "units": 1,
                "max_concurrent_units": 2,
                "can_borrow": False,
            }
        },
        "preemptions": [
            {
                "event": "preempt",
                "seq": 3,
                "cycle": 5,
                "at": NOW,
                "workload_id": "fraud/train/d0",
                "for_workload": "prod/x",
            }
        ],
        "suggestions": [],
        "error": None,
    }
    c = TestClient(create_app(UIConfig(settings, cluster_status=lambda _addr: report)))
    html = c.get("/cluster").text
    assert html.count('class="slot held"') == 5 and html.count('class="slot free"') == 3
    assert "ads over its 4-GPU quota" in html and "QUOTA" in html
    assert "fraud/train/d0" in html and "prod/x" in html  # the preemption, victim and winner
    assert "4 / 4" in html  # quota use
    assert c.get("/api/cluster").json()["stranded_gpus"] == 2


def test_training_curves_from_a_real_mlflow_run(settings):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    exp = client.create_experiment("ui-curves")
    run = client.create_run(exp)
    for step in range(5):
        client.log_metric(run.info.run_id, "train_loss", 1.0 / (step + 1), step=step)
        client.log_metric(run.info.run_id, "val_auc", 0.5 + step / 10, step=step)
    c = TestClient(create_app(UIConfig(settings)))
    svg = c.get(f"/runs/{run.info.run_id}/curves.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert 'data-series="train_loss"' in svg.text and 'data-series="val_auc"' in svg.text
    assert c.get("/runs/nope/curves.svg").status_code == 404


def test_scoped_training_units_link_to_their_own_page(settings, fraud_spec):
    ledger = Ledger(settings.db_url)
    sb = write_backfill(
        ledger, fraud_spec, "2026-10-02", "2026-10-03", {"city": ["SF", "NYC"]}, "features,train"
    )
    ledger.close()
    train_keys = [u.run_key for u in sb.plan.units if u.step.value == "train"]
    assert train_keys and all("@city=NYC+SF" in k for k in train_keys)
    c = TestClient(create_app(UIConfig(settings)))
    page = c.get(f"/backfills/{sb.backfill_id}", params={"step": "train"}).text
    hrefs = re.findall(r'<a class="cell [^"]+" href="([^"]+)"', page)
    assert len(hrefs) == len(train_keys)  # one cell per as-of day, in the "(all keys)" row
    unit = c.get(hrefs[0], params={"backfill": sb.backfill_id, "fragment": "1"})
    assert unit.status_code == 200 and train_keys[0] in unit.text


def test_unit_panel_shows_sensor_verdict_and_training_progress(big, settings, tmp_path):
    from rayorch.train.control import RunFiles

    ledger, sb = big
    key = sb.running[0]
    RunFiles(str(tmp_path), "run-1").write_progress(
        {
            "status": "running",
            "epoch": 2,
            "epochs": 4,
            "step": 17,
            "last_checkpoint": {"step": 16, "reason": "every_epochs"},
            "restarts": 1,
            "stragglers": [{"rank": 1, "node": "node-abcdef123456789"}],
        }
    )
    sensor = {
        "status": "PENDING",
        "missing_sub_partitions": [18, 19],
        "bad_sub_partitions": [],
        "reasons": [{"code": "MISSING", "message": "22/24 hours"}],
    }
    owner = ledger.get_backfill(sb.backfill_id).ownership
    ledger.set_progress(
        owner, key, {"training": {"storage": str(tmp_path), "run_name": "run-1"}, "sensor": sensor}
    )
    c = TestClient(create_app(UIConfig(settings)))
    html = c.get(f"/units/{key}", params={"backfill": sb.backfill_id}).text
    assert "waiting for data" in html and "missing hours: <b>18, 19</b>" in html
    assert "2/4" in html and "step 16 (every_epochs)" in html and "rank 1 on node-abcdef1" in html
    api = c.get(f"/api/units/{key}", params={"backfill": sb.backfill_id}).json()
    assert api["training"]["restarts"] == 1 and api["unit"]["state"] == "waiting for data"
