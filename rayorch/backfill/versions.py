"""What produced a committed unit, and which committed units are stale.

Every commit records a :class:`UnitVersion`: the fingerprint of the config sections that
shape the step's output, the code version of its entrypoint (declared ``code_version``, else a
hash of the entrypoint module's source) and the environment fingerprint (image + lockfile).
``rayorch plan`` compares the recorded version with the current one and names what changed;
``--reprocess stale`` re-runs exactly the stale units. Comparing is pure; reading a module's
source is the only effect (:func:`code_version`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayorch.backfill.plan import BackfillPlan, Step

if TYPE_CHECKING:
    from rayorch.ledger.rows import UnitRow
    from rayorch.spec import PipelineSpec

PARTS = ("config", "code", "env")


@dataclass(frozen=True, slots=True)
class UnitVersion:
    config: str
    code: str
    env: str

    def to_dict(self) -> dict[str, str]:
        return {"config": self.config, "code": self.code, "env": self.env}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version(entrypoint: str, declared: str | None) -> str:
    """The declared version, else a hash of the entrypoint module's source file."""
    if declared:
        return f"declared:{declared}"
    module = entrypoint.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    origin = getattr(found, "origin", None)
    if not origin or not origin.endswith(".py"):
        return f"unhashed:{entrypoint}"
    with open(origin, "rb") as f:
        return "src:" + hashlib.sha256(f.read()).hexdigest()[:16]


def step_versions(spec: PipelineSpec, env_fingerprint: str) -> dict[str, dict[str, str]]:
    """Current version per step (what a commit now would record)."""
    out: dict[str, dict[str, str]] = {}
    cfg = spec.model_dump(mode="json", by_alias=True)
    shared = {k: cfg.get(k) for k in ("source", "partitions")}
    # How a unit is run, not what it produces; code has its own part.
    skip = ("retries", "retry_backoff_s", "grouping", "code_version")
    feats = {k: v for k, v in cfg["features"].items() if k not in skip}
    out[Step.FEATURES.value] = UnitVersion(
        _digest({**shared, "features": feats}),
        code_version(spec.features.entrypoint, spec.features.code_version),
        env_fingerprint,
    ).to_dict()
    if spec.train is not None:
        out[Step.TRAIN.value] = UnitVersion(
            _digest(
                {
                    **shared,
                    "features": feats,
                    "train": {k: v for k, v in cfg["train"].items() if k != "code_version"},
                }
            ),
            code_version(spec.train.entrypoint, spec.train.code_version),
            env_fingerprint,
        ).to_dict()
    return out


def env_fingerprint(image: str | None, lockfile_sha256: str | None) -> str:
    return _digest({"image": image, "lockfile": lockfile_sha256})


def changed_parts(recorded: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """Which of config/code/env differ (a commit with no record counts as unknown: none)."""
    if not recorded:
        return []
    return [p for p in PARTS if p in recorded and recorded.get(p) != current.get(p)]


def stale_units(
    plan: BackfillPlan, rows: Mapping[str, UnitRow], versions: Mapping[str, Mapping[str, str]]
) -> dict[str, list[str]]:
    """Committed units of the plan built by another version: run key -> changed parts."""
    out: dict[str, list[str]] = {}
    for u in plan.units:
        row = rows.get(u.run_key)
        current = versions.get(u.step.value)
        if row is None or current is None or row.state.value != "DONE":
            continue
        parts = changed_parts(row.version, current)
        if parts:
            out[u.run_key] = parts
    return out
