"""Driver side: enforce the image policy, build a pipeline's runtime_env and EnvContext.

The namespace policy lives in the cluster config. It is found at ``RAYORCH_CLUSTER_CONFIG``
or, when that is unset, at ``configs/cluster.yaml`` under the current directory if present;
with neither, no namespace requires digests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayorch.env.fingerprint import EnvContext, env_context, resolve_lockfile
from rayorch.env.spec import ImageRef, build_runtime_env, check_image_policy
from rayorch.settings import load_settings

DEFAULT_CLUSTER_CONFIG = "configs/cluster.yaml"


def cluster_config_path(explicit: str | Path | None = None) -> str | None:
    if explicit:
        return str(explicit)
    env = load_settings().cluster_config  # RAYORCH_CLUSTER_CONFIG
    if env:
        return env
    return DEFAULT_CLUSTER_CONFIG if Path(DEFAULT_CLUSTER_CONFIG).is_file() else None


def enforce_image_policy(
    spec: Any, cluster: str | Path | None = None, *, file: str | None = None
) -> ImageRef | None:
    """Raise ImageNotPinnedError when the pipeline's namespace requires digests and it has a tag.

    A namespace missing from the cluster config requires nothing here (quota checks report it).
    """
    path = cluster_config_path(cluster)
    require = False
    if path is not None:
        from rayorch.scheduling.quota import load_cluster

        quota = load_cluster(path).quota(spec.namespace)
        require = bool(quota and quota.require_image_digest)
    return check_image_policy(
        spec.environment,
        require_digest=require,
        namespace=spec.namespace,
        file=file,
        policy_file=path,
    )


@dataclass(frozen=True, slots=True)
class UnitEnvironment:
    """What every unit of a pipeline runs with: Ray's runtime_env and the fingerprint context."""

    runtime_env: dict[str, Any] | None
    context: EnvContext

    def task_options(self) -> dict[str, Any]:
        """Extra ``.options(...)`` for the unit's Ray task (nothing when no runtime_env)."""
        return {"runtime_env": self.runtime_env} if self.runtime_env else {}


def unit_environment(
    spec: Any, db_url: str | None, *, cluster: str | Path | None = None, guard: bool = True
) -> UnitEnvironment:
    """Check the policy, then build the runtime_env and EnvContext (reads lockfile, git HEAD)."""
    enforce_image_policy(spec, cluster)
    env = spec.environment
    lockfile = resolve_lockfile(env.lockfile) if env else None
    return UnitEnvironment(
        runtime_env=build_runtime_env(env, lockfile_path=lockfile),
        context=env_context(spec, db_url, guard=guard),
    )
