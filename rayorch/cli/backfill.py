"""`rayorch plan`, `rayorch backfill`, `rayorch backfill cancel`, `rayorch status`."""

from __future__ import annotations

import datetime as dt
import signal
import threading
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rayorch.api import open_ledger, plan_with_status, run_backfill
from rayorch.backfill.driver import BackfillSummary, OnConflict
from rayorch.backfill.plan import Unit
from rayorch.backfill.summary import EXIT_CODES
from rayorch.cli import views
from rayorch.cli.common import (
    ConfigOpt,
    JsonOpt,
    KeysOpt,
    cli_errors,
    console,
    emit_json,
    keys_arg,
    out,
)
from rayorch.errors import ConfigError
from rayorch.ledger.states import BackfillState, Reprocess
from rayorch.status.reader import ReadModel

AllOpt = typer.Option(False, "--all", help="Print every unit (default: a summary).")
StepsOpt = typer.Option(None, "--steps", help="Comma list of steps: features,train (default both).")
ReprocessOpt = typer.Option(
    Reprocess.MISSING,
    "--reprocess",
    help="missing: new units; failed: also failed; stale: also units built by another "
    "config, code or environment; all: everything.",
)
ClusterOpt = typer.Option(
    None, "--cluster", help="Quotas (configs/cluster.yaml): admit every unit via the scheduler."
)
NamespaceOpt = typer.Option(
    None, "--namespace", help="Quota namespace (default: the pipeline's `namespace:`)."
)
PriorityOpt = typer.Option(
    None, "--priority", help="backfill|production (default: the cluster's default_priority)."
)


def plan_cmd(
    config: str = ConfigOpt,
    start: str = typer.Option(..., "--start"),
    end: str = typer.Option(..., "--end"),
    keys: str | None = KeysOpt,
    steps: str | None = StepsOpt,
    reprocess: Reprocess = ReprocessOpt,
    as_json: bool = JsonOpt,
    cluster: str | None = ClusterOpt,
    namespace: str | None = NamespaceOpt,
    priority: str | None = PriorityOpt,
    durations: str | None = typer.Option(
        None, "--durations", help="Seconds per unit, e.g. features=60,train=1800 (with --cluster)."
    ),
    show_all: bool = AllOpt,
    deadline: str | None = typer.Option(
        None,
        "--deadline-check",
        help="WORKLOAD.yaml:JOB - would this backfill make that production job miss its "
        "deadline, and by how much (with --cluster; exit 1 on a miss).",
    ),
) -> None:
    """Print the units a backfill would run, with run keys and what the ledger knows.

    With --cluster: shapes that can never be admitted (REJECTED, with the reason) and the
    GPU-hours and estimated duration under the namespace quota."""
    with cli_errors(as_json):
        plan, annotated = plan_with_status(config, start, end, keys_arg(keys), steps, reprocess)
        sched = _schedule_check(plan, config, cluster, namespace, priority, durations)
        from rayorch.cli.cluster import run_deadline_check

        dl = run_deadline_check(plan, sched, cluster, deadline)
        if as_json:
            d = plan.to_dict()
            d["units"] = [a.to_dict() for a in annotated]
            d["status_counts"] = _count(a.status.value for a in annotated)
            if sched is not None:
                d["scheduling"] = sched.to_dict()
            if dl is not None:
                d["deadline_check"] = dl.to_dict()
            emit_json(d)
            if (sched is not None and sched.rejected) or (dl is not None and dl.misses):
                raise typer.Exit(1)
            return
        if show_all is not True:  # called as a function (backfill --dry-run): OptionInfo
            out.print(f"plan: {plan.pipeline} {plan.start} .. {plan.end}", style="bold")
            out.print(views.plan_summary(annotated, out.width))
        else:
            table = Table(title=f"plan: {plan.pipeline} {plan.start} .. {plan.end}")
            for col in ("step", "partition", "run key", "status", "detail"):
                table.add_column(col, overflow="fold")
            for a in annotated:
                table.add_row(
                    a.unit.step.value,
                    str(a.unit.partition),
                    a.unit.run_key,
                    a.status.value,
                    a.detail,
                )
            out.print(table)
        counts = _count(a.status.value for a in annotated)
        out.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        if sched is not None:
            from rayorch.cli.cluster import print_plan_check

            print_plan_check(sched)
            if dl is not None:
                from rayorch.scheduling.deadline import render_deadline_check

                out.print(render_deadline_check(dl))
            if sched.rejected or (dl is not None and dl.misses):
                raise typer.Exit(1)


def _schedule_check(
    plan: Any,
    config: str,
    cluster: str | None,
    namespace: str | None,
    priority: str | None,
    durations: str | None,
) -> Any:
    if cluster is None:
        return None
    from rayorch.backfill.scheduled import schedule_check
    from rayorch.cli.cluster import parse_durations
    from rayorch.spec import load_pipeline

    ledger = open_ledger()
    try:
        return schedule_check(
            plan,
            load_pipeline(config),
            cluster,
            namespace,
            priority,
            parse_durations(durations),
            ledger,
        )
    finally:
        ledger.close()


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return counts


backfill_app = typer.Typer(help="Run, resume or cancel backfills.", invoke_without_command=True)


@backfill_app.callback()
def backfill(
    ctx: typer.Context,
    config: str | None = typer.Option(None, "--config", "-c", help="Pipeline YAML."),
    start: str | None = typer.Option(None, "--start", help="First day, inclusive."),
    end: str | None = typer.Option(None, "--end", help="Last day, inclusive."),
    keys: str | None = KeysOpt,
    steps: str | None = StepsOpt,
    max_concurrency: int | None = typer.Option(
        None,
        help="Units in flight at once (default: 2 per cluster CPU, at least 16; at least 128 "
        "when the backfill has no training units).",
    ),
    reprocess: Reprocess = ReprocessOpt,
    on_conflict: OnConflict = typer.Option(
        OnConflict.WAIT,
        "--on-conflict",
        help="Units held by another live driver: wait (default; until it finishes or its "
        "lease runs out) | skip (the backfill ends INCOMPLETE, exit 4) | fail.",
    ),
    resume: str | None = typer.Option(None, "--resume", help="Resume backfill ID."),
    lease_s: float | None = typer.Option(
        None, "--lease-seconds", help="Claim lease; a dead driver's units are taken over after it."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; run nothing."),
    as_json: bool = JsonOpt,
    cluster: str | None = ClusterOpt,
    namespace: str | None = NamespaceOpt,
    priority: str | None = PriorityOpt,
    allow_local_state: bool = typer.Option(
        False,
        "--allow-local-state",
        help="Attached to a single-node Ray cluster, keep a SQLite ledger/MLflow and local "
        "paths (refused by default when RAY_ADDRESS is set; never allowed on several nodes).",
    ),
) -> None:
    """Plan and run a backfill over --start..--end x --keys on Ray (re-runs skip done units)."""
    if ctx.invoked_subcommand is not None:
        return
    with cli_errors(as_json):
        if config is None:
            raise ConfigError("--config is required (e.g. --config configs/fraud.yaml)")
        if resume is None and (start is None or end is None):
            raise ConfigError("--start and --end are required unless --resume ID is given")
        if dry_run:
            assert start and end
            plan_cmd(
                config,
                start,
                end,
                keys,
                steps,
                reprocess,
                as_json,
                cluster,
                namespace,
                priority,
                durations=None,
            )
            return
        summary = _run_with_progress(
            as_json,
            config=config,
            start=start,
            end=end,
            keys=keys_arg(keys),
            steps=steps,
            max_concurrency=max_concurrency,
            reprocess=reprocess,
            on_conflict=on_conflict,
            resume_id=resume,
            lease_s=lease_s,
            cluster=cluster,
            namespace=namespace,
            priority=priority,
            allow_local_state=allow_local_state,
        )
        _print_summary(summary, as_json)
        if not summary.ok:
            raise typer.Exit(summary.exit_code or 1)


def _run_with_progress(as_json: bool, **kwargs: Any) -> BackfillSummary:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
        transient=False,
    )
    task_ids: dict[str, Any] = {}

    def on_event(event: str, unit: Unit | None, detail: dict[str, Any]) -> None:
        why = str(detail.get("detail", ""))
        if event == "start":
            task_ids["all"] = progress.add_task(
                detail["backfill_id"], total=detail["units"], detail=""
            )
            if detail.get("took_over_from"):
                console.print(
                    f"taking over backfill {detail['backfill_id']} from "
                    f"{detail['took_over_from']} ({detail.get('why')})",
                    highlight=False,
                )
            elif detail.get("resumed"):
                console.print(f"resuming backfill {detail['backfill_id']}")
        elif event == "takeover":
            console.print(
                f"[yellow]driver {detail['owner']} of backfill {detail['from']} is dead[/] "
                f"({detail['why']}): taking its units over now",
                highlight=False,
            )
        elif unit is not None and event in ("done", "skipped", "failed", "blocked"):
            progress.update(task_ids["all"], advance=1, detail=f"{event}: {unit.run_key}"[:70])
            if event in ("failed", "skipped") and why and not as_json:
                color = "red" if event == "failed" else "yellow"
                console.print(f"[{color}]{event}[/] {unit.run_key}: {why}", highlight=False)
        elif event == "yielded" and unit is not None:
            progress.update(task_ids["all"], detail=f"yielded: {unit.run_key}"[:70])
            console.print(f"[yellow]yielded[/] {unit.run_key}: {why}", highlight=False)
        elif unit is not None and event == "waiting":
            # e.g. "held by backfill X (driver h:1, UNKNOWN, lease runs out in 41s)"
            progress.update(task_ids["all"], detail=f"waiting: {why}"[:90])
        elif unit is not None and event in ("retry", "invalidated"):
            console.print(f"[yellow]{event}[/] {unit.run_key}: {why}", highlight=False)

    kwargs["progress"] = on_event
    previous = signal.getsignal(signal.SIGTERM)
    preempt = threading.Event()
    kwargs["preempt"] = preempt

    def _term(signum: int, frame: Any) -> None:
        # First SIGTERM (pod eviction, `ray job stop`): training units checkpoint at their next
        # step and stop within train.yield_timeout_s; the backfill ends PREEMPTED. A second
        # one stops at once (claims are released on the way out).
        if preempt.is_set():
            raise KeyboardInterrupt
        preempt.set()
        if not as_json:
            console.print("[yellow]SIGTERM: asking running units to checkpoint and yield[/]")

    signal.signal(signal.SIGTERM, _term)
    try:
        with progress:
            return run_backfill(**kwargs)
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Exit status of a backfill that stopped on SIGTERM after its units yielded: resumable.
#: (EX_TEMPFAIL: a retried `ray job submit` attempt or a restarted pod resumes it.)
EXIT_PREEMPTED = EXIT_CODES[BackfillState.PREEMPTED]


def _print_summary(s: BackfillSummary, as_json: bool, limit: int = 20) -> None:
    if as_json:
        emit_json(s.to_dict())
        return
    c = s.counts()
    color = "green" if s.ok else "red"
    out.print(
        f"backfill {s.backfill_id}: [{color}]{s.state.value}[/] in {s.wall_s:.1f}s"
        + ("" if s.ok else f" (exit {s.exit_code})")
    )
    out.print("  " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in c.items() if v))
    d = s.to_dict()
    missing = d["not_done"]
    if missing:
        out.print(f"  [red]{len(missing)} unit(s) not done:[/]")
    for u in missing[:limit]:
        lease = (
            f"; lease runs out in {u['lease_expires_in_s']:.0f}s"
            if u.get("lease_expires_in_s") is not None
            else ""
        )
        out.print(f"    {u['state'].lower()} {u['run_key']}: {u['why']}{lease}", highlight=False)
    if len(missing) > limit:
        out.print(f"    ... and {len(missing) - limit} more (--json lists all)")
    if s.state is BackfillState.INCOMPLETE:
        out.print(
            "  run the same command again to finish it (held units are taken over once their "
            "driver is dead or its lease runs out)"
        )
    for t in d["trained"]:
        out.print(
            f"  trained {t['run_key']}: mlflow run {t['mlflow_run_id']}, "
            f"model {t['model_name']} v{t['model_version']}, metrics {t['metrics']}"
        )


@backfill_app.command("cancel")
def cancel(backfill_id: str, as_json: bool = JsonOpt) -> None:
    """Ask a backfill to stop: its driver releases claims at the next safe point."""
    with cli_errors(as_json):
        ledger = open_ledger()
        bf = ledger.request_cancel(backfill_id)
        if as_json:
            emit_json(
                {
                    "backfill_id": bf.id,
                    "state": bf.state.value,
                    "cancel_requested": bf.cancel_requested,
                }
            )
        else:
            out.print(f"backfill {bf.id}: cancel requested (state {bf.state.value})")


def _ts(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def status_cmd(
    backfill_id: str | None = typer.Option(None, "--backfill", "-b", help="Show one backfill."),
    pipeline: str | None = typer.Option(None, "--pipeline", help="Only this pipeline."),
    limit: int = typer.Option(20, help="Backfills to list."),
    as_json: bool = JsonOpt,
    show_all: bool = AllOpt,
) -> None:
    """Backfills and their unit counts by state (or one backfill's units)."""
    with cli_errors(as_json):
        ledger = open_ledger()
        if backfill_id:
            bf = ledger.get_backfill(backfill_id)
            rows = ledger.get_units(ledger.backfill_run_keys(bf.id))
            units = [
                {
                    "run_key": r.run_key,
                    "state": r.state.value,
                    "token": r.token,
                    "holder": r.holder,
                    "lease_until": _ts(r.lease_until),
                    "attempts": r.attempts,
                    "error": r.last_error,
                    "committed_at": _ts(r.committed_at),
                    "version": r.version,
                    "progress": r.progress,
                    "training": _training_progress(r.progress),
                }
                for r in rows.values()
            ]
            data = {"backfill": _bf_dict(bf, ledger.unit_counts(bf.id)), "units": units}
            if as_json:
                emit_json(data)
                return
            if show_all is not True:
                out.print(views.backfill_summary(ReadModel(ledger).backfill(bf.id), out.width))
                return
            table = Table(title=f"backfill {bf.id} ({bf.state.value})")
            for col in ("run key", "state", "token", "attempts", "committed", "error/progress"):
                table.add_column(col, overflow="fold")
            for u in units:
                extra = (
                    _describe_training(u["training"])
                    if u["training"]
                    else u["error"] or (str(u["progress"]) if u["progress"] else "")
                )
                table.add_row(
                    u["run_key"],
                    u["state"],
                    str(u["token"]),
                    str(u["attempts"]),
                    u["committed_at"],
                    extra[:120],
                )
            out.print(table)
            return
        bfs = ledger.list_backfills(pipeline, limit)
        data = [_bf_dict(b, ledger.unit_counts(b.id)) for b in bfs]
        if as_json:
            emit_json({"ledger": ledger.url, "backfills": data})
            return
        table = Table(title=f"backfills in {ledger.url}")
        for col in ("id", "pipeline", "state", "window", "units by state", "updated"):
            table.add_column(col, overflow="fold")
        for b in data:
            counts = ", ".join(f"{k.lower()} {v}" for k, v in b["units"].items() if v)
            table.add_row(
                b["id"],
                b["pipeline"],
                b["state"],
                f"{b['params']['start']}..{b['params']['end']}",
                counts,
                b["updated"],
            )
        out.print(table)


def _training_progress(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    """A training unit's live progress, read from its control files next to its checkpoints."""
    where = (progress or {}).get("training")
    if not where:
        return None
    from rayorch.train.control import RunFiles

    live = RunFiles(where["storage"], where["run_name"]).read_progress()
    if live is None:
        return {"status": "not started"}
    keep = ("status", "epoch", "epochs", "step", "last_checkpoint", "restarts", "stragglers")
    return {k: live.get(k) for k in keep} | {"run_name": where["run_name"]}


def _describe_training(t: dict[str, Any]) -> str:
    if t.get("epoch") is None:
        return str(t.get("status"))
    ck = t.get("last_checkpoint") or {}
    parts = [
        f"{t.get('status')}: epoch {t['epoch']}/{t.get('epochs')} step {t.get('step')}",
        f"checkpoint @ step {ck['step']} ({ck['reason']})" if ck else "no checkpoint yet",
        f"restarts {t.get('restarts', 0)}",
    ]
    if t.get("stragglers"):
        parts.append(
            "stragglers: "
            + ", ".join(f"rank {x['rank']} on {x['node'][:12]}" for x in t["stragglers"])
        )
    return "; ".join(parts)


def _bf_dict(b: Any, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": b.id,
        "pipeline": b.pipeline,
        "state": b.state.value,
        "params": b.params,
        "owner": b.owner,
        "owner_epoch": b.owner_epoch,
        "owner_info": b.owner_info.to_dict() if b.owner_info else None,
        "lease_s": b.lease_s,
        "heartbeat": _ts(b.heartbeat_at),
        "created": _ts(b.created_at),
        "updated": _ts(b.updated_at),
        "cancel_requested": b.cancel_requested,
        "units": counts,
    }
