"""`rayorch kube render|validate|submit|status|delete`: KubeRay and Kueue from rayorch's configs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from rayorch.cli.common import JsonOpt, KeysOpt, cli_errors, emit_json, keys_arg, out
from rayorch.errors import ConfigError

app = typer.Typer(
    help="KubeRay RayJob/RayCluster and Kueue objects: render, validate, submit, status.",
    no_args_is_help=True,
)

ClusterOpt = typer.Option("configs/cluster.yaml", "--cluster", help="Quotas, nodes, kubernetes:.")
CrdsOpt = typer.Option(None, "--crds", help="CRD directory (default: ../shared/crds).")
ContextOpt = typer.Option(None, "--context", help="kubeconfig context (default: current).")
ServerOpt = typer.Option(
    None, "--server", help="API server URL without credentials (default: from the kubeconfig)."
)
NamespaceArg = typer.Option(..., "--namespace", "-n", help="Kubernetes namespace of the RayJob.")


def repo_path(path: str, what: str) -> str:
    """The path as the job sees it: relative to the repository root (the image's workdir)."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            raise ConfigError(
                f"{what} {path!r} is outside the current directory; run from the repository "
                "root and pass a relative path (the job runs it from the image's workdir)",
                field=what.lstrip("-"),
                value=path,
            ) from None
    if ".." in p.parts:
        raise ConfigError(f"{what} {path!r} leaves the repository", field=what.lstrip("-"))
    return p.as_posix()


@app.command("render")
def render(
    config: str = typer.Option(..., "--config", "-c", help="Pipeline YAML."),
    cluster: str = ClusterOpt,
    start: str = typer.Option(..., "--start", help="First day (YYYY-MM-DD), inclusive."),
    end: str = typer.Option(..., "--end", help="Last day (YYYY-MM-DD), inclusive."),
    keys: str | None = KeysOpt,
    namespace: str | None = typer.Option(None, "--namespace", help="rayorch namespace."),
    priority: str | None = typer.Option(None, "--priority", help="backfill|production."),
    out_dir: str | None = typer.Option(
        None, "--out", "-o", help="Write kueue.yaml + rayjob.yaml here."
    ),
    cluster_only: bool = typer.Option(
        False, "--cluster-only", help="A standalone RayCluster (notebooks) instead of a RayJob."
    ),
    crds: str | None = CrdsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Render (and strictly validate) the RayJob and Kueue objects of one backfill."""
    from rayorch.kube.bundle import render_bundle
    from rayorch.kube.manifests import dump_documents, write_manifests
    from rayorch.kube.render_rayjob import RenderRequest
    from rayorch.scheduling.quota import load_cluster
    from rayorch.spec import load_pipeline

    with cli_errors(as_json):
        req = RenderRequest(
            spec=load_pipeline(config),
            cluster=load_cluster(cluster),
            config_ref=repo_path(config, "--config"),
            cluster_ref=repo_path(cluster, "--cluster"),
            start=start,
            end=end,
            keys=keys_arg(keys),
            namespace=namespace,
            priority=priority,
        )
        bundle = render_bundle(req, cluster_only=cluster_only, crd_dir=crds)
        written = write_manifests(out_dir, bundle.files) if out_dir else []
        if as_json:
            emit_json({**bundle.to_dict(), "written": written})
        elif out_dir:
            p = bundle.plan
            out.print(
                f"[green]valid[/] {len(bundle.objects())} objects "
                f"({bundle.report.cel_rules_evaluated} CEL rules evaluated)"
            )
            out.print(
                f"RayJob {p.namespace}/{p.identity.name} (jobId {p.identity.job_id}), "
                f"queue {p.local_queue}, priority {p.priority.value}"
            )
            for g in (p.head, *p.groups):
                out.print(
                    f"  {g.name}: {g.replicas} x ({g.cpus:g} CPU, {g.gpus} GPU"
                    f"{' ' + g.accelerator if g.accelerator else ''}, {g.memory_gib:g}Gi)"
                )
            for w in written:
                out.print(f"wrote {w}")
        else:
            sys.stdout.write(dump_documents(bundle.objects()))


@app.command("validate")
def validate(
    files: list[str] = typer.Argument(..., help="Manifest files (multi-document YAML)."),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Cluster config whose namespaces' image-digest policy applies."
    ),
    crds: str | None = CrdsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check hand-edited manifests: CRD schema (strict), CEL rules, KubeRay/Kueue rules."""
    from rayorch.kube.manifests import load_documents
    from rayorch.kube.validate import validate_documents
    from rayorch.scheduling.quota import load_cluster

    with cli_errors(as_json):
        docs = [d for f in files for d in load_documents(f)]
        policy = load_cluster(cluster) if cluster else None
        report = validate_documents(docs, crd_dir=crds, policy=policy)
        if as_json:
            emit_json(report.to_dict())
            if not report.ok:
                raise typer.Exit(2)
            return
        if report.ok:
            out.print(
                f"[green]valid[/] {report.objects} objects "
                f"({report.cel_rules_evaluated} CEL rules evaluated)"
            )
        for rule in report.cel_rules_unevaluated:
            out.print(f"[yellow]not evaluated[/] (CEL library cannot compile): {rule}")
        report.raise_if_invalid()


def _client(context: str | None, server: str | None, crds: str | None) -> Any:
    from rayorch.kube.client import KubeClient, api_client
    from rayorch.kube.schema import default_crd_dir

    return KubeClient(api_client(context, server), str(crds or default_crd_dir()))


@app.command("submit")
def submit(
    files: list[str] = typer.Argument(..., help="Rendered manifests (kueue.yaml, rayjob.yaml)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Server-side dry run (dryRun=All, strict field validation)."
    ),
    cluster: str | None = typer.Option(None, "--cluster", help="Cluster config (digest policy)."),
    context: str | None = ContextOpt,
    server: str | None = ServerOpt,
    crds: str | None = CrdsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Validate offline, then create each object (existing ones are left as they are)."""
    from rayorch.kube.manifests import load_documents
    from rayorch.kube.validate import validate_documents
    from rayorch.scheduling.quota import load_cluster

    with cli_errors(as_json):
        docs = [d for f in files for d in load_documents(f)]
        policy = load_cluster(cluster) if cluster else None
        validate_documents(docs, crd_dir=crds, policy=policy).raise_if_invalid()
        results = _client(context, server, crds).submit(docs, dry_run=dry_run)
        if as_json:
            emit_json({"dry_run": dry_run, "results": [r.to_dict() for r in results]})
            return
        for r in results:
            out.print(f"{r.outcome.value:<10} {r.object} {r.message}".rstrip(), highlight=False)


@app.command("status")
def status(
    name: str = typer.Argument(..., help="RayJob name (rayorch kube render prints it)."),
    namespace: str = NamespaceArg,
    ledger: bool = typer.Option(True, "--ledger/--no-ledger", help="Also read the ledger."),
    context: str | None = ContextOpt,
    server: str | None = ServerOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The RayJob in rayorch's terms (queued, admitted, running, preempted, finished) and its
    backfill's state in the ledger (RAYORCH_DB_URL)."""
    from rayorch.kube.status import kube_state

    with cli_errors(as_json):
        client = _client(context, server, None)
        job = client.get_rayjob(namespace, name)
        uid = ((job or {}).get("metadata") or {}).get("uid")
        workload = client.workload_for(namespace, uid) if uid else None
        st = kube_state(job, workload)
        doc: dict[str, Any] = {"name": name, "namespace": namespace, **st.to_dict()}
        if ledger and job is not None:
            doc["ledger"] = _ledger_state(job)
        if as_json:
            emit_json(doc)
        else:
            table = Table(title=f"RayJob {namespace}/{name}")
            table.add_column("field")
            table.add_column("value", overflow="fold")
            for k, v in doc.items():
                table.add_row(k, str(v))
            out.print(table)
        if st.state.value == "NOT_FOUND":
            raise typer.Exit(1)


def _ledger_state(job: dict[str, Any]) -> dict[str, Any]:
    """The newest backfill in the ledger with the RayJob's parameters (public ledger API)."""
    from rayorch.api import open_ledger
    from rayorch.kube.render_rayjob import ANNOTATION_PREFIX

    ann = (job.get("metadata") or {}).get("annotations") or {}
    phash, pipeline = (
        ann.get(ANNOTATION_PREFIX + "params-hash"),
        ann.get(ANNOTATION_PREFIX + "pipeline"),
    )
    if not phash or not pipeline:
        return {"state": None, "detail": "the RayJob carries no rayorch.io/params-hash"}
    led = open_ledger()
    try:
        rows = [b for b in led.list_backfills(pipeline, limit=500) if b.params_hash == phash]
        if not rows:
            return {"state": None, "detail": f"no backfill with these parameters in {led.url}"}
        bf = rows[0]
        return {"backfill_id": bf.id, "state": bf.state.value, "units": led.unit_counts(bf.id)}
    finally:
        led.close()


@app.command("delete")
def delete(
    name: str = typer.Argument(..., help="RayJob name."),
    namespace: str = NamespaceArg,
    context: str | None = ContextOpt,
    server: str | None = ServerOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Delete a RayJob (its Ray cluster goes with it; the ledger keeps what was committed)."""
    with cli_errors(as_json):
        outcome = _client(context, server, None).delete_rayjob(namespace, name)
        if as_json:
            emit_json({"name": name, "namespace": namespace, "outcome": outcome.value})
        else:
            out.print(f"{outcome.value} RayJob {namespace}/{name}")
