"""What `rayorch kube render` produces: the job plan and the files of objects, validated.

Files (names fixed, so ``-o DIR`` can be re-rendered and diffed): ``kueue.yaml`` (cluster-
scoped Kueue objects and the namespace's LocalQueue) and ``rayjob.yaml`` - or
``raycluster.yaml`` with ``cluster_only``. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayorch.kube.render_kueue import render_kueue
from rayorch.kube.render_rayjob import (
    JobPlan,
    RenderRequest,
    plan_job,
    render_raycluster,
    render_rayjob,
)
from rayorch.kube.validate import ValidationReport, validate_objects


@dataclass(frozen=True, slots=True)
class Bundle:
    plan: JobPlan
    files: dict[str, list[dict[str, Any]]]
    report: ValidationReport

    def objects(self) -> list[dict[str, Any]]:
        return [o for name in sorted(self.files) for o in self.files[name]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "files": {k: v for k, v in sorted(self.files.items())},
            "validation": self.report.to_dict(),
        }


def render_bundle(
    req: RenderRequest,
    *,
    cluster_only: bool = False,
    crd_dir: str | Path | None = None,
    check: bool = True,
) -> Bundle:
    """Plan, render and (unless ``check`` is off) validate; invalid objects raise
    ``ManifestInvalidError`` so nothing invalid is ever written or submitted."""
    plan = plan_job(req)
    kueue = render_kueue(req.cluster)
    local = [
        o
        for o in kueue
        if o["kind"] == "LocalQueue" and o["metadata"]["namespace"] == plan.namespace
    ]
    cluster_wide = [o for o in kueue if o["kind"] != "LocalQueue"]
    job = render_raycluster(plan) if cluster_only else render_rayjob(plan)
    files = {
        "kueue.yaml": cluster_wide + local,
        ("raycluster.yaml" if cluster_only else "rayjob.yaml"): [job],
    }
    everything = [o for name in sorted(files) for o in files[name]]
    report = validate_objects(everything, crd_dir=crd_dir, policy=req.cluster)
    if check:
        report.raise_if_invalid()
    return Bundle(plan, files, report)
