"""Freshness sensors over real parquet partitions: READY / PENDING / REJECTED with reasons."""

from __future__ import annotations

import datetime as dt
import shutil

import pyarrow.parquet as pq
import pytest

from rayorch.backfill.work import check_partition
from rayorch.data.generate import Faults, generate_raw
from rayorch.data.layout import raw_hour_dir
from rayorch.data.reader import read_raw
from rayorch.data.sensors import ReasonCode, SensorStatus
from rayorch.partitions import PartitionKey
from rayorch.spec import load_pipeline
from tests.helpers import json_out, run_cli, small_config

DAY = dt.date(2026, 10, 3)
KEY = PartitionKey.of(city="SF", date=DAY.isoformat())
LATE = dt.datetime(2026, 10, 10, tzinfo=dt.timezone.utc)  # long after the lateness allowance
SOON = dt.datetime(2026, 10, 4, 1, tzinfo=dt.timezone.utc)  # within 6h lateness


@pytest.fixture()
def spec(tmp_path):
    cfg = small_config(tmp_path, hours=24, rows=5, lateness_hours=6)
    return load_pipeline(cfg)


def _gen(spec, root, faults=None):
    generate_raw(spec, root, DAY, DAY, {"city": ["SF"]}, faults)


def test_complete_partition_is_ready_with_manifest(spec, tmp_path):
    _gen(spec, tmp_path)
    r = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    assert r.status is SensorStatus.READY and r.reasons == ()
    assert r.rows == 24 * 5 and len(r.manifest.files) == 24
    assert r.manifest.rows == 120 and len(r.manifest.content_hash) == 64


def test_18_of_24_hours_pending_then_rejected(spec, tmp_path):
    _gen(spec, tmp_path, Faults(drop_hours=tuple(range(18, 24))))
    soon = check_partition(spec, str(tmp_path), KEY, DAY, SOON)
    assert soon.status is SensorStatus.PENDING
    assert soon.missing == tuple(range(18, 24))
    assert (
        "18 of 24" in soon.reasons[0].message
        and "hour=18,19,20,21,22,23" in soon.reasons[0].message
    )
    late = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    assert late.status is SensorStatus.REJECTED and late.manifest is None


@pytest.mark.parametrize(
    ("faults", "code", "hours"),
    [
        (Faults(omit_marker_hours=(5,)), ReasonCode.MISSING_MARKER, (5,)),
        (Faults(empty_hours=(3,)), ReasonCode.EMPTY_WITH_MARKER, (3,)),
        (Faults(change_type={"amount": "string"}), ReasonCode.SCHEMA_DRIFT, tuple(range(24))),
        (Faults(duplicate_rows=2), ReasonCode.DUPLICATE_KEYS, ()),
    ],
)
def test_bad_partitions_rejected_with_exact_reason(spec, tmp_path, faults, code, hours):
    _gen(spec, tmp_path, faults)
    r = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    assert r.status is SensorStatus.REJECTED
    reason = next(x for x in r.reasons if x.code is code)
    assert reason.sub_partitions == hours
    if code is ReasonCode.SCHEMA_DRIFT:
        assert "amount: expected double, found string" in reason.message
    if code is ReasonCode.DUPLICATE_KEYS:
        assert "SF-20261003-00-00000" in reason.message


def test_empty_hour_rejected_even_within_lateness(spec, tmp_path):
    _gen(spec, tmp_path, Faults(empty_hours=(3,)))
    assert check_partition(spec, str(tmp_path), KEY, DAY, SOON).status is SensorStatus.REJECTED


def test_missing_partition(spec, tmp_path):
    r = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    assert r.status is SensorStatus.REJECTED and r.reasons[0].code is ReasonCode.PARTITION_MISSING


def test_file_added_after_validation_is_not_read(spec, tmp_path):
    _gen(spec, tmp_path)
    r = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    late_file = raw_hour_dir(tmp_path, KEY, 7) / "part-late.parquet"
    shutil.copy(raw_hour_dir(tmp_path, KEY, 7) / "part-0.parquet", late_file)
    table = read_raw([r.manifest])
    assert table.num_rows == r.rows == 120
    assert str(late_file) not in {f.path for f in r.manifest.files}
    again = check_partition(spec, str(tmp_path), KEY, DAY, LATE)  # re-validation sees it
    assert again.status is SensorStatus.REJECTED
    assert any(x.code is ReasonCode.DUPLICATE_KEYS for x in again.reasons)


def test_low_volume_against_trailing_median(tmp_path):
    cfg = small_config(tmp_path, hours=4, rows=20, min_rows_ratio_to_median=0.5, trailing_days=3)
    spec = load_pipeline(cfg)
    generate_raw(spec, tmp_path, DAY - dt.timedelta(days=3), DAY, {"city": ["SF"]})
    assert check_partition(spec, str(tmp_path), KEY, DAY, LATE).status is SensorStatus.READY
    # shrink the day to 5 rows per hour: 20 < 0.5 * 80
    for h in range(4):
        path = raw_hour_dir(tmp_path, KEY, h) / "part-0.parquet"
        pq.write_table(pq.read_table(path).slice(0, 5), path)
    r = check_partition(spec, str(tmp_path), KEY, DAY, LATE)
    assert r.status is SensorStatus.REJECTED and r.reasons[0].code is ReasonCode.LOW_VOLUME


def test_sensors_check_cli(tmp_path, home):
    cfg = small_config(tmp_path, hours=4, rows=5, lateness_hours=6)
    run_cli(
        "data",
        "generate",
        "-c",
        str(cfg),
        "--start",
        "2026-10-01",
        "--end",
        "2026-10-02",
        "--keys",
        "city=SF",
        check=True,
    )
    run_cli(
        "data",
        "generate",
        "-c",
        str(cfg),
        "--start",
        "2026-10-02",
        "--end",
        "2026-10-02",
        "--keys",
        "city=SF",
        "--drop-hours",
        "3",
        check=True,
    )
    proc = run_cli(
        "sensors",
        "check",
        "-c",
        str(cfg),
        "--start",
        "2026-10-01",
        "--end",
        "2026-10-02",
        "--keys",
        "city=SF",
        "--json",
    )
    assert proc.returncode == 1
    res = {r["partition"]: r for r in json_out(proc)["results"]}
    assert res["city=SF/date=2026-10-01"]["status"] == "READY"
    bad = res["city=SF/date=2026-10-02"]
    assert bad["status"] == "REJECTED" and bad["missing_sub_partitions"] == [3]
    ok = run_cli("sensors", "check", "-c", str(cfg), "-p", "city=SF/date=2026-10-01")
    assert ok.returncode == 0 and "READY" in ok.stdout
    soon = run_cli(
        "sensors",
        "check",
        "-c",
        str(cfg),
        "-p",
        "date=2026-10-02/city=SF",
        "--now",
        "2026-10-03T01:00:00",
        "--json",
    )
    assert json_out(soon)["results"][0]["status"] == "PENDING"


def test_metadata_only_validation_does_not_decode_data(spec, tmp_path, monkeypatch):
    """Completeness checks read footers only: with uniqueness off, no table is ever read."""
    _gen(spec, tmp_path)
    spec2 = spec.model_copy(
        update={"freshness": spec.freshness.model_copy(update={"check_unique_keys": False})}
    )
    calls = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: calls.append(a) or real(*a, **k))
    r = check_partition(spec2, str(tmp_path), KEY, DAY, LATE)
    assert r.status is SensorStatus.READY and calls == []


# -- late data: the pure watch decision ---------------------------------------------------------

F, T = "features", "train"


def _watch_plan(tmp_path, steps=None):
    from rayorch.backfill.plan import plan_backfill

    spec = load_pipeline(small_config(tmp_path, train=True, hours=24))
    return plan_backfill(spec, "2026-10-01", "2026-10-03", steps=steps)


def _rk(step, part):
    return f"fraud/{step}/{part}"


def test_watch_picks_up_exactly_the_units_a_ready_partition_frees(tmp_path):
    from rayorch.backfill.watch import UnitVerdict, candidates, decide_watch
    from rayorch.ledger.states import UnitState

    plan = _watch_plan(tmp_path)  # features 09-30..10-03 x 3 cities, train 10-01..10-03
    late, other = "city=NYC/date=2026-10-01", "city=LA/date=2026-10-02"
    known = {u.run_key: UnitState.DONE for u in plan.units if u.step.value == F}
    known |= {_rk(F, late): UnitState.PENDING, _rk(F, other): UnitState.PENDING}
    known |= {u.run_key: UnitState.PENDING for u in plan.units if u.step.value == T}
    assert [p for p, _ in candidates([plan], known)] == [other, late]
    status = {late: SensorStatus.READY, other: SensorStatus.PENDING}
    d = decide_watch([plan], known, status)
    assert d.newly_ready == (late,) and d.waiting == {other: "PENDING"}
    got = {a.unit.run_key: a.verdict for a in d.affected}
    assert got == {
        _rk(F, late): UnitVerdict.RUNNABLE,
        _rk(T, "date=2026-10-01"): UnitVerdict.RUNNABLE,  # window 09-30, 10-01
        _rk(T, "date=2026-10-02"): UnitVerdict.BLOCKED,  # window 10-01, 10-02 (LA pending)
    }  # train 10-03 (window 10-02, 10-03) does not read the late partition
    blocked = next(a for a in d.affected if a.verdict is UnitVerdict.BLOCKED)
    assert blocked.blocked_by == (f"{other} (PENDING)",) and blocked.because_of == (late,)
    [req] = d.requests  # the training day plus the late feature unit, with the plan's keys
    assert (req.start, req.end, req.steps) == ("2026-10-01", "2026-10-01", ("features", "train"))
    assert req.keys == {"city": ["SF", "NYC", "LA"]}
    assert req.run_keys == (_rk(F, late), _rk(T, "date=2026-10-01"))
    # a long-running watch reports a partition once; a committed unit is not candidate again
    assert decide_watch([plan], known, status, previous=status).affected == ()
    done = known | {_rk(F, late): UnitState.DONE, _rk(T, "date=2026-10-01"): UnitState.DONE}
    assert late not in {p for p, _ in candidates([plan], done)}
    assert decide_watch([plan], done, {other: SensorStatus.PENDING}).affected == ()


def test_watch_marks_done_training_and_narrows_features_only_requests(tmp_path):
    from rayorch.backfill.watch import UnitVerdict, decide_watch
    from rayorch.ledger.states import UnitState

    plan = _watch_plan(tmp_path, steps="features")
    a, b, c = (
        "city=NYC/date=2026-10-01",
        "city=LA/date=2026-10-01",
        "city=SF/date=2026-10-03",
    )
    known = {u.run_key: UnitState.DONE for u in plan.units}
    known |= {_rk(F, a): UnitState.PENDING, _rk(F, b): UnitState.FAILED}
    known |= {_rk(F, c): UnitState.PENDING, _rk(F, "city=SF/date=2026-10-01"): UnitState.RUNNING}
    status = {a: SensorStatus.READY, b: SensorStatus.READY, c: SensorStatus.READY}
    d = decide_watch([plan], known, status)
    assert d.newly_ready == (b, a, c)
    assert all(x.verdict is UnitVerdict.RUNNABLE for x in d.affected)
    assert [(r.start, r.keys, r.steps) for r in d.requests] == [
        ("2026-10-01", {"city": ["LA", "NYC"]}, ("features",)),  # never SF (it is RUNNING)
        ("2026-10-03", {"city": ["SF"]}, ("features",)),
    ]
    # with training: a DONE training unit whose window reads the partition is reported as such
    tplan = _watch_plan(tmp_path)
    known = {u.run_key: UnitState.DONE for u in tplan.units}
    known[_rk(F, a)] = UnitState.PENDING
    d = decide_watch([tplan], known, {a: SensorStatus.READY})
    verdicts = {x.unit.run_key: x.verdict for x in d.affected}
    assert verdicts[_rk(T, "date=2026-10-01")] is UnitVerdict.DONE
    assert [r.run_keys for r in d.requests] == [(_rk(F, a),)]


def test_sensors_list_and_read_footers_on_s3(spec, s3_storage):
    """The same raw hive layout in a bucket: listed and footer-read through the filesystem."""
    from rayorch.data import storage
    from rayorch.settings import load_settings

    root = load_settings().resolve("raw")
    _gen(spec, root, Faults(drop_hours=(23,), omit_marker_hours=(5,)))
    r = check_partition(spec, root, KEY, DAY, LATE)
    assert r.status is SensorStatus.REJECTED
    assert {x.code for x in r.reasons} >= {
        ReasonCode.MISSING_SUB_PARTITIONS,
        ReasonCode.MISSING_MARKER,
    }
    _gen(spec, root)
    ok = check_partition(spec, root, KEY, DAY, LATE)
    assert ok.status is SensorStatus.READY and ok.rows == 120
    assert all(f.path.startswith(s3_storage) for f in ok.manifest.files)
    assert read_raw([ok.manifest]).num_rows == 120
    fs, path = storage.filesystem_for(f"{root}/{KEY.path()}")
    assert storage.exists(fs, f"{path}/hour=05/_SUCCESS")
    missing = check_partition(spec, root, KEY.with_(city="LA"), DAY, LATE)
    assert missing.reasons[0].code is ReasonCode.PARTITION_MISSING
