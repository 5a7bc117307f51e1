"""Grouped feature tasks on a real local Ray: one task, every unit its own commit and error."""

from __future__ import annotations

import pytest

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.executor import RayExecutor
from rayorch.data.tables import StepTable, committed_rows
from rayorch.ledger.states import BackfillState, UnitState
from rayorch.partitions import PartitionKey
from rayorch.spec import load_pipeline
from tests.helpers import small_config

pytestmark = pytest.mark.ray
DAYS = ["2026-10-01", "2026-10-02"]
BAD = "city=LA/date=2026-10-02"


def test_grouped_units_commit_alone_and_a_failing_one_is_retried_alone(
    ray_session, tmp_path, settings
):
    cfg = small_config(tmp_path, retries=1, params={"fail_partitions": [BAD]})
    spec = load_pipeline(cfg)
    generate_data(spec, DAYS[0], DAYS[1], settings=settings)
    ex = RayExecutor(spec, settings)
    # As if short units had been measured on a one-slot cluster: the six pending units of
    # the first turn go into ONE task.
    ex.groups.slots = lambda: 1
    ex.groups.times.add([0.001])
    sizes: list[int] = []
    launch = ex.groups.launch
    ex.groups.launch = lambda items: (sizes.append(len(items)), launch(items))[1]

    s = run_backfill(spec, DAYS[0], DAYS[1], settings=settings, executor=ex)

    assert sizes[0] == 6 and sum(sizes) == 7, sizes  # one task of six, then the retry alone
    assert s.state is BackfillState.FAILED and s.counts()["done"] == 5, s.to_dict()
    bad_key = f"{spec.name}/features/{BAD}"
    assert s.failed == [bad_key]
    assert "injected failure for " + BAD in s.errors[bad_key]
    ledger = open_ledger(settings)
    rows = ledger.get_units(s.outputs.keys() | {bad_key})
    ledger.close()
    assert rows[bad_key].state is UnitState.FAILED and rows[bad_key].attempts == 2
    assert all(r.state is UnitState.DONE for k, r in rows.items() if k != bad_key)
    # each good partition is live at its own token with exactly its raw rows
    good = [
        PartitionKey.of(city=c, date=d)
        for d in DAYS
        for c in ("SF", "NYC", "LA")
        if f"city={c}/date={d}" != BAD
    ]
    live = StepTable.for_spec(spec, settings).live()
    assert sorted(live) == sorted(map(str, good))
    ids = committed_rows(spec, settings).column("transaction_id").to_pylist()
    assert len(ids) == len(set(ids)) == 5 * 4 * 10
