"""Concurrent promotions of one model carried out as batches (``combining``), and a batch's
decisions: one read of the alias, at most one move, the rest answered as serial calls would
be. The combiner alone in milliseconds; the coordinator on real MLflow (SQLite) and a real
SQLite ledger, no Ray."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import pytest

from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import Phase
from rayorch.registry.combining import Combiner
from rayorch.registry.coordinator import Coordinator
from rayorch.registry.decisions import PromotionOutcome, PromotionRequest
from rayorch.registry.errors import PromotionInterruptedError
from rayorch.registry.testing import GAP, RegistryBuilder
from rayorch.spec import GatesSpec, MetricGate

Out = PromotionOutcome


# --- the combiner ----------------------------------------------------------------------------
def test_a_lone_call_runs_at_once_as_a_batch_of_one():
    seen = []
    c = Combiner(lambda key, items: [seen.append((key, list(items))) or i * 2 for i in items])
    assert c.submit("m", 3) == 6
    assert seen == [("m", [3])]
    assert (c.batches, c.items) == (1, 1)


def test_calls_arriving_during_a_batch_form_the_next_batch_with_their_own_results():
    gate, entered = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def run(key, items):
        batches.append(list(items))
        if items == [0]:
            entered.set()
            assert gate.wait(10)
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    c = Combiner(run)
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = c.submit("m", i)
        except ValueError as e:
            results[i] = str(e)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert entered.wait(10)
    rest = [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 10
    while len(c._queues["m"]) < 5:  # all five queued behind the running batch
        assert time.monotonic() < deadline
        time.sleep(0.001)
    gate.set()
    for t in [first, *rest]:
        t.join(10)
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2
    assert results == {0: 0, 1: 10, 2: 20, 3: "bad 3", 4: 40, 5: 50}


def test_a_failing_batch_fails_each_of_its_calls_and_keys_do_not_share_batches():
    def run(key, items):
        if key == "broken":
            raise RuntimeError("ledger down")
        return list(items)

    c = Combiner(run)
    with pytest.raises(RuntimeError, match="ledger down"):
        c.submit("broken", 1)
    assert c.submit("fine", 2) == 2
    with c.exclusive("fine"):  # held: a submit of another key still runs
        assert c.submit("other", 5) == 5


# --- a batch of promotions -------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    b = RegistryBuilder(str(root))
    versions = {m: [b.logged(m, seed=i).version for i in range(5)] for m in ("b1", "b2", "b3")}
    versions["gap"] = [b.logged("b1", GAP, seed=9).version]  # v6 of b1: fails the loss gate
    return root, b, versions


def _alias(b, model, alias):
    aliases = b.client.get_registered_model(model).aliases
    return None if alias not in aliases else str(aliases[alias])


def test_one_batch_one_move_the_rest_as_if_after_it(built, tmp_path):
    """Eight promotions of one alias in one batch, six expecting the current version: the first
    of those moves it, the others are CONFLICT naming the winner (or ALREADY_TARGET for the
    same target); a stale expectation is a CONFLICT, a gate failure REJECTED. Rows record that
    order; rayorch's row moved once; MLflow's alias names the winner."""
    _, b, vs = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    g, gated = GatesSpec(), GatesSpec(max_loss_ratio=2.0)
    first = c.promote(PromotionRequest("b1", vs["b1"][0], "prod", None), g)
    assert first.outcome is Out.APPLIED
    v = vs["b1"]
    jobs = [
        (PromotionRequest("b1", v[1], "prod", v[3]), g),  # stale expectation
        (PromotionRequest("b1", v[2], "prod", v[0]), g),  # first mover: wins
        (PromotionRequest("b1", v[3], "prod", v[0]), g),
        (PromotionRequest("b1", vs["gap"][0], "prod", v[0]), gated),  # gate fails
        (PromotionRequest("b1", v[2], "prod", v[0]), g),  # wants what the winner set
        (PromotionRequest("b1", v[4], "prod", v[0]), g),
        (PromotionRequest("b1", v[0], "prod", v[0]), g),  # already there
        (PromotionRequest("b1", v[1], "prod", v[0]), g),
    ]
    res = c._promote_batch("b1", jobs)
    outs = [r.outcome for r in res]
    assert outs == [Out.CONFLICT, Out.APPLIED, Out.CONFLICT, Out.REJECTED,
                    Out.ALREADY_TARGET, Out.CONFLICT, Out.ALREADY_TARGET, Out.CONFLICT]  # fmt: skip
    assert res[0].decision.current == v[0]  # answered as of the read
    assert all(res[i].decision.current == v[2] for i in (2, 4, 5, 7))  # after the move
    assert _alias(b, "b1", "prod") == v[2]
    row = c.audit.recorded(AliasKey(b.uri, "b1", "prod"))
    assert (row.version, row.previous, row.revision, row.pending) == (v[2], v[0], 2, False)
    rows = c.audit.history(b.uri, "b1", "prod")[1:]
    assert all(r.phase is Phase.FINISHED for r in rows)
    # the winner's row comes before the rows decided after its move
    by_id = {r.id: r for r in rows}
    win = by_id[res[1].audit_id]
    assert all(by_id[res[i].audit_id].id > win.id for i in (2, 4, 5, 7))
    assert all(by_id[res[i].audit_id].id < win.id for i in (0, 3, 6))
    assert sorted(r.audit_id for r in res) == sorted(by_id)
    assert [r.moved_alias for r in rows].count(True) == 1
    c.audit.close()


def test_threads_promoting_at_once_exactly_one_moves_and_the_chain_holds(built, tmp_path):
    """Eight threads of one coordinator (as the threaded actor runs them), three rounds, each
    expecting the current version: one APPLIED per round, seven CONFLICT naming it."""
    _, b, vs = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    current = None
    for _ in range(3):
        targets = [v for v in vs["b2"] if v != current] * 2
        barrier = threading.Barrier(8)
        out: list = [None] * 8

        def go(i, t=targets, cur=current, bar=barrier, out=out):
            bar.wait()
            out[i] = c.promote(PromotionRequest("b2", t[i], "prod", cur), GatesSpec())

        threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        counts = Counter(r.outcome for r in out)
        winner = next(r for r in out if r.outcome is Out.APPLIED).decision.target
        assert counts[Out.APPLIED] == 1, counts
        assert all(r.decision.current == winner for r in out if r.outcome is not Out.APPLIED)
        assert counts[Out.CONFLICT] + counts[Out.ALREADY_TARGET] == 7
        assert _alias(b, "b2", "prod") == winner
        current = winner
    moved = [r for r in c.audit.history(b.uri, "b2", "prod") if r.moved_alias]
    assert len(moved) == 3
    assert all(n.from_version == p.to_version for p, n in itertools.pairwise(moved))
    assert c.batches()["promotions"] == 24 and c.batches()["batches"] <= 24
    c.audit.close()


def test_a_failed_move_rolls_back_and_the_next_mover_is_decided_afresh(built, tmp_path):
    """The winner's version was deleted in MLflow after its facts were cached: MLflow refuses
    the alias write, the winner is ROLLED_BACK and told to retry, and the next promotion of the
    batch that expected the same version is decided again against the real alias: APPLIED."""
    _, b, vs = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    v = vs["b3"]
    g = GatesSpec(metrics=[MetricGate(metric="val_auc", min=0.5)])
    assert c.promote(PromotionRequest("b3", v[0], "prod", None), g).outcome is Out.APPLIED
    c.view.facts("b3", v[4])  # cached while it existed
    b.client.delete_model_version("b3", v[4])
    jobs = [(PromotionRequest("b3", v[4], "prod", v[0]), g),
            (PromotionRequest("b3", v[1], "prod", v[0]), g),
            (PromotionRequest("b3", v[2], "prod", v[0]), g)]  # fmt: skip
    res = c._promote_batch("b3", jobs)
    assert isinstance(res[0], PromotionInterruptedError)
    assert [r.outcome for r in res[1:]] == [Out.APPLIED, Out.CONFLICT]
    assert res[2].decision.current == v[1]
    assert _alias(b, "b3", "prod") == v[1]
    rows = c.audit.history(b.uri, "b3", "prod")[1:]
    assert [(r.to_version, r.outcome, r.phase) for r in rows] == [
        (v[4], Out.APPLIED, Phase.ROLLED_BACK),
        (v[1], Out.APPLIED, Phase.FINISHED),
        (v[2], Out.CONFLICT, Phase.FINISHED),
    ]
    assert "MLflow failed" in rows[0].reasons[-1]
    c.audit.close()
