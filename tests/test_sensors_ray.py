"""Sensors on a real local Ray.

A PENDING partition (18 of 24 hours) waits, fails as not ready with no training run in MLflow,
and `rayorch sensors watch` picks up exactly the units it frees once the missing hours land.
Validated Ray Data reads take exactly the manifest's files. (That a training run's logged
manifest is exactly the committed files it read is shown end to end in test_processes.py.)
"""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.machine import Phase
from rayorch.data.generate import Faults
from rayorch.ledger.states import UnitState
from rayorch.partitions import PartitionKey
from rayorch.spec import load_pipeline
from tests.helpers import json_out, run_cli, small_config

pytestmark = pytest.mark.ray
CITIES = ["SF", "NYC", "LA"]


def _watch(cfg, env, *extra):
    proc = run_cli("sensors", "watch", "-c", str(cfg), "--once", "--json", *extra, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json_out(proc)


def test_late_hours_wait_fail_then_watch_picks_up_affected_units(
    ray_session, tmp_path, settings, home
):
    today = dt.datetime.now(dt.timezone.utc).date()
    d0, d1 = (today - dt.timedelta(days=1)).isoformat(), today.isoformat()
    cfg = small_config(
        tmp_path,
        train=True,
        hours=24,
        rows=5,
        lateness_hours=72,
        wait_timeout_s=1.0,
        poll_interval_s=0.3,
    )
    spec = load_pipeline(cfg)
    generate_data(spec, d0, d1, settings=settings)
    nyc, la = f"city=NYC/date={d1}", f"city=LA/date={d0}"
    generate_data(
        spec, d1, d1, {"city": ["NYC"]}, Faults(drop_hours=tuple(range(18, 24))), settings
    )
    generate_data(spec, d0, d0, {"city": ["LA"]}, Faults(drop_hours=(3,)), settings=settings)

    # 1. the backfill waits on the PENDING inputs, then fails them as not ready; no training
    events: list[str] = []
    s = run_backfill(spec, d1, d1, settings=settings, progress=lambda e, u, d: events.append(e))
    fk = {p: f"fraud/features/{p}" for p in (nyc, la)}
    train = f"fraud/train/date={d1}"
    assert events.count("waiting") >= 2
    assert "still PENDING after the wait timeout" in s.errors[fk[nyc]]
    assert "18 of 24 hours present" in s.errors[fk[nyc]]
    assert s.phases[train] is Phase.BLOCKED
    import mlflow

    client = mlflow.tracking.MlflowClient(settings.mlflow_uri)
    exp = client.get_experiment_by_name("rayorch/fraud")
    assert exp is None or client.search_runs([exp.experiment_id]) == []

    # 2. NYC's missing hours land: watch reports its feature unit (runnable) and the training
    #    unit whose window includes it (still blocked by LA), nothing else
    env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    generate_data(spec, d1, d1, {"city": ["NYC"]}, settings=settings)
    w = _watch(cfg, env)
    assert w["newly_ready"] == [nyc] and w["waiting"] == {la: "PENDING"}
    assert [(a["run_key"], a["verdict"]) for a in w["affected"]] == [
        (fk[nyc], "runnable"),
        (train, "blocked"),
    ]
    assert w["affected"][1]["blocked_by"] == [f"{la} (PENDING)"]
    assert "23 of 24 hours present" in w["reasons"][la][0]
    w = _watch(cfg, env, "--backfill", "--allow-local-state")  # one-node session cluster
    [ran] = w["backfills"]
    assert ran["request"]["steps"] == ["features"] and ran["summary"]["counts"]["done"] == 1
    ledger = open_ledger(settings)
    assert ledger.get_units([fk[nyc]])[fk[nyc]].state is UnitState.DONE
    assert ledger.get_units([train])[train].state is UnitState.PENDING

    # 3. LA's hour lands: both the feature unit and the training unit become runnable, and
    #    the narrowed request names exactly them (the committed feature units are skipped)
    generate_data(spec, d0, d0, {"city": ["LA"]}, settings=settings)
    w = _watch(cfg, env)
    assert w["newly_ready"] == [la] and w["waiting"] == {}
    assert [(a["run_key"], a["verdict"]) for a in w["affected"]] == [
        (fk[la], "runnable"),
        (train, "runnable"),
    ]
    [req] = w["requests"]
    assert (req["start"], req["end"], req["run_keys"]) == (d1, d1, [fk[la], train])
    assert req["keys"] == {"city": CITIES} and req["steps"] == ["features", "train"]
    # (training on Ray is shown below; here only LA's feature unit runs)
    s = run_backfill(spec, d0, d0, {"city": ["LA"]}, "features", settings=settings)
    assert s.counts()["done"] == 1
    w = _watch(cfg, env)  # the training unit stays: its input is now committed, not "newly" READY
    assert w["newly_ready"] == [] and w["affected"] == [] and w["checked"] == 0
    assert ledger.get_units([train])[train].state is UnitState.PENDING
    ledger.close()


def test_validated_ray_data_read_skips_late_files_and_refuses_rewritten_ones(ray_session, tmp_path):
    """Ray Data reads exactly the validated files: a file that lands after validation is not
    read (a plain directory read would take it), and a file rewritten after validation is
    refused rather than read as if it were the validated one."""
    import pyarrow.parquet as pq
    import ray.data

    from rayorch.backfill.work import check_partition
    from rayorch.data.generate import generate_raw
    from rayorch.data.layout import raw_hour_dir, raw_partition_dir
    from rayorch.data.reader import read_validated
    from rayorch.errors import DataNotReadyError

    spec = load_pipeline(small_config(tmp_path, hours=24, rows=5))
    day = dt.date(2026, 10, 3)
    key = PartitionKey.of(city="SF", date=day.isoformat())
    generate_raw(spec, tmp_path, day, day, {"city": ["SF"]})
    late = dt.datetime(2026, 10, 10, tzinfo=dt.timezone.utc)
    r = check_partition(spec, str(tmp_path), key, day, late)
    assert r.manifest is not None and r.rows == 120
    hour7 = raw_hour_dir(tmp_path, key, 7)
    shutil.copy(hour7 / "part-0.parquet", hour7 / "part-late.parquet")
    assert read_validated([r.manifest]).count() == 120
    assert ray.data.read_parquet(str(raw_partition_dir(tmp_path, key))).count() == 125
    pq.write_table(pq.read_table(hour7 / "part-0.parquet").slice(0, 2), hour7 / "part-0.parquet")
    with pytest.raises(DataNotReadyError, match="changed after validation") as e:
        read_validated([r.manifest])
    assert e.value.fields["files"][0].startswith(str(hour7 / "part-0.parquet"))
