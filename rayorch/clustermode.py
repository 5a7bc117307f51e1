"""Cluster mode: refuse node-local state when the driver is attached to a multi-node cluster.

On one machine, SQLite files and local directories are shared by every process. On a cluster
they are not: a worker on another node that opens ``sqlite:///…/ledger.db`` gets its own empty
database, MLflow's SQLite file and artifacts are per node, and data written under a local path
is invisible elsewhere. Nothing fails loudly — the drift guard reports "no such table", a
training unit reads nothing. So the driver judges its settings once, at start, before the plan
runs (:func:`judge_cluster_state`, pure: values in, a typed decision out) and refuses, naming
the setting to change.

Rules (first match wins):

* not attached to a cluster (no ``RAY_ADDRESS``: a private local Ray) -> EMBEDDED, anything goes;
* every location shared (PostgreSQL, a tracking server, ``s3://``) -> SHARED;
* node-local state on a single-node cluster with ``--allow-local-state`` -> LOCAL_ALLOWED;
* otherwise -> REFUSED, one :class:`LocalState` per offending setting. On a multi-node cluster
  ``--allow-local-state`` does not help: the state would silently split across nodes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from rayorch.settings import Settings
    from rayorch.spec import PipelineSpec

#: Where ``RAY_ADDRESS`` means "start a private Ray here", not "attach".
_LOCAL_RAY = ("", "local")
_SHARED_STORAGE = ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "hdfs")
_LOCAL_MLFLOW = ("", "file", "sqlite")


class ClusterVerdict(str, enum.Enum):
    EMBEDDED = "EMBEDDED"  # a private local Ray: local state is what it is meant for
    SHARED = "SHARED"  # attached, and every piece of state is reachable from every node
    LOCAL_ALLOWED = "LOCAL_ALLOWED"  # attached to one node, local state explicitly allowed
    REFUSED = "REFUSED"  # attached, node-local state: would split across nodes

    @property
    def may_run(self) -> bool:
        return self is not ClusterVerdict.REFUSED


class StateKind(str, enum.Enum):
    LEDGER = "ledger"
    MLFLOW = "mlflow"
    STORAGE = "storage"


@dataclass(frozen=True, slots=True)
class LocalState:
    """One setting that points at node-local state, and what to set instead."""

    kind: StateKind
    setting: str  # the variable or config field to change
    value: str
    fix: str

    def message(self) -> str:
        return f"{self.setting}={self.value} is local to one node; {self.fix}"


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """What the driver knows at start: its settings and the cluster it attached to."""

    ray_address: str | None
    alive_nodes: int
    db_url: str
    mlflow_uri: str
    storage_locations: Sequence[tuple[str, str]]  # (setting or config field, location)
    allow_local_state: bool = False


@dataclass(frozen=True, slots=True)
class ClusterDecision:
    verdict: ClusterVerdict
    local_state: tuple[LocalState, ...]
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "local_state": [
                {"kind": s.kind.value, "setting": s.setting, "value": s.value, "fix": s.fix}
                for s in self.local_state
            ],
        }


def attached(ray_address: str | None) -> bool:
    """True when the driver attaches to a running cluster rather than starting its own Ray."""
    return (ray_address or "").strip().lower() not in _LOCAL_RAY


def local_state(facts: ClusterFacts) -> tuple[LocalState, ...]:
    """Every setting of ``facts`` that names node-local state."""
    found: list[LocalState] = []
    if _scheme(facts.db_url).startswith("sqlite"):
        found.append(
            LocalState(
                StateKind.LEDGER, "RAYORCH_DB_URL", facts.db_url,
                "set RAYORCH_DB_URL to a PostgreSQL database every node reaches "
                "(postgresql://user@host/db)",
            )
        )  # fmt: skip
    if _scheme(facts.mlflow_uri).split("+")[0] in _LOCAL_MLFLOW:
        found.append(
            LocalState(
                StateKind.MLFLOW, "MLFLOW_TRACKING_URI", facts.mlflow_uri,
                "set MLFLOW_TRACKING_URI to a tracking server (http://host:5000, `mlflow "
                "server` with a PostgreSQL store and S3 artifacts)",
            )
        )  # fmt: skip
    for setting, location in facts.storage_locations:
        if _scheme(location) not in _SHARED_STORAGE:
            found.append(
                LocalState(
                    StateKind.STORAGE, setting, location,
                    f"set {setting} to object storage every node reaches (s3://bucket/prefix)",
                )
            )  # fmt: skip
    return tuple(found)


def judge_cluster_state(facts: ClusterFacts) -> ClusterDecision:
    """May the driver run with these settings on this cluster? See the module's rules."""
    if not attached(facts.ray_address):
        return ClusterDecision(ClusterVerdict.EMBEDDED, (), "a private local Ray: nothing shared")
    found = local_state(facts)
    nodes = f"{facts.alive_nodes} node{'s' if facts.alive_nodes != 1 else ''}"
    if not found:
        return ClusterDecision(ClusterVerdict.SHARED, (), f"all state shared across {nodes}")
    if facts.alive_nodes <= 1 and facts.allow_local_state:
        return ClusterDecision(
            ClusterVerdict.LOCAL_ALLOWED, found, f"local state allowed on a cluster of {nodes}"
        )
    if facts.alive_nodes <= 1:
        why = (
            f"attached to a Ray cluster ({facts.ray_address}) of {nodes} with node-local state; "
            "pass --allow-local-state to keep it on a single-node cluster, or"
        )
    else:
        why = (
            f"attached to a Ray cluster ({facts.ray_address}) of {nodes}: node-local state "
            "would split across nodes (--allow-local-state only covers a single node);"
        )
    return ClusterDecision(ClusterVerdict.REFUSED, found, why)


def storage_locations(
    storage_url: str | None, home: str, config_paths: Sequence[tuple[str, str]]
) -> tuple[tuple[str, str], ...]:
    """The storage settings to judge: the storage root, and each config location that does
    not live under it (absolute paths and URIs; relative ones resolve under the root)."""
    root = ("RAYORCH_STORAGE_URL", storage_url) if storage_url else ("RAYORCH_STORAGE_URL", home)
    extra = [(f, v) for f, v in config_paths if "://" in v or v.startswith("/")]
    return (root, *extra)


def judge_for(
    settings: Settings, spec: PipelineSpec, alive_nodes: int, allow_local_state: bool
) -> ClusterDecision:
    """:func:`judge_cluster_state` for a driver's settings and pipeline."""
    paths = [("source.path", spec.source.path), ("features.output", spec.features.output)]
    if spec.train is not None:
        paths.append(("train.checkpoint.storage_path", spec.train.checkpoint.storage_path))
    return judge_cluster_state(
        ClusterFacts(
            ray_address=settings.ray_address,
            alive_nodes=alive_nodes,
            db_url=settings.db_url,
            mlflow_uri=settings.mlflow_uri,
            storage_locations=storage_locations(settings.storage_url, str(settings.home), paths),
            allow_local_state=allow_local_state,
        )
    )


def enforce(decision: ClusterDecision) -> ClusterDecision:
    """Raise :class:`LocalStateError` for a REFUSED decision; return any other."""
    if decision.verdict.may_run:
        return decision
    from rayorch.errors import LocalStateError

    raise LocalStateError(
        refusal_message(decision),
        settings=[s.setting for s in decision.local_state],
        verdict=decision.verdict.value,
    )


def refusal_message(decision: ClusterDecision) -> str:
    """The error text: the verdict's reason, then one line per setting to change."""
    lines = [decision.reason] + [f"  - {s.message()}" for s in decision.local_state]
    return "\n".join(lines)


def _scheme(location: str) -> str:
    parsed = urlparse(str(location))
    scheme = parsed.scheme.lower()
    return "" if len(scheme) <= 1 else scheme  # "C:" is a drive, not a scheme
