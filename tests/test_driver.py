"""The real driver and a real SQLite ledger, in-process with a scripted runner and a clock
the test advances: every path of the state machine in milliseconds, no Ray, no sleeps."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from rayorch.backfill.driver import BackfillDriver, DriverOptions
from rayorch.backfill.machine import OnConflict
from rayorch.errors import DataError, UserCodeError
from rayorch.ledger.states import BackfillState, Reprocess, UnitState
from rayorch.ledger.store import Ledger, UnitSpec
from rayorch.results import ErrorInfo, NotReady
from tests.driver_fakes import (
    Crash,
    FakeClock,
    Processes,
    ScriptedExecutor,
    crash_at,
    make_plan,
)

LEASE = 60.0


@pytest.fixture()
def world(tmp_path):
    clock = FakeClock()
    procs = Processes()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", clock=clock, observe=procs.observe)
    yield clock, procs, ledger
    ledger.close()


def driver(plan, ledger, ex, clock, owner, **opts):
    crash = opts.pop("crash", lambda _: None)
    options = DriverOptions(max_concurrency=opts.pop("max_concurrency", 8), lease_s=LEASE, **opts)
    return BackfillDriver(
        plan, ledger, ex, options, clock=clock, sleep=clock.sleep, owner=owner, crash=crash
    )


def commits(ledger):
    return sorted(e["run_key"] for e in ledger.events(event_name="COMMIT"))


def test_all_done_is_success_and_each_unit_commits_once(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC", "LA"], days=2, train=True)
    ex = ScriptedExecutor(clock)
    s = driver(plan, ledger, ex, clock, procs.start(10)).run()
    assert s.state is BackfillState.SUCCEEDED and s.ok and s.exit_code == 0
    assert commits(ledger) == sorted(u.run_key for u in plan.units)
    assert s.counts()["done"] == 7
    train_key = plan.units[-1].run_key
    assert ledger.get_units([train_key])[train_key].output["model_version"] == "1"
    # the same command again: nothing runs, still the truth (all done)
    again = driver(plan, ledger, ex, clock, procs.start(11)).run()
    assert again.ok and again.counts()["skipped_done"] == 7
    assert len(ex.submitted) == 7


def test_upstream_failure_blocks_training_and_fails_the_backfill(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC"], train=True)
    bad = plan.units[0].run_key
    ex = ScriptedExecutor(clock, {(bad, 1): DataError("schema mismatch in amount")})
    s = driver(plan, ledger, ex, clock, procs.start(10)).run()
    assert s.state is BackfillState.FAILED and s.exit_code == 1 and not s.ok
    d = s.to_dict()
    assert d["failed"] == [{"run_key": bad, "error": "DataError: schema mismatch in amount"}]
    assert d["blocked"] == [plan.units[-1].run_key]
    assert ledger.get_units([bad])[bad].state is UnitState.FAILED


def test_retry_backs_off_on_the_clock_then_succeeds(world):
    clock, procs, ledger = world
    plan = make_plan(["SF"])
    key = plan.units[0].run_key
    ex = ScriptedExecutor(clock, {(key, 1): RuntimeError("worker lost")})
    t0 = clock()
    s = driver(plan, ledger, ex, clock, procs.start(10), retries=1, retry_backoff_s=30).run()
    assert s.ok
    assert clock() - t0 >= 30  # waited the backoff, on the injected clock
    assert [e["event"] for e in ledger.events(key)] == ["CLAIM", "RELEASE", "CLAIM", "COMMIT"]


def test_errors_keep_type_message_and_user_function():
    sql = OperationalError("INSERT ...", {}, Exception("duplicate column name: step"))
    info = ErrorInfo.of(sql)
    assert info.type == "OperationalError" and "duplicate column name: step" in info.message
    assert "Background on this error" not in info.describe()
    user = UserCodeError(
        "user function m:f raised KeyError: 'amount'",
        entrypoint="m:f",
        cause_type="KeyError",
        cause_message="'amount'",
    )
    assert ErrorInfo.of(user).describe() == "KeyError in user function m:f: 'amount'"


def test_dead_driver_on_this_host_is_taken_over_at_once(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC", "LA"], days=3)
    first = procs.start(10)
    ex = ScriptedExecutor(clock, {(plan.units[3].run_key, 1): "hang"})
    with pytest.raises(Crash):  # killed after claiming its first batch: no cleanup at all
        driver(plan, ledger, ex, clock, first, crash=crash_at("after_stage")).run()
    procs.kill(first)
    t0 = clock()
    s = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(11)).run()
    assert s.ok and s.took_over_from == first.label() and s.resumed
    assert clock() - t0 < 1.0  # no lease wait
    assert commits(ledger) == sorted(u.run_key for u in plan.units)


def test_reused_pid_is_not_alive(world):
    clock, procs, ledger = world
    plan = make_plan(["SF"])
    first = procs.start(10, started_at=100.0)
    with pytest.raises(Crash):
        driver(
            plan, ledger, ScriptedExecutor(clock), clock, first, crash=crash_at("after_claim")
        ).run()
    procs.kill(first)
    procs.start(10, started_at=555.0)  # another process got the same pid
    s = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(12)).run()
    assert s.ok and s.took_over_from == first.label()


def _held_by_other_backfill(ledger, plan, owner):
    """Another backfill (other parameters) claims the plan's first unit and stops there."""
    key = plan.units[0].run_key
    spec = [UnitSpec(key, "p", "features", str(plan.units[0].partition))]
    o = ledger.open_backfill("p", {"other": 1}, "fp", spec, owner=owner, lease_s=LEASE)
    [c] = ledger.claim_many(o.ownership, [key])
    assert c.token == 1
    return key


def test_units_of_a_dead_other_backfill_are_taken_over_at_once(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC"])
    dead = procs.start(20)
    key = _held_by_other_backfill(ledger, plan, dead)
    procs.kill(dead)
    s = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(21)).run()
    assert s.ok
    assert ledger.get_units([key])[key].committed_token == 2  # a higher token than the dead one
    assert [e["event"] for e in ledger.events(event_name="OWNER_DEAD")] == ["OWNER_DEAD"]


def test_unknown_owner_is_waited_for_until_its_lease_runs_out(world):
    clock, procs, ledger = world
    plan = make_plan(["SF"])
    elsewhere = procs.start(30, host="other-host")
    key = _held_by_other_backfill(ledger, plan, elsewhere)
    lease_until = ledger.get_units([key])[key].lease_until
    events = []
    d = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(31))
    d.progress = lambda ev, unit, detail: events.append((ev, detail.get("detail", "")))
    s = d.run()
    assert s.ok
    assert clock() >= lease_until  # waited the lease out, by the (database) clock
    waits = [detail for ev, detail in events if ev == "waiting"]
    assert waits and "lease runs out in" in waits[0] and "other-host:30" in waits[0]


@pytest.mark.parametrize("host", ["other-host", "here"])
def test_skip_never_reports_success(world, host):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC"])
    holder = procs.start(40) if host == "here" else procs.start(40, host=host)
    key = _held_by_other_backfill(ledger, plan, holder)
    s = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(41),
               on_conflict=OnConflict.SKIP).run()  # fmt: skip
    assert s.state is BackfillState.INCOMPLETE and not s.ok and s.exit_code == 4
    [nd] = s.to_dict()["not_done"]
    assert nd["run_key"] == key and nd["held_by"] and nd["holder_driver"] == holder.label()
    assert nd["lease_expires_in_s"] > 0
    assert ledger.get_backfill(s.backfill_id).state is BackfillState.INCOMPLETE


def test_a_taken_over_driver_stops_writing(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC", "LA"])
    first = procs.start(50)
    taken = {}

    def takeover(ex):
        if taken:
            return
        # While the first driver is "paused", a newcomer finds it dead and takes over.
        procs.kill(first)
        bf = ledger.list_backfills()[0]
        taken["o"] = ledger.open_backfill(
            "p", plan.params, "fp", [], owner=procs.start(51), resume_id=bf.id
        )

    ex = ScriptedExecutor(clock, on_wait=takeover)
    s = driver(plan, ledger, ex, clock, first).run()
    assert s.state is BackfillState.INCOMPLETE and not s.ok
    assert commits(ledger) == []  # nothing committed by the stale owner
    assert "taken over" in s.to_dict()["not_done"][0]["why"]
    assert ledger.get_backfill(s.backfill_id).owner_epoch == taken["o"].ownership.epoch


class FlakyHeartbeats(Ledger):
    fail_heartbeats = False

    def heartbeat(self, owner):
        if self.fail_heartbeats:
            raise OperationalError("UPDATE units", {}, Exception("server closed the connection"))
        return super().heartbeat(owner)


def test_losing_the_lease_is_loud_and_stops_the_driver(tmp_path, caplog):
    clock, procs = FakeClock(), Processes()
    ledger = FlakyHeartbeats(f"sqlite:///{tmp_path / 'l.db'}", clock=clock, observe=procs.observe)
    plan = make_plan(["SF", "NYC"])
    ex = ScriptedExecutor(clock, {(plan.units[0].run_key, 1): "hang"})

    def breaks(ex_):
        ledger.fail_heartbeats = True

    ex.on_wait = breaks
    with caplog.at_level(logging.WARNING):
        s = driver(plan, ledger, ex, clock, procs.start(60), max_concurrency=1).run()
    assert s.state is BackfillState.INCOMPLETE and s.exit_code == 4
    assert "lost its lease" in s.to_dict()["not_done"][0]["why"] or "heartbeat" in str(s.to_dict())
    assert any(
        "heartbeat failed" in r.message and "server closed" in r.message for r in caplog.records
    )
    assert ex.cancelled == [plan.units[0].run_key]
    assert commits(ledger) == []


def test_cancel_ends_cancelled_and_frees_claims(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC"])
    ex = ScriptedExecutor(clock, {(plan.units[0].run_key, 1): "hang"})
    ex.on_wait = lambda e: ledger.request_cancel(ledger.list_backfills()[0].id)
    s = driver(plan, ledger, ex, clock, procs.start(70)).run()
    assert s.state is BackfillState.CANCELLED and s.exit_code == 5
    assert ledger.get_backfill(s.backfill_id).state is BackfillState.CANCELLED
    rows = ledger.get_units(u.run_key for u in plan.units)
    assert all(r.holder is None for r in rows.values())


def test_sigterm_yields_training_and_ends_preempted(world):
    clock, procs, ledger = world
    plan = make_plan(["SF"], train=True)
    train_key = plan.units[-1].run_key
    ex = ScriptedExecutor(clock, {(train_key, 1): "hang"})
    d = driver(plan, ledger, ex, clock, procs.start(80))
    ex.on_wait = lambda e: d.preempt_requested.set() if e.submitted[-1][0] == train_key else None
    s = d.run()
    assert s.state is BackfillState.PREEMPTED and s.exit_code == 75
    assert ex.yield_asked == [train_key]
    assert s.to_dict()["yielded"][0]["step"] == 7
    assert ledger.get_units([train_key])[train_key].state is UnitState.PENDING
    resumed = driver(plan, ledger, ScriptedExecutor(clock), clock, procs.start(81)).run()
    assert resumed.ok and resumed.resumed


def test_pending_data_is_waited_for_then_committed(world):
    clock, procs, ledger = world
    plan = make_plan(["SF"])
    key = plan.units[0].run_key
    pending = NotReady(
        {"status": "PENDING", "partition": "city=SF", "reasons": [{"message": "18/24 hours"}]}
    )
    ex = ScriptedExecutor(clock, {(key, 1): pending})
    s = driver(plan, ledger, ex, clock, procs.start(90), sensor_wait_timeout_s=600,
               sensor_poll_s=60).run()  # fmt: skip
    assert s.ok and [k for k, _ in ex.submitted] == [key, key]  # same claim, re-run
    rejected = NotReady(
        {"status": "REJECTED", "partition": "city=SF", "reasons": [{"message": "schema"}]}
    )
    plan2 = make_plan(["NYC"])
    k2 = plan2.units[0].run_key
    s2 = driver(
        plan2, ledger, ScriptedExecutor(clock, {(k2, 1): rejected}), clock, procs.start(91)
    ).run()
    assert s2.state is BackfillState.FAILED and "REJECTED" in s2.errors[k2]
    assert ledger.get_units([k2])[k2].state is UnitState.PENDING  # a re-run picks it up


@pytest.mark.parametrize(
    ("point", "background"),
    [(p, False) for p in ("after_claim", "after_stage", "after_commit", "after_publish")]
    + [("after_publish", True)],
)
def test_crash_at_each_point_then_resume_commits_each_unit_once(world, point, background):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC", "LA"], days=2)
    first = procs.start(100)
    ex = ScriptedExecutor(clock)
    # after_publish: a publish every turn, so that there is a second one to crash after
    batch = 2 if point == "after_publish" else 256
    with pytest.raises(Crash):
        driver(plan, ledger, ex, clock, first, crash=crash_at(point, 2), max_concurrency=2,
               publish_batch=batch, publish_in_background=background).run()  # fmt: skip
    procs.kill(first)
    unpublished = {k for k in commits(ledger) if k not in ex.published}
    s = driver(plan, ledger, ex, clock, procs.start(101)).run()
    assert s.ok
    assert commits(ledger) == sorted(u.run_key for u in plan.units)  # once each
    rows = ledger.get_units(u.run_key for u in plan.units)
    assert all(ex.published[k] == r.committed_token for k, r in rows.items())  # all published
    # every unit committed but not yet published (two turns, grouped) was rolled forward
    assert set(s.reconciled) == unpublished
    if background:  # the loop went on committing while the crashed publish ran
        assert len(unpublished) in (0, 2)
    else:
        expect = {"after_claim": 0, "after_stage": 2, "after_commit": 4}.get(point, 0)
        assert len(unpublished) == expect


def test_resume_never_wedges_on_missing_output(world):
    clock, procs, ledger = world
    plan = make_plan(["SF", "NYC"])
    ex = ScriptedExecutor(clock)
    assert driver(plan, ledger, ex, clock, procs.start(110)).run().ok
    gone = plan.units[1].run_key
    ex.missing.add(gone)
    s = driver(plan, ledger, ex, clock, procs.start(111)).run()
    assert s.ok and s.invalidated == (gone,)
    assert [k for k, _ in ex.submitted].count(gone) == 2  # re-run once
    ex.missing.clear()
    again = driver(plan, ledger, ex, clock, procs.start(112)).run()
    assert again.ok and again.invalidated == ()


def test_stale_units_rerun_exactly(world):
    clock, procs, ledger = world
    from rayorch.backfill.versions import stale_units

    plan = make_plan(["SF", "NYC"])
    v1 = {"features": {"config": "c1", "code": "k1", "env": "e1"}}
    ex = ScriptedExecutor(clock)
    d = driver(plan, ledger, ex, clock, procs.start(120))
    d.versions = v1
    assert d.run().ok
    v2 = {"features": {"config": "c1", "code": "k2", "env": "e1"}}
    rows = ledger.get_units(u.run_key for u in plan.units)
    stale = stale_units(plan, rows, v2)
    assert stale == {u.run_key: ["code"] for u in plan.units}
    d2 = driver(plan, ledger, ex, clock, procs.start(121), reprocess=Reprocess.STALE)
    d2.versions, d2.rerun = v2, frozenset(stale)
    s = d2.run()
    assert s.ok and s.counts()["done"] == 2
    assert stale_units(plan, ledger.get_units(stale), v2) == {}


@pytest.mark.parametrize(
    ("cpus", "features_only", "want"),
    [
        (None, False, 16),
        (2, False, 16),
        (8, False, 16),
        (64, False, 128),
        (0.5, False, 16),
        (None, True, 128),
        (2, True, 128),
        (64, True, 128),
        (100, True, 200),
    ],
)
def test_default_concurrency_is_two_per_cpu_with_a_floor(cpus, features_only, want):
    """2 per CPU, at least 16; at least 128 when the plan has feature units only."""
    from rayorch.backfill.window import default_concurrency

    assert default_concurrency(cpus, features_only=features_only) == want


def test_driver_window_is_deeper_for_a_features_only_plan(world):
    """The driver picks the window from the plan: feature units only -> 128 by default, a plan
    with training -> 16; an explicit max_concurrency wins either way."""
    from rayorch.backfill.plan import Step

    clock, _, ledger = world
    feats = make_plan(["SF"], days=2)
    assert {u.step for u in feats.units} == {Step.FEATURES}
    mixed = make_plan(["SF"], days=2, train=True)
    assert Step.TRAIN in {u.step for u in mixed.units}
    ex = ScriptedExecutor(clock)
    assert BackfillDriver(feats, ledger, ex, DriverOptions()).max_conc == 128
    assert BackfillDriver(mixed, ledger, ex, DriverOptions()).max_conc == 16
    assert BackfillDriver(feats, ledger, ex, DriverOptions(max_concurrency=3)).max_conc == 3
