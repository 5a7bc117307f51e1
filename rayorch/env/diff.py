"""What changed between two environments, and the drift decision of a backfill. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rayorch.env.fingerprint import Fingerprint


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``what`` is a package name, an env var, or image/python/lockfile/..."""

    kind: str  # package | image | python | platform | env_var | lockfile | code
    what: str
    before: str | None
    after: str | None

    def line(self) -> str:
        if self.before is None:
            return f"{self.what} (added) {self.after}"
        if self.after is None:
            return f"{self.what} {self.before} (removed)"
        return f"{self.what} {self.before} → {self.after}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "what": self.what,
            "before": self.before,
            "after": self.after,
            "line": self.line(),
        }


@dataclass(frozen=True, slots=True)
class EnvDiff:
    a_digest: str
    b_digest: str
    changes: tuple[Change, ...] = ()

    @property
    def equal(self) -> bool:
        """No environment difference. A code-only change (git commit) is reported, not counted."""
        return not self.env_changes

    @property
    def env_changes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind != "code")

    def of(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    def lines(self) -> list[str]:
        return [c.line() for c in self.changes]

    def to_dict(self) -> dict[str, Any]:
        pk = self.of("package")
        return {
            "equal": self.equal,
            "a_digest": self.a_digest,
            "b_digest": self.b_digest,
            "packages": {
                "added": [c.to_dict() for c in pk if c.before is None],
                "removed": [c.to_dict() for c in pk if c.after is None],
                "changed": [c.to_dict() for c in pk if c.before and c.after],
            },
            "image": [c.to_dict() for c in self.of("image")],
            "python": [c.to_dict() for c in self.of("python") + self.of("platform")],
            "env_vars": [c.to_dict() for c in self.of("env_var")],
            "lockfile": [c.to_dict() for c in self.of("lockfile")],
            "code": [c.to_dict() for c in self.of("code")],
            "lines": self.lines(),
        }


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def diff_fingerprints(a: Fingerprint, b: Fingerprint) -> EnvDiff:
    """Changes from ``a`` to ``b``: image, python, packages (added/removed/changed), env vars."""
    changes: list[Change] = []
    if a.image != b.image:
        changes.append(Change("image", "image", _s(a.image), _s(b.image)))
    if a.python != b.python or a.implementation != b.implementation:
        changes.append(
            Change(
                "python",
                "python",
                f"{a.implementation} {a.python}",
                f"{b.implementation} {b.python}",
            )
        )
    if a.platform != b.platform:
        changes.append(Change("platform", "platform", a.platform, b.platform))
    for name in sorted(set(a.packages) | set(b.packages)):
        va, vb = a.packages.get(name), b.packages.get(name)
        if va != vb:
            changes.append(Change("package", name, va, vb))
    for name in sorted(set(a.env_vars) | set(b.env_vars)):
        va, vb = a.env_vars.get(name), b.env_vars.get(name)
        if va != vb:
            changes.append(Change("env_var", f"${name}", _s(va), _s(vb)))
    if a.lockfile_sha256 != b.lockfile_sha256:
        changes.append(
            Change(
                "lockfile",
                f"lockfile {b.lockfile or a.lockfile or ''}".strip(),
                _s(a.lockfile_sha256),
                _s(b.lockfile_sha256),
            )
        )
    if a.git_commit and b.git_commit and a.git_commit != b.git_commit:
        changes.append(Change("code", "git commit", a.git_commit, b.git_commit))
    return EnvDiff(a.digest, b.digest, tuple(changes))


class DriftOutcome(str, enum.Enum):
    REFERENCE_SET = "REFERENCE_SET"  # the first fingerprint of the backfill: it is the reference
    SAME = "SAME"  # matches the reference
    DRIFT = "DRIFT"  # differs: the unit must fail, its output must not be committed


@dataclass(frozen=True, slots=True)
class DriftDecision:
    outcome: DriftOutcome
    reference_digest: str
    observed_digest: str
    diff: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.outcome is not DriftOutcome.DRIFT


def decide_drift(reference: Fingerprint | None, observed: Fingerprint) -> DriftDecision:
    """The backfill's first fingerprint is its reference; any later digest must equal it."""
    if reference is None:
        return DriftDecision(DriftOutcome.REFERENCE_SET, observed.digest, observed.digest)
    if reference.digest == observed.digest:
        return DriftDecision(DriftOutcome.SAME, reference.digest, observed.digest)
    d = diff_fingerprints(reference, observed)
    return DriftDecision(
        DriftOutcome.DRIFT,
        reference.digest,
        observed.digest,
        tuple(c.line() for c in d.env_changes),
    )
