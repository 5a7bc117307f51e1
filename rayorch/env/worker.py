"""Hooks that run inside Ray workers: capture the fingerprint, store it, guard drift, log it.

``on_feature_unit`` runs in the feature task before the user's function; ``on_train_worker``
runs in ``TrainSession.__init__`` on every Ray Train worker. Both raise
:class:`EnvironmentDriftError` when the worker's environment differs from the backfill's
reference, before any output is staged, so a drifted unit never commits.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from rayorch.env.errors import EnvironmentDriftError
from rayorch.env.fingerprint import EnvContext, Fingerprint, capture
from rayorch.env.store import env_store

TAG_ENV_DIGEST = "rayorch.env_digest"
FINGERPRINT_ARTIFACT_DIR = "environment"
FINGERPRINT_ARTIFACT = f"{FINGERPRINT_ARTIFACT_DIR}/fingerprint.json"


def _guard(ctx: EnvContext | None, run_key: str, token: int | None, fp: Fingerprint) -> None:
    if ctx is None or not ctx.db_url:
        return
    decision, backfill_id, ref_key = env_store(ctx.db_url).guard(
        run_key, token, fp.worker, fp, check=ctx.guard
    )
    if decision.ok:
        return
    shown = "; ".join(decision.diff[:12]) + (" ..." if len(decision.diff) > 12 else "")
    raise EnvironmentDriftError(
        f"{run_key}: worker {fp.worker} on {fp.host} runs environment {decision.observed_digest[:12]}"
        f", but backfill {backfill_id} runs {decision.reference_digest[:12]} (first recorded by "
        f"{ref_key}); not mixing environments in one backfill. Differences: {shown}. Fix the "
        "node image or runtime_env, then re-run with `rayorch backfill --reprocess failed`.",
        run_key=run_key,
        backfill_id=backfill_id,
        worker=fp.worker,
        host=fp.host,
        reference_digest=decision.reference_digest,
        observed_digest=decision.observed_digest,
        reference_run_key=ref_key,
        diff=list(decision.diff),
    )


def on_feature_unit(ctx: EnvContext | None, run_key: str, token: int) -> dict[str, Any]:
    """Fingerprint the feature task; returns the summary that goes into the result dict."""
    fp = capture(ctx, worker="task")
    _guard(ctx, run_key, token, fp)
    return fp.summary()


def tags_of(fp: Fingerprint) -> dict[str, str]:
    tags = {
        TAG_ENV_DIGEST: fp.digest,
        "rayorch.env.python": fp.python,
        "rayorch.env.image": fp.image or "",
        "rayorch.env.image_source": fp.image_source,
        "rayorch.env.packages": str(len(fp.packages)),
        "rayorch.env.git_commit": fp.git_commit or "",
        "rayorch.env.lockfile_sha256": fp.lockfile_sha256 or "",
    }
    for name, version in fp.key_versions().items():
        tags[f"rayorch.env.{name}"] = version or ""
    return tags


def log_fingerprint(client: Any, run_id: str, fp: Fingerprint, *, primary: bool) -> None:
    """Tags on the run; the primary worker also logs the full fingerprint artifact."""
    from mlflow.entities import RunTag

    tags = {f"{TAG_ENV_DIGEST}.{fp.worker}": fp.digest}
    if primary:
        tags.update(tags_of(fp))
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in sorted(tags.items())])
    if primary:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fingerprint.json")
            with open(path, "w") as f:
                json.dump(fp.to_dict(), f, indent=1, sort_keys=True)
            client.log_artifact(run_id, path, FINGERPRINT_ARTIFACT_DIR)


def on_train_worker(ro: dict[str, Any], rank: int) -> Fingerprint:
    """Fingerprint one Ray Train worker, log it to the unit's MLflow run, guard drift."""
    raw = ro.get("env")
    ctx = EnvContext.from_dict(raw) if raw else None
    fp = capture(ctx, worker=f"rank{rank}")
    run_id = ro.get("mlflow_run_id")
    if run_id:
        from rayorch.lineage.tracking import mlflow_client

        log_fingerprint(mlflow_client(ro["mlflow_uri"]), run_id, fp, primary=rank == 0)
    _guard(ctx, ro.get("run_key", ""), ro.get("token"), fp)
    return fp
