"""The pure planner: deterministic run keys, look-back, scope, annotations."""

from __future__ import annotations

import datetime as dt

import pytest

from rayorch.backfill.plan import Step, UnitPlanStatus, annotate, plan_backfill
from rayorch.errors import ConfigError
from rayorch.ledger.states import Reprocess, UnitState
from rayorch.ledger.store import UnitRow


def test_plan_units_and_run_keys(fraud_spec):
    plan = plan_backfill(fraud_spec, "2026-10-01", "2026-10-03")
    feats, trains = plan.by_step(Step.FEATURES), plan.by_step(Step.TRAIN)
    # window_days=2 -> one look-back day for features
    assert len(feats) == 4 * 3 and len(trains) == 3
    assert feats[0].run_key == "fraud/features/city=SF/date=2026-09-30"
    assert trains[0].run_key == "fraud/train/date=2026-10-01"
    assert len(trains[0].inputs) == 2 * 3 and len(trains[0].depends_on) == 6
    again = plan_backfill(fraud_spec, "2026-10-01", "2026-10-03")
    assert [u.run_key for u in again.units] == [u.run_key for u in plan.units]
    assert len({u.run_key for u in plan.units}) == len(plan.units)


def test_plan_key_selection_scopes_training(fraud_spec):
    plan = plan_backfill(fraud_spec, "2026-10-01", "2026-10-01", {"city": ["SF", "NYC"]})
    trains = plan.by_step(Step.TRAIN)
    assert trains[0].run_key == "fraud/train/date=2026-10-01@city=NYC+SF"
    assert all(u.partition["city"] in ("SF", "NYC") for u in plan.by_step(Step.FEATURES))


def test_plan_features_only_has_no_lookback(fraud_spec):
    plan = plan_backfill(fraud_spec, "2026-10-01", "2026-10-02", steps="features")
    assert {u.day for u in plan.units} == {dt.date(2026, 10, 1), dt.date(2026, 10, 2)}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"steps": "features,bogus"}, "unknown step"),
        ({"keys": {"region": ["x"]}}, "names dimension 'region'"),
    ],
)
def test_plan_bad_arguments(fraud_spec, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        plan_backfill(fraud_spec, "2026-10-01", "2026-10-01", **kwargs)


def _row(key, state, holder=None, lease=None, error=None):
    return UnitRow(
        key,
        "features",
        "p",
        state,
        3,
        holder,
        lease,
        1,
        error,
        2 if state is UnitState.DONE else None,
        1.0e9,
        "bf-old",
        None,
        None,
        0.0,
    )


def test_annotate_statuses(fraud_spec):
    plan = plan_backfill(fraud_spec, "2026-10-01", "2026-10-01", steps="features")
    k = [u.run_key for u in plan.units]
    known = {
        k[0]: _row(k[0], UnitState.DONE),
        k[1]: _row(k[1], UnitState.FAILED, error="boom\nmore"),
        k[2]: _row(k[2], UnitState.RUNNING, holder="bf-x", lease=200.0),
    }
    got = {a.unit.run_key: a for a in annotate(plan, known, now=100.0)}
    assert got[k[0]].status is UnitPlanStatus.ALREADY_DONE and "bf-old" in got[k[0]].detail
    assert got[k[1]].status is UnitPlanStatus.FAILED_BEFORE and "boom" in got[k[1]].detail
    assert got[k[2]].status is UnitPlanStatus.HELD and "bf-x" in got[k[2]].detail
    later = {a.unit.run_key: a for a in annotate(plan, known, now=300.0, reprocess=Reprocess.ALL)}
    assert later[k[0]].status is UnitPlanStatus.WILL_RERUN
    assert later[k[1]].status is UnitPlanStatus.WILL_RERUN
    assert later[k[2]].status is UnitPlanStatus.WILL_RUN  # lease expired
