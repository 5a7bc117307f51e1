"""`rayorch cluster status` and `rayorch cluster check`: inventory, quotas, fragmentation."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out

app = typer.Typer(help="Cluster inventory, quotas and GPU fragmentation.", no_args_is_help=True)

AddressOpt = typer.Option(None, "--address", help="Ray address (default: RAY_ADDRESS or auto).")
ClusterOpt = typer.Option("configs/cluster.yaml", "--cluster", help="Quotas and node inventory.")


@app.command("status")
def status(address: str | None = AddressOpt, as_json: bool = JsonOpt) -> None:
    """Per node free/used GPUs, queued shapes, stranded GPUs and reshape suggestions."""
    from rayorch.scheduling.client import live_status

    with cli_errors(as_json):
        report = live_status(address)
        if as_json:
            emit_json(report)
            return
        _print_status(report)


def _print_status(r: dict[str, Any]) -> None:
    table = Table(title=f"cluster ({r['scheduler'].replace('not running', 'no scheduler')})")
    for col in ("node", "shape", "used", "free", "stranded", "workloads"):
        table.add_column(col, overflow="fold")
    for n in r["nodes"]:
        table.add_row(
            n["node_id"][:12],
            n["shape"],
            str(n["used_gpus"]),
            str(n["free_gpus"]),
            str(n["stranded_gpus"]),
            ", ".join(n["workloads"]),
        )
    out.print(table)
    out.print(
        f"GPUs: {r['total_gpus']} total, {r['free_gpus']} free, "
        f"{r['stranded_gpus']} stranded (free but no queued shape can use them)"
    )
    if r["queued_shapes"]:
        out.print("queued shapes: " + ", ".join(f"{k} x{v}" for k, v in r["queued_shapes"].items()))
    for q in r.get("queue", []):
        d = q.get("decision") or {}
        out.print(
            f"  queued {q['workload_id']} ({q['shape']}, {q['priority']}): "
            f"{d.get('outcome', '?')} - {d.get('detail', '')}"
        )
    for res in r.get("reservations", []):
        where = ", ".join(f"{k[:12]}:{v}" for k, v in res["gpus_by_node"].items())
        draining = ", ".join(res["draining"]) or "none (admitted next cycle)"
        out.print(f"[bold]reserved[/] for {res['workload_id']}: {where} GPUs; draining: {draining}")
    for s in r["suggestions"]:
        out.print(f"[bold]suggestion:[/] {s['text']}")


@app.command("check")
def check(
    shape: str = typer.Argument(..., help="Job shape, e.g. '1x16', '2x4', 'A100:8'."),
    cluster: str = ClusterOpt,
    allow_reshape: bool = typer.Option(False, "--allow-reshape", help="May run cut differently."),
    as_json: bool = JsonOpt,
) -> None:
    """Plan-time check: can this shape ever run on the configured inventory, and where?"""
    from rayorch.scheduling.model import NodeState, Request
    from rayorch.scheduling.placement import never_fits, place
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.shapes import parse_job_shape

    with cli_errors(as_json):
        spec = load_cluster(cluster)
        shapes = spec.node_shapes()
        req = Request("check", "check", parse_job_shape(shape), allow_reshape=allow_reshape)
        why = never_fits(req, shapes)
        plan = (
            None
            if why
            else place(req, [NodeState.empty(f"node-{i}", s) for i, s in enumerate(shapes)])
        )
        doc = {
            "shape": shape,
            "fits": why is None,
            "reason": why,
            "placement_on_empty_cluster": plan.to_dict() if plan else None,
        }
        if as_json:
            emit_json(doc)
        elif why:
            out.print(f"[bold red]REJECTED[/] {shape}: {why}")
        else:
            assert plan is not None
            out.print(
                f"[green]fits[/] {shape} as {plan.shape} ({plan.strategy.value}) on "
                + ", ".join(f"{k}:{v} GPUs" for k, v in plan.gpus_by_node().items())
            )
        if why:
            raise typer.Exit(1)


def parse_durations(text: str | None) -> dict[str, float]:
    """``features=60,train=1800`` -> {"features": 60.0, "train": 1800.0}."""
    from rayorch.errors import ConfigError

    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        step, _, sec = item.partition("=")
        try:
            out[step.strip()] = float(sec)
        except ValueError:
            raise ConfigError(
                f"--durations: {item!r} is not step=seconds (e.g. features=60,train=1800)",
                field="durations",
            ) from None
    return out


def print_plan_check(check: Any) -> None:
    """The scheduling part of `rayorch plan --cluster`."""
    d = check.to_dict()
    table = Table(title=f"scheduling: namespace {d['namespace']}, priority {d['priority']}")
    for col in ("step", "shape", "CPUs/bundle", "units", "admission", "why"):
        table.add_column(col, overflow="fold")
    for c in d["shapes"]:
        verdict = "[bold red]REJECTED[/]" if c["outcome"] == "REJECTED" else "[green]OK[/]"
        why = f"{c['reason']}: {c['detail']}" if c["reason"] else ""
        table.add_row(
            c["step"], c["shape"], f"{c['cpus_per_bundle']:g}", str(c["units"]), verdict, why
        )
    out.print(table)
    e = d["estimate"]
    src = ", ".join(f"{k} {v:g}s ({d['duration_source'][k]})" for k, v in d["durations_s"].items())
    if e is None:
        out.print("no unit can be admitted: nothing to estimate")
        return
    dur = (
        "n/a (a unit needs more than the quota)"
        if e["duration_h"] is None
        else f"{e['duration_h']} h"
    )
    line = (
        f"cost: {e['gpu_hours']} GPU-hours, {e['cpu_hours']} CPU-hours; duration under quota {dur}"
    )
    if e["duration_borrowing_h"] is not None:
        line += f", {e['duration_borrowing_h']} h borrowing the idle cluster"
    out.print(line)
    out.print(f"unit durations: {src}")
    if e["note"]:
        out.print(f"note: {e['note']}")


def run_deadline_check(plan: Any, sched: Any, cluster: str | None, text: str | None) -> Any:
    """`rayorch plan --deadline-check WORKLOAD.yaml:JOB`: the pure check on the plan's units,
    with the namespace, priority and unit durations the plan check resolved."""
    if not text:
        return None
    from rayorch.errors import ConfigError
    from rayorch.scheduling.deadline import deadline_check
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.workload import load_workload

    path, sep, job = text.rpartition(":")
    if not sep or not path or not job or cluster is None or sched is None:
        raise ConfigError(
            f"--deadline-check {text!r}: write WORKLOAD.yaml:JOB (e.g. "
            "configs/workloads/fragmented-4x8.yaml:fraud-daily-train) and pass --cluster",
            field="deadline-check",
            value=text,
        )
    return deadline_check(
        plan.units,
        load_cluster(cluster),
        sched.namespace,
        load_workload(path),
        job,
        sched.durations_s,
        sched.priority,
    )
