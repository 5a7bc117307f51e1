"""Grouped table commits: the real driver, a real SQLite ledger, a scripted runner whose
feature units stage real parquet files into a real Iceberg table (pyiceberg, SQL catalog),
and a clock the test advances. Ledger commit every turn; table commit when N wait, after T
seconds, before a dependent starts, at the end; never by a driver that lost its backfill."""

from __future__ import annotations

import pytest

from rayorch.backfill.driver import BackfillDriver, DriverOptions
from rayorch.backfill.publishing import Flush, PublishPolicy, Waiting, decide_flush
from rayorch.data.tables import StepTable
from rayorch.ledger.states import BackfillState, Reprocess, UnitState
from rayorch.ledger.store import Ledger
from rayorch.settings import load_settings
from tests.driver_fakes import Crash, FakeClock, Processes, TableExecutor, crash_at, make_plan

LEASE = 60.0
P = PublishPolicy(batch=4, linger_s=10.0)


@pytest.mark.parametrize(
    ("waiting", "now", "expected"),
    [
        (Waiting(0, None), 100.0, None),
        (Waiting(3, 95.0), 100.0, None),  # fewer than N, younger than T
        (Waiting(4, 99.0), 100.0, Flush.FULL),
        (Waiting(9, 99.0), 100.0, Flush.FULL),
        (Waiting(1, 90.0), 100.0, Flush.LINGERED),  # exactly T
        (Waiting(1, 99.0, unbatched=True), 100.0, Flush.UNBATCHED),
        (Waiting(1, 99.0, dependent_ready=True), 100.0, Flush.DEPENDENT),
        (Waiting(0, None, dependent_ready=True), 100.0, Flush.DEPENDENT),  # verifies only
        (Waiting(1, 99.0, ending=True), 100.0, Flush.ENDING),
        (Waiting(0, None, ending=True), 100.0, None),
    ],
)
def test_when_to_publish(waiting, now, expected):
    assert decide_flush(waiting, now, P) is expected
    assert P.due(95.0) == 105.0 and P.due(None) is None


@pytest.fixture()
def world(tmp_path, home):
    clock, procs = FakeClock(), Processes()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", clock=clock, observe=procs.observe)
    st = load_settings()
    table = StepTable(st, "p", st.resolve("data/features/p"), ["city", "date"], "f")
    yield clock, procs, ledger, table
    ledger.close()


def driver(plan, ledger, ex, clock, owner, **opts):
    crash = opts.pop("crash", lambda _: None)
    options = DriverOptions(max_concurrency=opts.pop("max_concurrency", 2), lease_s=LEASE, **opts)
    return BackfillDriver(
        plan, ledger, ex, options, clock=clock, sleep=clock.sleep, owner=owner, crash=crash
    )


def commits(ledger) -> list[str]:
    return [e["run_key"] for e in ledger.events(event_name="COMMIT")]


def snapshots(table: StepTable) -> int:
    t = table.load()
    return 0 if t is None else len(t.snapshots())


def assert_rows_once(ex: TableExecutor, plan, ledger) -> None:
    """Every feature partition visible exactly once, at its committed token."""
    rows = ledger.get_units(u.run_key for u in plan.units)
    want = sorted(
        (f"{u.partition}#{i}", float(rows[u.run_key].committed_token))
        for u in plan.units
        if u.step.value == "features"
        for i in range(3)
    )
    assert ex.rows() == want


def test_publishes_are_grouped_by_count(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=4)  # 12 units, 2 in flight: 6 turns
    ex = TableExecutor(clock, table)
    s = driver(plan, ledger, ex, clock, procs.start(10), publish_batch=5,
               publish_linger_s=1e6).run()  # fmt: skip
    assert s.ok
    assert len(commits(ledger)) == 12  # a ledger commit each turn...
    assert [len(p) for p in ex.publishes] == [6, 6]  # ...a table commit once 5 or more wait
    assert snapshots(table) == 2
    assert_rows_once(ex, plan, ledger)
    # the ledger records each unit's snapshot: the one of the table commit that published it
    snaps = [s.snapshot_id for s in table.require().snapshots()]
    rows = ledger.get_units(u.run_key for u in plan.units)
    for n, batch in enumerate(ex.publishes):
        assert {rows[k].output["snapshot_id"] for k in batch} == {snaps[n]}


def test_publishes_are_grouped_by_age(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=4)
    ex = TableExecutor(clock, table, on_wait=lambda e: clock.sleep(4.0))  # a turn takes 4 s
    published_at: list[float] = []
    inner = ex.publish_many
    ex.publish_many = lambda items: (published_at.append(clock()), inner(items))[1]
    s = driver(plan, ledger, ex, clock, procs.start(10), publish_batch=1000,
               publish_linger_s=10.0).run()  # fmt: skip
    assert s.ok
    committed_at = {e["run_key"]: e["at"] for e in ledger.events(event_name="COMMIT")}
    assert 1 < len(ex.publishes) < 6  # grouped, but not only at the end
    for at, batch in zip(published_at, ex.publishes, strict=True):
        oldest = min(committed_at[k] for k in batch)
        assert at - oldest <= 10.0 + 4.0  # published at most one turn after T
    assert snapshots(table) == len(ex.publishes)
    assert_rows_once(ex, plan, ledger)


def test_training_never_starts_before_its_inputs_are_in_the_table(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=2, train=True)
    train = plan.units[-1]
    feats = {str(u.partition) for u in plan.units if u is not train}
    ex = TableExecutor(clock, table)
    s = driver(plan, ledger, ex, clock, procs.start(10), publish_batch=1000,
               publish_linger_s=1e6).run()  # fmt: skip
    assert s.ok
    assert ex.live_at_train_start[train.run_key] == feats  # every input live before it ran
    assert [sorted(p) for p in ex.publishes] == [sorted(u.run_key for u in plan.units[:-1])]
    assert ledger.get_units([train.run_key])[train.run_key].output["model_version"] == "1"


def test_inputs_another_driver_committed_but_not_published_are_rolled_forward_first(world):
    """Another backfill commits some of our training's inputs while we run, and (grouping
    its publishes) dies before publishing them: we find them ALREADY_DONE, and roll them
    forward from the ledger before our training pins its snapshot."""
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=2, train=True)
    train = plan.units[-1]
    other = make_plan(["NYC", "LA"], days=2)  # same run keys, another backfill
    other_ex = TableExecutor(clock, table)
    state = {"ran": False}

    def other_driver_runs(ex):
        if not state["ran"]:
            state["ran"] = True
            with pytest.raises(Crash):
                driver(other, ledger, other_ex, clock, procs.start(20),
                       crash=crash_at("after_commit", 2), publish_batch=1000).run()  # fmt: skip

    ex = TableExecutor(clock, table, on_wait=other_driver_runs)
    s = driver(plan, ledger, ex, clock, procs.start(21), max_concurrency=1, publish_batch=1000,
               publish_linger_s=1e6).run()  # fmt: skip
    assert s.ok and other_ex.publishes == []  # the other driver published nothing
    theirs = {k for k in commits(ledger) if k in {u.run_key for u in other.units}}
    assert len(theirs) == 4 and s.counts()["skipped_done"] >= 1
    feats = {str(u.partition) for u in plan.units if u is not train}
    assert ex.live_at_train_start[train.run_key] == feats
    assert_rows_once(ex, plan, ledger)


def test_crash_with_many_committed_unpublished_units_rolls_them_forward_once(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=3)  # 9 units
    ex = TableExecutor(clock, table)
    assert driver(plan, ledger, ex, clock, procs.start(30), publish_batch=4).run().ok
    first_publishes = snapshots(table)  # groups of 4 or more (more wait while one runs)
    assert 2 <= first_publishes <= 3 and {float(v) for _, v in ex.rows()} == {1.0}
    # Reprocess everything; killed after the 3rd turn's ledger commit: 6 units committed at
    # token 2, none published (the group was not full) - the table still shows token 1.
    first = procs.start(31)
    with pytest.raises(Crash):
        driver(plan, ledger, ex, clock, first, crash=crash_at("after_commit", 3),
               reprocess=Reprocess.ALL, publish_batch=1000, publish_linger_s=1e6).run()  # fmt: skip
    procs.kill(first)
    rows = ledger.get_units(u.run_key for u in plan.units)
    ahead = {k for k, r in rows.items() if r.committed_token == 2}
    assert len(ahead) == 6 and snapshots(table) == first_publishes
    assert {float(v) for _, v in ex.rows()} == {1.0}
    # resumed (what it committed is kept; what it held runs again with a newer token)
    s = driver(plan, ledger, ex, clock, procs.start(32), publish_batch=1000,
               publish_linger_s=1e6).run()  # fmt: skip
    assert s.ok and s.resumed and set(s.reconciled) == ahead
    assert ex.publishes[first_publishes] == sorted(ahead, key=[u.run_key for u in plan.units].index)
    # each row once, at the token the ledger committed (never token 1 beside token 2)
    assert_rows_once(ex, plan, ledger)
    final = ledger.get_units(u.run_key for u in plan.units)
    assert all(final[k].committed_token == 2 for k in ahead)
    assert all(final[k].output["snapshot_id"] for k in final)


def test_a_taken_over_driver_publishes_nothing(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=2)
    first = procs.start(40)
    waits = {"n": 0}

    def takeover(ex):
        waits["n"] += 1
        if waits["n"] == 3:  # two turns committed in the ledger, waiting for the table
            procs.kill(first)
            bf = ledger.list_backfills()[0]
            ledger.open_backfill("p", plan.params, "fp", [], owner=procs.start(41), resume_id=bf.id)

    ex = TableExecutor(clock, table, on_wait=takeover)
    s = driver(plan, ledger, ex, clock, first, publish_batch=1000, publish_linger_s=1e6).run()
    assert s.state is BackfillState.INCOMPLETE
    assert len(commits(ledger)) == 4 and ex.publishes == [] and table.load() is None
    # the new owner rolls the stale driver's commits forward, and finishes
    s2 = driver(plan, ledger, TableExecutor(clock, table), clock, procs.start(42)).run()
    assert s2.ok and len(s2.reconciled) == 4
    assert_rows_once(ex, plan, ledger)


def test_a_failing_driver_publishes_what_it_committed(world):
    clock, procs, ledger, table = world
    plan = make_plan(["SF", "NYC", "LA"], days=2)
    waits = {"n": 0}

    def breaks(ex):
        waits["n"] += 1
        if waits["n"] == 3:
            raise RuntimeError("the object store went away")

    ex = TableExecutor(clock, table, on_wait=breaks)
    with pytest.raises(RuntimeError):
        driver(plan, ledger, ex, clock, procs.start(50), publish_batch=1000,
               publish_linger_s=1e6).run()  # fmt: skip
    assert [sorted(p) for p in ex.publishes] == [sorted(commits(ledger))]
    assert len(ex.publishes[0]) == 4
    rows = ledger.get_units(u.run_key for u in plan.units)
    assert sum(r.state is UnitState.DONE and bool(r.output.get("snapshot_id"))
               for r in rows.values()) == 4  # fmt: skip
    assert len(ex.rows()) == 4 * 3
