"""Backfills on a real local Ray: exactly-once commits, reprocess, retries, sensors, cancel."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pyarrow.parquet as pq
import pytest

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.machine import Phase
from rayorch.data.generate import Faults
from rayorch.data.tables import StepTable, committed_rows
from rayorch.ledger.states import BackfillState, UnitState
from rayorch.partitions import PartitionKey
from rayorch.spec import load_pipeline
from tests.helpers import small_config

pytestmark = pytest.mark.ray
CITIES = ["SF", "NYC", "LA"]
DAYS = ["2026-10-01", "2026-10-02"]


def _keys(days=DAYS):
    return [PartitionKey.of(city=c, date=d) for d in days for c in CITIES]


def _raw_ids(settings, spec, key):
    root = settings.resolve(spec.source.path)
    t = pq.read_table(f"{root}/{key.path()}", columns=["transaction_id"])
    return sorted(t.column("transaction_id").to_pylist())


def _feature_ids(settings, spec, keys):
    live = StepTable.for_spec(spec, settings).live(keys)
    assert sorted(live) == sorted(map(str, keys))  # every partition committed
    return committed_rows(spec, settings, keys).column("transaction_id").to_pylist()


def test_backfill_exactly_once_rerun_and_reprocess(ray_session, tmp_path, settings):
    spec = load_pipeline(small_config(tmp_path))
    generate_data(spec, DAYS[0], DAYS[1], settings=settings)
    s1 = run_backfill(spec, DAYS[0], DAYS[1], settings=settings)
    assert s1.state is BackfillState.SUCCEEDED and s1.counts()["done"] == 6
    for key in _keys():
        ids = _feature_ids(settings, spec, [key])
        assert sorted(ids) == _raw_ids(settings, spec, key)  # exactly the raw rows
    all_ids = _feature_ids(settings, spec, _keys())
    assert len(all_ids) == len(set(all_ids)) == 6 * 4 * 10

    s2 = run_backfill(spec, DAYS[0], DAYS[1], settings=settings)
    assert s2.counts()["skipped_done"] == 6 and s2.counts()["done"] == 0

    s3 = run_backfill(spec, DAYS[0], DAYS[1], settings=settings, reprocess="all")
    assert s3.counts()["done"] == 6
    again = _feature_ids(settings, spec, _keys())
    assert sorted(again) == sorted(all_ids)  # replaced, not appended
    ledger = open_ledger(settings)
    commits = ledger.events(event_name="COMMIT")
    per_key: dict[str, list[int]] = {}
    for e in commits:
        per_key.setdefault(e["run_key"], []).append(e["token"])
    assert len(per_key) == 6 and all(len(t) == 2 and t[0] < t[1] for t in per_key.values())
    ledger.close()


def test_retries_then_failure_reported_and_others_continue(ray_session, tmp_path, settings):
    bad = "city=LA/date=2026-10-01"
    flaky = "city=SF/date=2026-10-01"
    cfg = small_config(
        tmp_path, retries=2, params={"fail_partitions": [bad, flaky], "fail_times": 100}
    )
    spec = load_pipeline(cfg)
    # the flaky one fails only on its first attempt (token 1)
    spec = spec.model_copy(
        update={
            "features": spec.features.model_copy(
                update={"params": {"fail_partitions": [bad], "fail_times": 100}}
            )
        }
    )
    generate_data(spec, DAYS[0], DAYS[0], settings=settings)
    s = run_backfill(spec, DAYS[0], DAYS[0], settings=settings)
    assert s.state is BackfillState.FAILED
    assert s.failed == [f"{spec.name}/features/{bad}"]
    err = s.errors[s.failed[0]]  # the real type and message, and which user function raised
    assert err.startswith("RuntimeError in user function rayorch.examples.testing:") and (
        "injected failure" in err
    )
    assert s.counts()["done"] == 2
    ledger = open_ledger(settings)
    row = ledger.get_units(s.failed)[s.failed[0]]
    assert row.state is UnitState.FAILED and row.attempts == 3 and row.token == 3
    assert "injected failure" in row.last_error
    # failed units are not retried by default, and are with --reprocess failed
    assert run_backfill(spec, DAYS[0], DAYS[0], settings=settings).counts()["skipped_failed"] == 1
    fixed = spec.model_copy(update={"features": spec.features.model_copy(update={"params": {}})})
    s2 = run_backfill(fixed, DAYS[0], DAYS[0], settings=settings, reprocess="failed")
    assert s2.state is BackfillState.SUCCEEDED and s2.counts()["done"] == 1
    ledger.close()


def test_duplicate_output_keys_refuse_commit(ray_session, tmp_path, settings):
    spec = load_pipeline(small_config(tmp_path, retries=2, params={"duplicate_output": True}))
    generate_data(spec, DAYS[0], DAYS[0], {"city": ["SF"]}, settings=settings)
    s = run_backfill(spec, DAYS[0], DAYS[0], {"city": ["SF"]}, settings=settings)
    [key] = s.failed
    assert "DuplicateKeysError" in s.errors[key] and "SF-20261001-00-00000" in s.errors[key]
    ledger = open_ledger(settings)
    assert ledger.get_units([key])[key].attempts == 1  # a data error is not retried
    assert StepTable.for_spec(spec, settings).live([PartitionKey.of(city="SF", date=DAYS[0])]) == {}
    ledger.close()


def test_incomplete_input_blocks_training_without_mlflow_run(ray_session, tmp_path, settings):
    spec = load_pipeline(small_config(tmp_path, train=True))
    generate_data(spec, "2026-09-30", DAYS[0], settings=settings)
    generate_data(
        spec, DAYS[0], DAYS[0], {"city": ["NYC"]}, Faults(drop_hours=(3,)), settings=settings
    )
    s = run_backfill(spec, DAYS[0], DAYS[0], settings=settings)
    nyc = f"{spec.name}/features/city=NYC/date={DAYS[0]}"
    train = f"{spec.name}/train/date={DAYS[0]}"
    assert s.phases[nyc] is Phase.FAILED and "hour=03" in s.errors[nyc]
    assert s.phases[train] is Phase.BLOCKED and nyc in s.errors[train]
    import mlflow

    client = mlflow.tracking.MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name(f"rayorch/{spec.name}")
    assert exp is None or client.search_runs([exp.experiment_id]) == []
    ledger = open_ledger(settings)
    # not-ready is released, not failed: a re-run after the data lands picks it up
    assert ledger.get_units([nyc])[nyc].state is UnitState.PENDING
    assert ledger.get_units([train])[train].state is UnitState.PENDING
    ledger.close()
    generate_data(spec, DAYS[0], DAYS[0], {"city": ["NYC"]}, settings=settings)
    s2 = run_backfill(spec, DAYS[0], DAYS[0], settings=settings, steps="features")
    assert s2.phases[nyc] is Phase.DONE


def test_pending_input_waits_then_fails(ray_session, tmp_path, settings):
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    spec = load_pipeline(
        small_config(tmp_path, lateness_hours=48, wait_timeout_s=1.5, poll_interval_s=0.5)
    )
    generate_data(
        spec, today, today, {"city": ["SF"]}, Faults(drop_hours=(2, 3)), settings=settings
    )
    events = []
    s = run_backfill(
        spec,
        today,
        today,
        {"city": ["SF"]},
        settings=settings,
        progress=lambda e, u, d: events.append(e),
    )
    [key] = s.failed
    assert "still PENDING after the wait timeout" in s.errors[key]
    assert events.count("waiting") >= 2


def test_cancel_releases_claims(ray_session, tmp_path, settings):
    spec = load_pipeline(small_config(tmp_path, params={"sleep_s": 1.0}))
    generate_data(spec, DAYS[0], DAYS[1], settings=settings)
    ledger = open_ledger(settings)
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            s=run_backfill(spec, DAYS[0], DAYS[1], settings=settings, max_concurrency=2)
        )
    )
    t.start()
    deadline = time.time() + 60
    while not ledger.list_backfills() and time.time() < deadline:
        time.sleep(0.1)
    bf = ledger.list_backfills()[0]
    while ledger.unit_counts(bf.id)["RUNNING"] < 2 and time.time() < deadline:
        time.sleep(0.05)
    t0 = time.time()
    ledger.request_cancel(bf.id)  # with the default 60 s lease: seen within seconds
    t.join(timeout=60)
    assert time.time() - t0 < 10
    s = result["s"]
    assert s.state is BackfillState.CANCELLED
    assert ledger.get_backfill(bf.id).state is BackfillState.CANCELLED
    counts = ledger.unit_counts(bf.id)
    assert counts["RUNNING"] == 0 and counts["PENDING"] >= 1
    ledger.close()
