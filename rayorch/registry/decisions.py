"""Promotion decisions: pure functions from facts to a typed decision.

Nothing here imports ``ray`` or ``mlflow``. The coordinator actor gathers :class:`VersionFacts`
and the alias's current version from MLflow, calls :func:`decide_promotion`, and only then acts.
The order of checks is part of the contract (see :func:`decide_promotion`).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rayorch.spec import GatesSpec

READY = "READY"


class PromotionOutcome(str, enum.Enum):
    APPLIED = "APPLIED"  # the alias now names the target; it moved in this call
    ALREADY_TARGET = "ALREADY_TARGET"  # the alias already named the target; nothing moved
    CONFLICT = "CONFLICT"  # the alias is not at the expected version; nothing moved
    REJECTED = "REJECTED"  # unknown / not READY version, or a gate failed; nothing moved

    @property
    def succeeded(self) -> bool:
        """The alias names the target after this outcome."""
        return self in (PromotionOutcome.APPLIED, PromotionOutcome.ALREADY_TARGET)


@dataclass(frozen=True, slots=True)
class PromotionRequest:
    """Move ``alias`` of ``model`` to ``version`` if it currently names ``expected_current``.

    ``expected_current=None`` means the caller expects the alias to be unset.
    """

    model: str
    version: str
    alias: str
    expected_current: str | None
    kind: str = "promote"  # or "rollback"
    who: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VersionFacts:
    """What MLflow says about one model version and its run."""

    exists: bool
    status: str | None = None
    run_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    has_training_dataset: bool = False
    artifact_digest: str | None = None

    @classmethod
    def missing(cls) -> VersionFacts:
        return cls(exists=False)


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    outcome: PromotionOutcome
    reasons: tuple[str, ...]
    current: str | None  # the alias's version when the decision was taken
    target: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "reasons": list(self.reasons),
            "current": self.current,
            "target": self.target,
        }


def evaluate_gates(facts: VersionFacts, gates: GatesSpec) -> tuple[str, ...]:
    """Reasons the version fails the gates; empty when it passes them all."""
    failed: list[str] = []
    for g in gates.metrics:
        value = facts.metrics.get(g.metric)
        if value is None or math.isnan(value):
            failed.append(f"metric {g.metric} is not logged on run {facts.run_id}")
            continue
        if g.min is not None and value < g.min:
            failed.append(f"metric {g.metric}={value:.4g} is below the minimum {g.min:g}")
        if g.max is not None and value > g.max:
            failed.append(f"metric {g.metric}={value:.4g} is above the maximum {g.max:g}")
    if gates.max_loss_ratio is not None:
        tr = facts.metrics.get(gates.train_loss_metric)
        va = facts.metrics.get(gates.val_loss_metric)
        if tr is None or va is None:
            pairs = ((gates.train_loss_metric, tr), (gates.val_loss_metric, va))
            missing = [m for m, v in pairs if v is None]
            failed.append(f"loss ratio gate needs {', '.join(missing)} on run {facts.run_id}")
        else:
            ratio = loss_ratio(tr, va)
            if ratio > gates.max_loss_ratio:
                failed.append(
                    f"{gates.val_loss_metric}/{gates.train_loss_metric} = {va:.4g}/{tr:.4g} = "
                    f"{ratio:.3g} exceeds max_loss_ratio {gates.max_loss_ratio:g} "
                    "(train/validation gap: duplicated or leaked training rows?)"
                )
    if gates.require_validated_data and not facts.has_training_dataset:
        failed.append(
            f"run {facts.run_id} has no validated training dataset input "
            "(train through rayorch, or set gates.require_validated_data: false)"
        )
    return tuple(failed)


def loss_ratio(train_loss: float, val_loss: float) -> float:
    if train_loss <= 0:
        return 1.0 if val_loss <= 0 else math.inf
    return val_loss / train_loss


def decide_promotion(
    request: PromotionRequest,
    current: str | None,
    facts: VersionFacts,
    gates: GatesSpec,
    *,
    recorded: str | None = None,
) -> PromotionDecision:
    """Decide one compare-and-set promotion.

    ``current`` is the version MLflow's alias names; ``recorded`` the version rayorch last set
    it to (its own row, see ``alias_rows``; None when rayorch never moved it).

    Order: a reserved alias name, an unknown or a not-READY version is REJECTED; an alias already at the target is
    ALREADY_TARGET (idempotent retries, e.g. after a coordinator crash, succeed); a version that
    fails a gate is REJECTED; an alias not at ``expected_current`` is a CONFLICT naming the
    actual current version (and, when it was moved outside rayorch, saying so); otherwise
    APPLIED. An alias moved outside rayorch is promoted from only by a caller whose
    ``expected_current`` names where it was moved: that caller has seen the move.
    """
    target = request.version

    def out(outcome: PromotionOutcome, *reasons: str) -> PromotionDecision:
        return PromotionDecision(outcome, tuple(reasons), current, target)

    bad_alias = alias_problem(request.alias)
    if bad_alias:
        return out(PromotionOutcome.REJECTED, bad_alias)
    if not facts.exists:
        return out(PromotionOutcome.REJECTED, f"model {request.model!r} has no version {target!r}")
    if facts.status != READY:
        return out(
            PromotionOutcome.REJECTED,
            f"version {target} of {request.model!r} is {facts.status}, not {READY}",
        )
    if current == target:
        return out(PromotionOutcome.ALREADY_TARGET, f"{request.alias} already names {target}")
    failed = evaluate_gates(facts, gates)
    if failed:
        return out(PromotionOutcome.REJECTED, *failed)
    drift = alias_drift(request.alias, recorded, current)
    if current != request.expected_current:
        return out(
            PromotionOutcome.CONFLICT,
            f"{request.alias} names {_v(current)}, not the expected "
            f"{_v(request.expected_current)}; re-read it and retry with --expect {_v(current)}",
            *((drift,) if drift else ()),
        )
    moved = f"{request.alias}: {_v(current)} -> {target}"
    if drift:
        return out(PromotionOutcome.APPLIED, moved, f"{drift}; promoting from it as expected")
    return out(PromotionOutcome.APPLIED, moved)


def alias_drift(alias: str, recorded: str | None, current: str | None) -> str | None:
    """Why the alias is not where rayorch last set it (moved outside rayorch), or None."""
    if recorded is None or recorded == current:
        return None
    return (
        f"{alias} was moved outside rayorch: rayorch last set it to {recorded}, MLflow names "
        f"{_v(current)}"
    )


_RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$")


def alias_problem(alias: str) -> str | None:
    """Why MLflow would refuse ``alias`` (reserved or malformed), or None."""
    if not alias or len(alias) > 255 or "/" in alias or alias != alias.strip():
        return f"alias {alias!r} is not a valid MLflow alias name"
    if _RESERVED_ALIAS.match(alias):
        return f"alias {alias!r} is reserved by MLflow ('latest', 'v<N>'); pick another name"
    return None


def _v(version: str | None) -> str:
    return "none" if version is None else version


# --- rollback ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AppliedStep:
    """One applied alias move from the audit log, oldest first."""

    kind: str  # "promote" | "rollback"
    from_version: str | None
    to_version: str


def rollback_plan(steps: Sequence[AppliedStep]) -> tuple[str | None, str | None]:
    """(expected current, rollback target) from the applied moves of one alias.

    The alias's history is a stack: a promotion pushes its target, a rollback pops. Rolling back
    twice from v3 (after v1 -> v2 -> v3) therefore goes to v2, then v1, never back to v3.
    The target is None when there is no earlier version to return to.
    """
    stack: list[str | None] = []
    for s in steps:
        if not stack:
            stack.append(s.from_version)
        if s.kind == "rollback":
            if len(stack) > 1:
                stack.pop()
            if stack[-1] != s.to_version:  # the log started mid-history: below is unknown
                stack = [s.to_version]
        else:
            stack.append(s.to_version)
    if not stack:
        return None, None
    current = stack[-1]
    target = stack[-2] if len(stack) > 1 else None
    return current, target


# --- deployed artifact check --------------------------------------------------------------
class VerifyStatus(str, enum.Enum):
    MATCH = "MATCH"  # the deployed artifact is the one the alias names
    DRIFT = "DRIFT"  # it is not
    UNKNOWN = "UNKNOWN"  # the alias is unset or its version has no recorded digest


@dataclass(frozen=True, slots=True)
class VerifyResult:
    status: VerifyStatus
    model: str
    alias: str
    alias_version: str | None
    expected_digest: str | None
    deployed_digest: str
    deployed_version: str | None  # the version whose artifact is deployed, if any is known
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "model": self.model,
            "alias": self.alias,
            "alias_version": self.alias_version,
            "expected_digest": self.expected_digest,
            "deployed_digest": self.deployed_digest,
            "deployed_version": self.deployed_version,
            "reasons": list(self.reasons),
        }


def compare_deployed(
    model: str,
    alias: str,
    alias_version: str | None,
    expected_digest: str | None,
    deployed_digests: Sequence[str],
    digests_by_version: Mapping[str, str],
) -> VerifyResult:
    """Is the deployed artifact the one ``alias`` names, by content digest?

    ``deployed_digests`` are equivalent digests of the same deployed files (the first is the
    plain one): they differ only in how MLflow's download marker is treated, see
    ``RegistryView.deployed_digests``. Any of them equal to the recorded digest is a match.
    """
    candidates = set(deployed_digests)
    deployed_version = next(
        (v for v, d in sorted(digests_by_version.items()) if d in candidates), None
    )
    deployed_digest = deployed_digests[0]

    def res(status: VerifyStatus, *reasons: str) -> VerifyResult:
        return VerifyResult(
            status, model, alias, alias_version, expected_digest, deployed_digest,
            deployed_version, tuple(reasons),
        )  # fmt: skip

    if alias_version is None:
        return res(VerifyStatus.UNKNOWN, f"{model!r} has no alias {alias!r}")
    if not expected_digest:
        return res(
            VerifyStatus.UNKNOWN,
            f"version {alias_version} has no rayorch.artifact_digest tag (registered outside "
            "rayorch?)",
        )
    if expected_digest in candidates:
        return res(VerifyStatus.MATCH, f"deployed artifact is version {alias_version}")
    which = f"version {deployed_version}" if deployed_version else "no registered version of it"
    return res(
        VerifyStatus.DRIFT,
        f"{alias} names version {alias_version} ({expected_digest[:12]}), but the deployed "
        f"artifact ({deployed_digest[:12]}) is {which}",
    )
