"""The ledger: fencing tokens, leases, fenced commits, races across processes (SQLite and PG)."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import create_engine, text

from rayorch.errors import (
    ClaimHeldError,
    IllegalTransitionError,
    OwnershipLostError,
    StaleTokenError,
)
from rayorch.ledger.owners import Observation, OwnerInfo
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
    a, _ = led.start_backfill("p", {"x": 1}, "fp", UNITS, lease_s=10)
    b, _ = led.start_backfill("p", {"x": 2}, "fp", UNITS, lease_s=10)
    [ca] = led.claim_many(a.ownership, KEYS[:1])
    assert ca.outcome is ClaimOutcome.GRANTED and ca.token == 1
    [cb] = led.claim_many(b.ownership, KEYS[:1])
    assert cb.outcome is ClaimOutcome.HELD and cb.unit.holder == a.id
    clock.t += 11  # a's lease expires: b takes over with a higher token
    [cb] = led.claim_many(b.ownership, KEYS[:1])
    assert cb.outcome is ClaimOutcome.GRANTED and cb.token == 2
    with pytest.raises(StaleTokenError) as ei:
        led.commit(a.ownership, KEYS[0], 1, {"rows": 1})  # the zombie
    assert ei.value.fields["current_token"] == 2 and "current token is 2" in ei.value.message
    led.commit(b.ownership, KEYS[0], 2, {"rows": 1}, {"config": "c", "code": "k", "env": "e"})
    row = led.get_units([KEYS[0]])[KEYS[0]]
    assert row.state is UnitState.DONE and row.committed_token == 2 and row.committed_by == b.id
    assert row.version == {"config": "c", "code": "k", "env": "e"}
    [again] = led.claim_many(a.ownership, KEYS[:1])
    assert again.outcome is ClaimOutcome.ALREADY_DONE
    [stale] = led.claim_many(a.ownership, KEYS[:1], rerun=[KEYS[0]])
    assert stale.outcome is ClaimOutcome.GRANTED and stale.token == 3
    led.release(a.ownership, KEYS[0], 3, "test")
    [re] = led.claim_many(a.ownership, KEYS[:1], reprocess=Reprocess.ALL)
    assert re.outcome is ClaimOutcome.GRANTED and re.token == 4
    commits = [e for e in led.events(KEYS[0]) if e["event"] == "COMMIT"]
    assert [e["token"] for e in commits] == [2]
    led.close()


def test_a_batch_commit_accepts_exactly_the_current_tokens(ledger_url):
    """One fenced commit of several units: the ones at their current token are committed
    (one COMMIT event each), a stale one in the same batch is refused by name; a batch with
    nothing stale commits all of it."""
    clock = Clock()
    led = Ledger(ledger_url, clock=clock)
    a, _ = led.start_backfill("p", {"x": 1}, "fp", UNITS, lease_s=10)
    b, _ = led.start_backfill("p", {"x": 2}, "fp", UNITS, lease_s=10)
    assert [c.token for c in led.claim_many(a.ownership, KEYS)] == [1, 1, 1, 1]
    clock.t += 11  # a's leases expire: b re-claims the second key at token 2
    [cb] = led.claim_many(b.ownership, KEYS[1:2])
    assert cb.token == 2
    batch = [(k, 1, {"rows": i}) for i, k in enumerate(KEYS[:3])]
    errors = led.commit_many(a.ownership, batch)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], StaleTokenError) and errors[1].fields["run_key"] == KEYS[1]
    rows = led.get_units(KEYS)
    assert [rows[k].state for k in KEYS] == [
        UnitState.DONE,
        UnitState.RUNNING,
        UnitState.DONE,
        UnitState.RUNNING,
    ]
    assert rows[KEYS[2]].output == {"rows": 2} and rows[KEYS[1]].holder == b.id
    assert led.commit_many(b.ownership, [(KEYS[1], 2, {"rows": 9})]) == [None]
    assert led.commit_many(a.ownership, [(KEYS[3], 1, {"rows": 3})]) == [None]
    commits = [(e["run_key"], e["token"]) for e in led.events(event_name="COMMIT")]
    assert sorted(commits) == sorted([(KEYS[0], 1), (KEYS[1], 2), (KEYS[2], 1), (KEYS[3], 1)])
    led.close()


@pytest.mark.parametrize("known", [True, False], ids=["outputs-known", "outputs-read"])
def test_amends_apply_only_at_the_committed_token(ledger_url, known):
    """A publish's amend adds to each output while the unit is DONE at that token: with the
    committed outputs known (nothing read back) or read in the transaction, a unit
    re-committed since by another backfill keeps its newer output."""
    led = Ledger(ledger_url)
    a, _ = led.start_backfill("p", {"x": 1}, "fp", UNITS)
    b, _ = led.start_backfill("p", {"x": 2}, "fp", UNITS)
    led.claim_many(a.ownership, KEYS[:2])
    outs = {k: {"rows": i} for i, k in enumerate(KEYS[:2])}
    assert led.commit_many(a.ownership, [(k, 1, o) for k, o in outs.items()]) == [None, None]

    def amend(extra: dict) -> list[bool]:
        items = [(k, 1, extra) for k in KEYS[:2]]
        merged = {k: {**o, **extra} for k, o in outs.items()}
        return led.amend_outputs(a.ownership, items, merged if known else None)

    assert amend({"snapshot_id": 7}) == [True, True]
    rows = led.get_units(KEYS[:2])
    assert [rows[k].output for k in KEYS[:2]] == [
        {"rows": 0, "snapshot_id": 7},
        {"rows": 1, "snapshot_id": 7},
    ]
    [c] = led.claim_many(b.ownership, KEYS[1:2], rerun=KEYS[1:2])  # b re-runs the second
    assert c.token == 2 and led.commit_many(b.ownership, [(KEYS[1], 2, {"rows": 9})]) == [None]
    outs[KEYS[0]]["snapshot_id"] = 7
    assert amend({"snapshot_id": 8}) == [True, False]  # a's second unit is not a's any more
    rows = led.get_units(KEYS[:2])
    assert rows[KEYS[0]].output == {"rows": 0, "snapshot_id": 8}
    assert rows[KEYS[1]].output == {"rows": 9} and rows[KEYS[1]].committed_token == 2
    led.close()


def test_fail_and_reprocess_policies(ledger_url):
    led = Ledger(ledger_url)
    bf, _ = led.start_backfill("p", {}, "fp", UNITS)
    own = bf.ownership
    [c] = led.claim_many(own, KEYS[1:2])
    assert led.fail(own, KEYS[1], c.token, "boom")
    assert not led.fail(own, KEYS[1], c.token, "again")  # not RUNNING any more
    [c2] = led.claim_many(own, KEYS[1:2], reprocess=Reprocess.MISSING)
    assert c2.outcome is ClaimOutcome.FAILED_BEFORE and c2.unit.last_error == "boom"
    [c3] = led.claim_many(own, KEYS[1:2], reprocess=Reprocess.FAILED)
    assert c3.outcome is ClaimOutcome.GRANTED and c3.token == c.token + 1
    counts = led.unit_counts(bf.id)
    assert counts["RUNNING"] == 1 and counts["PENDING"] == 3
    led.close()


class Procs:
    """The process table the ledger's observer sees."""

    def __init__(self) -> None:
        self.alive: set[int] = set()

    def owner(self, pid: int, host: str = "here") -> OwnerInfo:
        self.alive.add(pid)
        return OwnerInfo(host, pid, 1.0)

    def observe(self, o: OwnerInfo) -> Observation:
        return Observation("here", 1.0 if o.host == "here" and o.pid in self.alive else None)


def test_resume_rules_and_cancel(tmp_path):
    clock, procs = Clock(), Procs()
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}", clock=clock, observe=procs.observe)
    first = procs.owner(1)
    bf, resumed = led.start_backfill("p", {"a": 1}, "fp", UNITS, lease_s=30, owner=first)
    assert not resumed and bf.owner_epoch == 1 and bf.lease_s == 30
    other, resumed = led.start_backfill("p", {"a": 1}, "fp", UNITS, owner=procs.owner(2))
    assert not resumed and other.id != bf.id  # the first driver is alive
    with pytest.raises(ClaimHeldError, match="still driven"):
        led.start_backfill("p", {"a": 1}, "fp", UNITS, resume_id=bf.id, owner=procs.owner(3))
    procs.alive.discard(1)  # the first driver died: taken over at once, no lease wait
    o = led.open_backfill("p", {"a": 1}, "fp", UNITS, owner=procs.owner(4), lease_s=5)
    assert o.resumed and o.backfill.id == bf.id and o.took_over_from == first
    assert o.backfill.owner_epoch == 2
    with pytest.raises(OwnershipLostError, match="taken over"):
        led.heartbeat(bf.ownership)  # the old owner's writes are refused from now on
    led.finish_backfill(o.ownership, BackfillState.SUCCEEDED, {})
    with pytest.raises(IllegalTransitionError):
        led.finish_backfill(o.ownership, BackfillState.CANCELLED, {})
    [claim] = led.claim_many(other.ownership, KEYS[:1])
    assert claim.outcome is ClaimOutcome.GRANTED
    procs.alive.discard(2)  # other's driver is gone: cancel frees its claims itself
    cancelled = led.request_cancel(other.id)
    assert cancelled.state is BackfillState.CANCELLED
    assert led.get_units(KEYS[:1])[KEYS[0]].state is UnitState.PENDING
    led.close()


def test_lease_is_the_stored_one_on_the_database_clock(tmp_path):
    """A newcomer's own lease setting does not shorten the holder's lease."""
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}", observe=lambda o: Observation("x"))
    a, _ = led.start_backfill("p", {"x": 1}, "fp", UNITS, lease_s=300, owner=OwnerInfo("h", 1, 1))
    b, _ = led.start_backfill("p", {"x": 2}, "fp", UNITS, lease_s=1, owner=OwnerInfo("h", 2, 1))
    [_ca] = led.claim_many(a.ownership, KEYS[:1])
    row = led.get_units(KEYS[:1])[KEYS[0]]
    assert 299 < row.lease_until - led.now() <= 300
    [cb] = led.claim_many(b.ownership, KEYS[:1])
    assert cb.outcome is ClaimOutcome.HELD
    led.close()


def test_version_1_ledger_is_migrated_in_place(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("CREATE TABLE rayorch_meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        c.execute(text("INSERT INTO rayorch_meta VALUES ('schema_version', '1')"))
        c.execute(
            text(
                "CREATE TABLE backfills (id VARCHAR(64) PRIMARY KEY, pipeline VARCHAR(200) NOT "
                "NULL, params_hash VARCHAR(64) NOT NULL, params TEXT NOT NULL, "
                "config_fingerprint VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL, owner "
                "VARCHAR(200) NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, "
                "heartbeat_at FLOAT NOT NULL, cancel_requested BOOLEAN NOT NULL, summary TEXT)"
            )
        )
        c.execute(
            text(
                "INSERT INTO backfills VALUES ('bf-old', 'p', 'h', '{}', 'fp', 'SUCCEEDED', "
                "'h:1', 1, 1, 1, 0, NULL)"
            )
        )
        c.execute(
            text(
                "CREATE TABLE units (run_key VARCHAR(400) PRIMARY KEY, pipeline VARCHAR(200), "
                "step VARCHAR(32), partition VARCHAR(300), state VARCHAR(16), token INTEGER, "
                "holder VARCHAR(64), lease_until FLOAT, attempts INTEGER, last_error TEXT, "
                "committed_token INTEGER, committed_at FLOAT, committed_by VARCHAR(64), output "
                "TEXT, progress TEXT, updated_at FLOAT)"
            )
        )
    eng.dispose()
    led = Ledger(url)
    old = led.get_backfill("bf-old")
    assert old.state is BackfillState.SUCCEEDED and old.owner_epoch == 0 and old.lease_s == 60
    bf, _ = led.start_backfill("p", {"n": 1}, "fp", UNITS)
    assert led.claim_many(bf.ownership, KEYS[:1])[0].outcome is ClaimOutcome.GRANTED
    led.close()


def _first_use(url: str, barrier, out) -> None:
    barrier.wait()
    try:
        led = Ledger(url)
        _bf, _ = led.start_backfill("p", {"pid": __import__("os").getpid()}, "fp", UNITS)
        led.close()
        out.put("ok")
    except Exception as e:  # the failure is the test's message
        out.put(f"{type(e).__name__}: {e}")


def test_concurrent_first_use_of_a_fresh_ledger(tmp_path):
    """Eight processes open a ledger that does not exist yet, at once, three times over."""
    ctx = mp.get_context("spawn")
    for i in range(3):
        url = f"sqlite:///{tmp_path / f'fresh{i}' / 'ledger.db'}"
        barrier, out = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_first_use, args=(url, barrier, out)) for _ in range(8)]
        for p in procs:
            p.start()
        got = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == ["ok"] * 8


def _race(url: str, backfill_id: str, barrier, out) -> None:
    led = Ledger(url)
    own = led.get_backfill(backfill_id).ownership
    barrier.wait()
    got = []
    for r in led.claim_many(own, KEYS):
        if r.outcome is ClaimOutcome.GRANTED:
            led.commit(own, r.run_key, r.token, {"by": backfill_id})
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
