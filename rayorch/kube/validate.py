"""One entry for every check of a set of manifests: CRD schema + CEL, rules, pod round-trip.

``validate_objects`` is what ``rayorch kube render`` runs on what it rendered (and refuses to
write when anything is wrong) and what ``rayorch kube validate FILE…`` runs on hand-edited
files. Every violation names the object, the field path and the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayorch.errors import ConfigError
from rayorch.kube.manifests import Document
from rayorch.kube.roundtrip import check_pod_templates
from rayorch.kube.rules import check_references, check_rules
from rayorch.kube.schema import Violation, default_crd_dir, validate_schema
from rayorch.scheduling.quota import ClusterSpec


class ManifestInvalidError(ConfigError):
    """Manifests break a CRD schema or an operator/webhook rule. ``violations`` lists each
    (object, path, rule, message); fix the config (or the hand-edited file) and re-render."""


@dataclass(frozen=True, slots=True)
class ValidationReport:
    objects: int
    violations: tuple[Violation, ...]
    cel_rules_evaluated: int
    cel_rules_unevaluated: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "objects": self.objects,
            "violations": [v.to_dict() for v in self.violations],
            "cel_rules_evaluated": self.cel_rules_evaluated,
            "cel_rules_unevaluated": list(self.cel_rules_unevaluated),
        }

    def raise_if_invalid(self) -> None:
        if self.violations:
            lines = [str(v) for v in self.violations]
            raise ManifestInvalidError(
                f"{len(lines)} problem(s) in the manifests:\n  - " + "\n  - ".join(lines),
                violations=[v.to_dict() for v in self.violations],
            )


def validate_documents(
    docs: Sequence[Document],
    *,
    crd_dir: str | Path | None = None,
    policy: ClusterSpec | None = None,
) -> ValidationReport:
    """Check each document alone, then the references between them."""
    crds = str(crd_dir or default_crd_dir())
    found: list[Violation] = []
    evaluated = 0
    unevaluated: set[str] = set()
    for d in docs:
        ref = d.ref
        res = validate_schema(d.obj, ref, crds)
        evaluated += res.cel_evaluated
        unevaluated.update(res.unevaluated)
        mine = [*res.violations, *check_rules(d.obj, ref, policy), *check_pod_templates(d.obj, ref)]
        found += [Violation(v.object, v.path, v.rule, v.message, d.source) for v in mine]
    found += check_references([(d.ref, d.obj) for d in docs])
    return ValidationReport(len(docs), tuple(found), evaluated, tuple(sorted(unevaluated)))


def validate_objects(
    objs: Sequence[dict[str, Any]],
    *,
    crd_dir: str | Path | None = None,
    policy: ClusterSpec | None = None,
    source: str = "",
) -> ValidationReport:
    docs = [Document(f"{source}#{i}" if source else "", o) for i, o in enumerate(objs)]
    return validate_documents(docs, crd_dir=crd_dir, policy=policy)
