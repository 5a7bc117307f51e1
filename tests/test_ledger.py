"""The ledger: fencing tokens, leases, fenced commits, races across processes (SQLite and PG)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from rayorch.errors import ClaimHeldError, IllegalTransitionError, StaleTokenError
from rayorch.ledger.states import BackfillState, Reprocess, UnitState
from rayorch.ledger.store import ClaimOutcome, Ledger, UnitSpec

KEYS = [f"p/features/city=SF/date=2026-10-{d:02d}" for d in range(1, 5)]
UNITS = [UnitSpec(k, "p", "features", k.split("/", 2)[2]) for k in KEYS]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_ledger_url")


def test_claim_commit_and_fencing(ledger_url):
    clock = Clock()
    led = Ledger(ledger_url, clock=clock)
    a, _ = led.start_backfill("p", {"x": 1}, "fp", UNITS)
    b, _ = led.start_backfill("p", {"x": 2}, "fp", UNITS)
    [ca] = led.claim_many(a.id, KEYS[:1], lease_s=10)
    assert ca.outcome is ClaimOutcome.GRANTED and ca.token == 1
    [cb] = led.claim_many(b.id, KEYS[:1], lease_s=10)
    assert cb.outcome is ClaimOutcome.HELD and cb.unit.holder == a.id
    clock.t += 11  # a's lease expires: b takes over with a higher token
    [cb] = led.claim_many(b.id, KEYS[:1], lease_s=10)
    assert cb.outcome is ClaimOutcome.GRANTED and cb.token == 2
    with pytest.raises(StaleTokenError) as ei:
        led.commit(a.id, KEYS[0], 1, {"rows": 1})  # the zombie
    assert ei.value.fields["current_token"] == 2 and "current token is 2" in ei.value.message
    led.commit(b.id, KEYS[0], 2, {"rows": 1})
    row = led.get_units([KEYS[0]])[KEYS[0]]
    assert row.state is UnitState.DONE and row.committed_token == 2 and row.committed_by == b.id
    [again] = led.claim_many(a.id, KEYS[:1])
    assert again.outcome is ClaimOutcome.ALREADY_DONE
    [re] = led.claim_many(a.id, KEYS[:1], reprocess=Reprocess.ALL)
    assert re.outcome is ClaimOutcome.GRANTED and re.token == 3
    commits = [e for e in led.events(KEYS[0]) if e["event"] == "COMMIT"]
    assert [e["token"] for e in commits] == [2]
    led.close()


def test_fail_and_reprocess_policies(ledger_url):
    led = Ledger(ledger_url)
    bf, _ = led.start_backfill("p", {}, "fp", UNITS)
    [c] = led.claim_many(bf.id, KEYS[1:2])
    assert led.fail(bf.id, KEYS[1], c.token, "boom")
    assert not led.fail(bf.id, KEYS[1], c.token, "again")  # not RUNNING any more
    [c2] = led.claim_many(bf.id, KEYS[1:2], reprocess=Reprocess.MISSING)
    assert c2.outcome is ClaimOutcome.FAILED_BEFORE and c2.unit.last_error == "boom"
    [c3] = led.claim_many(bf.id, KEYS[1:2], reprocess=Reprocess.FAILED)
    assert c3.outcome is ClaimOutcome.GRANTED and c3.token == c.token + 1
    counts = led.unit_counts(bf.id)
    assert counts["RUNNING"] == 1 and counts["PENDING"] == 3
    led.close()


def test_resume_rules_and_cancel(tmp_path):
    clock = Clock()
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}", clock=clock)
    bf, resumed = led.start_backfill("p", {"a": 1}, "fp", UNITS, stale_after_s=30)
    assert not resumed
    other, resumed = led.start_backfill("p", {"a": 1}, "fp", UNITS, stale_after_s=30)
    assert not resumed and other.id != bf.id  # the first driver is alive
    with pytest.raises(ClaimHeldError, match="still driven"):
        led.start_backfill("p", {"a": 1}, "fp", UNITS, resume_id=bf.id, stale_after_s=30)
    clock.t += 31
    again, resumed = led.start_backfill("p", {"a": 1}, "fp", UNITS, stale_after_s=30)
    assert resumed and again.id in (bf.id, other.id)
    led.finish_backfill(bf.id, BackfillState.SUCCEEDED, {})
    with pytest.raises(IllegalTransitionError):
        led.finish_backfill(bf.id, BackfillState.CANCELLED, {})
    [claim] = led.claim_many(other.id, KEYS[:1])
    assert claim.outcome is ClaimOutcome.GRANTED
    clock.t += 120  # other's driver is gone: cancel frees its claims itself
    cancelled = led.request_cancel(other.id)
    assert cancelled.state is BackfillState.CANCELLED
    assert led.get_units(KEYS[:1])[KEYS[0]].state is UnitState.PENDING
    led.close()


def _race(url: str, backfill_id: str, barrier, out) -> None:
    led = Ledger(url)
    barrier.wait()
    got = []
    for r in led.claim_many(backfill_id, KEYS, lease_s=60):
        if r.outcome is ClaimOutcome.GRANTED:
            led.commit(backfill_id, r.run_key, r.token, {"by": backfill_id})
            got.append(r.run_key)
    out.put(got)
    led.close()


def test_claims_race_across_processes(ledger_url):
    """Six processes claim the same keys at once: each key is granted and committed once."""
    led = Ledger(ledger_url)
    ids = [led.start_backfill("p", {"i": i}, "fp", UNITS)[0].id for i in range(6)]
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(ids)), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(ledger_url, i, barrier, out)) for i in ids]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    granted = sorted(k for r in results for k in r)
    assert granted == sorted(KEYS)  # every key exactly once
    commits = led.events(event_name="COMMIT")
    assert sorted(e["run_key"] for e in commits) == sorted(KEYS)
    led.close()
