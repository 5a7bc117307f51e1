"""Pure promotion decisions, gates, rollback plans and drift: table-driven, no Ray, no MLflow."""

from __future__ import annotations

import math
import pickle

import pytest

from rayorch.errors import ConfigError, ConflictError, NotFoundError
from rayorch.registry.decisions import (
    AppliedStep,
    PromotionOutcome,
    PromotionRequest,
    VerifyStatus,
    VersionFacts,
    compare_deployed,
    decide_promotion,
    evaluate_gates,
    loss_ratio,
    rollback_plan,
)
from rayorch.registry.errors import CoordinatorMismatchError, NothingToRollBackError
from rayorch.spec import GatesSpec, MetricGate

GOOD = VersionFacts(
    exists=True,
    status="READY",
    run_id="r1",
    metrics={"train_loss": 0.30, "val_loss": 0.33, "val_auc": 0.91},
    has_training_dataset=True,
    artifact_digest="a" * 64,
)
GAP = VersionFacts(
    exists=True,
    status="READY",
    run_id="r2",
    metrics={"train_loss": 0.30, "val_loss": 2.10, "val_auc": 0.90},
    has_training_dataset=True,
)
STRICT = GatesSpec(metrics=[MetricGate(metric="val_auc", min=0.8)], max_loss_ratio=2.0)
Out = PromotionOutcome


def req(version: str = "2", expected: str | None = "1") -> PromotionRequest:
    return PromotionRequest(
        model="fraud", version=version, alias="production", expected_current=expected
    )


@pytest.mark.parametrize(
    ("request_", "current", "facts", "gates", "outcome", "reason_part"),
    [
        (req("2", "1"), "1", GOOD, STRICT, Out.APPLIED, "1 -> 2"),
        (req("2", None), None, GOOD, STRICT, Out.APPLIED, "none -> 2"),
        (req("2", "1"), "2", GOOD, STRICT, Out.ALREADY_TARGET, "already names 2"),
        # a retry after a crash that did move the alias: expected is stale, target in place
        (req("2", "1"), "2", GAP, STRICT, Out.ALREADY_TARGET, "already names 2"),
        (req("2", "1"), "3", GOOD, STRICT, Out.CONFLICT, "names 3, not the expected 1"),
        (req("2", None), "1", GOOD, STRICT, Out.CONFLICT, "names 1, not the expected none"),
        (req("2", "1"), None, GOOD, STRICT, Out.CONFLICT, "names none, not the expected 1"),
        (req("9", "1"), "1", VersionFacts.missing(), STRICT, Out.REJECTED, "no version '9'"),
        (
            req("2", "1"),
            "1",
            VersionFacts(exists=True, status="PENDING_REGISTRATION", has_training_dataset=True),
            GatesSpec(),
            Out.REJECTED,
            "not READY",
        ),
        (req("2", "1"), "1", GAP, STRICT, Out.REJECTED, "exceeds max_loss_ratio 2"),
        # gates come before the CAS: a bad version is REJECTED even on a stale expectation
        (req("2", "1"), "3", GAP, STRICT, Out.REJECTED, "exceeds max_loss_ratio"),
        (req("2", "1"), "1", GAP, GatesSpec(), Out.APPLIED, "1 -> 2"),
        (
            PromotionRequest(model="fraud", version="2", alias="v3", expected_current="1"),
            "1",
            GOOD,
            GatesSpec(),
            Out.REJECTED,
            "reserved by MLflow",
        ),
        (
            PromotionRequest(model="fraud", version="2", alias="", expected_current="1"),
            "1",
            GOOD,
            GatesSpec(),
            Out.REJECTED,
            "not a valid MLflow alias",
        ),
    ],
)
def test_decide_promotion_table(request_, current, facts, gates, outcome, reason_part):
    d = decide_promotion(request_, current, facts, gates)
    assert d.outcome is outcome
    assert d.current == current
    assert d.target == request_.version
    assert any(reason_part in r for r in d.reasons), d.reasons


# (expected, MLflow's alias, rayorch's row) -> outcome, a reason part, whether drift is named
@pytest.mark.parametrize(
    ("expected", "current", "recorded", "outcome", "part", "drift_named"),
    [
        ("1", "1", "1", Out.APPLIED, "1 -> 2", False),  # row and MLflow agree
        ("1", "1", None, Out.APPLIED, "1 -> 2", False),  # set outside, never by rayorch
        ("1", "3", "1", Out.CONFLICT, "names 3, not the expected 1", True),  # moved outside
        ("3", "3", "1", Out.APPLIED, "promoting from it as expected", True),  # seen by caller
        ("1", None, "1", Out.CONFLICT, "names none", True),  # deleted outside rayorch
        ("1", "2", "1", Out.ALREADY_TARGET, "already names 2", False),  # moved to the target
        ("1", "3", "3", Out.CONFLICT, "names 3", False),  # a plain stale expectation
    ],
)
def test_drift_of_an_alias_moved_outside_rayorch(
    expected, current, recorded, outcome, part, drift_named
):
    d = decide_promotion(req("2", expected), current, GOOD, GatesSpec(), recorded=recorded)
    assert d.outcome is outcome
    assert any(part in r for r in d.reasons), d.reasons
    assert any("moved outside rayorch" in r for r in d.reasons) is drift_named, d.reasons


@pytest.mark.parametrize(
    ("facts", "gates", "fails"),
    [
        (GOOD, STRICT, []),
        (GAP, STRICT, ["2.1/0.3 = 7 exceeds max_loss_ratio 2"]),
        (
            GOOD,
            GatesSpec(metrics=[MetricGate(metric="val_auc", min=0.95)]),
            ["below the minimum 0.95"],
        ),
        (
            GOOD,
            GatesSpec(metrics=[MetricGate(metric="val_loss", max=0.2)]),
            ["above the maximum 0.2"],
        ),
        (GOOD, GatesSpec(metrics=[MetricGate(metric="ndcg", min=0.1)]), ["ndcg is not logged"]),
        (
            VersionFacts(
                exists=True, status="READY", metrics={"val_loss": 1.0}, has_training_dataset=True
            ),
            GatesSpec(max_loss_ratio=2.0),
            ["needs train_loss"],
        ),
        (
            VersionFacts(
                exists=True, status="READY", run_id="r9", metrics={}, has_training_dataset=False
            ),
            GatesSpec(),
            ["no validated training dataset input"],
        ),
        (
            VersionFacts(exists=True, status="READY", metrics={}, has_training_dataset=False),
            GatesSpec(require_validated_data=False),
            [],
        ),
        (
            GAP,
            GatesSpec(metrics=[MetricGate(metric="val_auc", min=0.95)], max_loss_ratio=1.5),
            ["below the minimum", "exceeds max_loss_ratio"],
        ),
    ],
)
def test_evaluate_gates_table(facts, gates, fails):
    reasons = evaluate_gates(facts, gates)
    assert len(reasons) == len(fails), reasons
    for part, reason in zip(fails, reasons, strict=True):
        assert part in reason


def test_loss_ratio_edges():
    assert loss_ratio(0.3, 2.1) == pytest.approx(7.0)
    assert loss_ratio(0.0, 0.0) == 1.0
    assert math.isinf(loss_ratio(0.0, 0.1))


def test_metric_gate_needs_a_bound():
    with pytest.raises(ValueError, match="needs min or max"):
        MetricGate(metric="val_auc")
    with pytest.raises(ValueError):
        GatesSpec(max_loss_ratio=0)


def S(kind: str, frm: str | None, to: str) -> AppliedStep:
    return AppliedStep(kind, frm, to)


@pytest.mark.parametrize(
    ("steps", "expected", "target"),
    [
        ([], None, None),
        ([S("promote", None, "1")], "1", None),
        ([S("promote", None, "1"), S("promote", "1", "2")], "2", "1"),
        ([S("promote", None, "1"), S("promote", "1", "2"), S("promote", "2", "3")], "3", "2"),
        # rolling back twice walks back, never forth
        (
            [
                S("promote", None, "1"),
                S("promote", "1", "2"),
                S("promote", "2", "3"),
                S("rollback", "3", "2"),
            ],
            "2",
            "1",
        ),
        (
            [
                S("promote", None, "1"),
                S("promote", "1", "2"),
                S("rollback", "2", "1"),
            ],
            "1",
            None,
        ),
        # a log that starts mid-history (the alias was set before rayorch)
        ([S("promote", "4", "5")], "5", "4"),
        ([S("rollback", "5", "4")], "4", None),
    ],
)
def test_rollback_plan_table(steps, expected, target):
    assert rollback_plan(steps) == (expected, target)


@pytest.mark.parametrize(
    ("alias_version", "expected", "deployed", "status", "deployed_version", "part"),
    [
        ("2", "b" * 64, "b" * 64, VerifyStatus.MATCH, "2", "is version 2"),
        ("2", "b" * 64, "a" * 64, VerifyStatus.DRIFT, "1", "is version 1"),
        ("2", "b" * 64, "f" * 64, VerifyStatus.DRIFT, None, "no registered version"),
        (None, None, "a" * 64, VerifyStatus.UNKNOWN, "1", "has no alias"),
        ("3", None, "a" * 64, VerifyStatus.UNKNOWN, "1", "no rayorch.artifact_digest"),
    ],
)
def test_compare_deployed_table(alias_version, expected, deployed, status, deployed_version, part):
    r = compare_deployed(
        "fraud", "production", alias_version, expected, (deployed,), {"1": "a" * 64, "2": "b" * 64}
    )
    assert r.status is status
    assert r.deployed_version == deployed_version
    assert any(part in x for x in r.reasons), r.reasons
    assert r.to_dict()["status"] == status.value


def test_compare_deployed_matches_any_equivalent_digest():
    # the same files digested with MLflow's download marker in another form
    r = compare_deployed(
        "fraud", "production", "2", "b" * 64, ("c" * 64, "b" * 64), {"2": "b" * 64}
    )
    assert r.status is VerifyStatus.MATCH and r.deployed_digest == "c" * 64
    assert r.deployed_version == "2"


def test_outcome_success_flags_and_registry_errors_pickle():
    assert Out.APPLIED.succeeded and Out.ALREADY_TARGET.succeeded
    assert not Out.CONFLICT.succeeded and not Out.REJECTED.succeeded
    e = pickle.loads(pickle.dumps(NothingToRollBackError("nothing", model="m", alias="a")))
    assert isinstance(e, NotFoundError) and e.fields == {"model": "m", "alias": "a"}
    m = pickle.loads(pickle.dumps(CoordinatorMismatchError("x", db_url="sqlite://")))
    assert isinstance(m, ConfigError) and m.exit_code == 2
    assert not isinstance(m, ConflictError)


def test_decision_and_request_are_frozen():
    d = decide_promotion(req(), "1", GOOD, STRICT)
    with pytest.raises(AttributeError):
        d.outcome = Out.CONFLICT  # type: ignore[misc]
    assert d.to_dict() == {
        "outcome": "APPLIED",
        "reasons": ["production: 1 -> 2"],
        "current": "1",
        "target": "2",
    }
