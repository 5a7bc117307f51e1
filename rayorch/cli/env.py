"""`rayorch env diff|show|check`: what environment a run recorded, and what changed.

``env diff RUN_A RUN_B`` exits 0 when the two environments are equal (nothing printed but a
one-line "equal"; ``--json`` gives ``equal: true`` and empty lists), 1 when they differ, and 2
when a run has no fingerprint or cannot be found.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out
from rayorch.env.diff import diff_fingerprints
from rayorch.env.errors import FingerprintMissingError
from rayorch.env.fingerprint import Fingerprint
from rayorch.env.worker import FINGERPRINT_ARTIFACT

app = typer.Typer(help="Environment fingerprints: diff two runs, show one, check a config.")


def load_fingerprint(run_id: str) -> Fingerprint:
    from rayorch.lineage.reproduce import tracker_for
    from rayorch.settings import load_settings

    tracker = tracker_for(load_settings())
    try:
        tracker.client.get_run(run_id)
    except Exception:
        raise FingerprintMissingError(
            f"no MLflow run {run_id!r} at {tracker.uri} (set MLFLOW_TRACKING_URI / RAYORCH_HOME)",
            run_id=run_id,
        ) from None
    text = tracker.read_artifact(run_id, FINGERPRINT_ARTIFACT)
    if text is None:
        raise FingerprintMissingError(
            f"run {run_id} has no {FINGERPRINT_ARTIFACT}: it was not a rayorch training unit "
            "(or ran before fingerprints were recorded)",
            run_id=run_id,
        )
    return Fingerprint.from_dict(json.loads(text))


@app.command("diff")
def diff(
    run_a: str = typer.Argument(..., help="MLflow run id (before)."),
    run_b: str = typer.Argument(..., help="MLflow run id (after)."),
    as_json: bool = JsonOpt,
) -> None:
    """Packages added/removed/changed, image, Python and env var changes from RUN_A to RUN_B.

    Exit 0: equal; 1: different; 2: a run or its fingerprint is missing.
    """
    with cli_errors(as_json):
        d = diff_fingerprints(load_fingerprint(run_a), load_fingerprint(run_b))
        if as_json:
            emit_json({"run_a": run_a, "run_b": run_b, **d.to_dict()})
        elif d.equal and not d.changes:
            out.print(f"equal (environment {d.a_digest[:12]})")
        else:
            table = Table(title=f"env diff {run_a[:8]} → {run_b[:8]}")
            for col in ("kind", "what", "before", "after"):
                table.add_column(col, overflow="fold")
            for c in d.changes:
                table.add_row(c.kind, c.what, c.before or "-", c.after or "-")
            out.print(table)
            for line in d.lines():
                out.print(f"  {line}", highlight=False)
    if not d.equal:
        raise typer.Exit(1)


@app.command("show")
def show(run_id: str = typer.Argument(..., help="MLflow run id."), as_json: bool = JsonOpt) -> None:
    """The fingerprint a run recorded (from its rank-0 Ray Train worker)."""
    with cli_errors(as_json):
        fp = load_fingerprint(run_id)
        if as_json:
            emit_json(fp.to_dict())
            return
        out.print(f"digest   {fp.digest}", highlight=False)
        out.print(f"image    {fp.image or '-'} ({fp.image_source})", highlight=False)
        out.print(f"python   {fp.implementation} {fp.python} on {fp.platform}", highlight=False)
        for k, v in fp.key_versions().items():
            out.print(f"{k:<8} {v or '-'}", highlight=False)
        out.print(f"packages {len(fp.packages)}; git {fp.git_commit or '-'}", highlight=False)
        out.print(
            f"lockfile {fp.lockfile or '-'} sha256 {fp.lockfile_sha256 or '-'}", highlight=False
        )
        for k, v in sorted(fp.env_vars.items()):
            out.print(f"${k}={v}", highlight=False)
        out.print(f"captured on {fp.host} pid {fp.pid} ({fp.worker})", highlight=False)


@app.command("check")
def check(
    config: str = typer.Option(..., "--config", "-c", help="Pipeline YAML."),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Cluster config with namespace policies (default: see docs)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Plan-time check of a pipeline's environment: image policy, lockfile, the runtime_env."""
    from rayorch.env.runtime import cluster_config_path, enforce_image_policy, unit_environment
    from rayorch.spec import load_pipeline

    with cli_errors(as_json):
        spec = load_pipeline(config)
        enforce_image_policy(spec, cluster, file=config)
        ue = unit_environment(spec, None, cluster=cluster)
        doc = {
            "config": config,
            "cluster_config": cluster_config_path(cluster),
            "namespace": spec.namespace,
            "runtime_env": ue.runtime_env,
            "context": ue.context.to_dict(),
        }
        if as_json:
            emit_json(doc)
            return
        out.print(f"ok: {config} (namespace {spec.namespace})", highlight=False)
        out.print(f"runtime_env: {json.dumps(ue.runtime_env)}", highlight=False)
        out.print(f"lockfile sha256: {ue.context.lockfile_sha256 or '-'}", highlight=False)
