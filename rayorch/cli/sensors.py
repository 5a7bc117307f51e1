"""`rayorch sensors check` and `rayorch sensors watch`.

``check`` validates raw partitions (metadata first) and says why not. ``watch`` re-checks the
partitions whose feature units are not committed, and when one has become READY reports the
affected units (its feature unit and the training units whose window includes it) and, with
``--backfill``, re-runs exactly those through narrowed backfills.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import typer
from rich.table import Table

from rayorch.backfill.plan import BackfillPlan, plan_backfill
from rayorch.backfill.watch import WatchDecision, candidates, decide_watch
from rayorch.backfill.work import check_partition
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
from rayorch.data.sensors import SensorResult, SensorStatus
from rayorch.errors import ConfigError
from rayorch.ledger.states import Reprocess
from rayorch.partitions import PartitionKey, date_range, key_product, parse_date
from rayorch.settings import Settings, load_settings
from rayorch.spec import PipelineSpec, load_pipeline

app = typer.Typer(help="Freshness sensors over raw partitions.", no_args_is_help=True)


@app.command("check")
def check(
    config: str = ConfigOpt,
    partition: list[str] = typer.Option(
        [], "--partition", "-p", help="e.g. city=SF/date=2026-10-03"
    ),
    start: str | None = typer.Option(None, "--start", help="First day of a range."),
    end: str | None = typer.Option(None, "--end", help="Last day of a range."),
    keys: str | None = KeysOpt,
    now: str | None = typer.Option(None, "--now", help="Evaluate as of this ISO time (UTC)."),
    as_json: bool = JsonOpt,
) -> None:
    """READY / PENDING / REJECTED per partition with every reason. Exit 1 unless all READY."""
    with cli_errors(as_json):
        spec = load_pipeline(config)
        st = load_settings()
        at = _at(now)
        targets: list[PartitionKey] = [PartitionKey.parse(p) for p in partition]
        if start or end:
            if not (start and end):
                raise ConfigError("--start and --end go together")
            for day in date_range(start, end):
                for kv in key_product(spec.select_keys(keys_arg(keys))):
                    targets.append(PartitionKey.of(kv, **{spec.time_dim: day.isoformat()}))
        if not targets:
            raise ConfigError("name partitions with --partition or a range with --start/--end")
        expected = {spec.time_dim, *spec.key_dims}
        results = []
        for key in targets:
            if set(key.dims) != expected:
                raise ConfigError(
                    f"partition {key} must name dimensions {sorted(expected)}",
                    partition=str(key),
                )
            day = parse_date(key[spec.time_dim])
            results.append(check_partition(spec, st.resolve(spec.source.path), key, day, at))
        if as_json:
            emit_json({"results": [r.to_dict() for r in results]})
        else:
            table = Table(title=f"sensors: {spec.name}")
            for col in ("partition", "status", "rows", "reasons"):
                table.add_column(col, overflow="fold")
            for r in results:
                color = {"READY": "green", "PENDING": "yellow"}.get(r.status.value, "red")
                table.add_row(
                    r.partition,
                    f"[{color}]{r.status.value}[/]",
                    str(r.rows),
                    "; ".join(x.message for x in r.reasons),
                )
            out.print(table)
        if any(r.status.value != "READY" for r in results):
            raise typer.Exit(1)


def _at(now: str | None) -> dt.datetime:
    if now:
        return dt.datetime.fromisoformat(now).replace(tzinfo=dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def watch_plans(
    spec: PipelineSpec,
    start: str | None,
    end: str | None,
    keys: dict[str, list[str]] | None,
    settings: Settings,
) -> list[BackfillPlan]:
    """The plan of the given range, or the plans of this pipeline's recent backfills."""
    if start or end:
        if not (start and end):
            raise ConfigError("--start and --end go together")
        return [plan_backfill(spec, start, end, keys)]
    from rayorch.api import open_ledger

    ledger = open_ledger(settings)
    try:
        backfills = ledger.list_backfills(spec.name, limit=50)
    finally:
        ledger.close()
    plans: dict[str, BackfillPlan] = {}
    for bf in backfills:
        p = bf.params
        plans.setdefault(
            bf.params_hash, plan_backfill(spec, p["start"], p["end"], p["keys"], p["steps"])
        )
    if not plans:
        raise ConfigError(
            f"no backfill of pipeline {spec.name!r} in the ledger; give --start/--end",
            pipeline=spec.name,
        )
    return list(plans.values())


def watch_pass(
    spec: PipelineSpec,
    plans: list[BackfillPlan],
    settings: Settings,
    at: dt.datetime,
    previous: dict[str, SensorStatus],
) -> tuple[WatchDecision, dict[str, SensorResult]]:
    """Observe the candidates' sensors and decide (no Ray involved)."""
    from rayorch.api import open_ledger

    ledger = open_ledger(settings)
    try:
        rows = ledger.get_units(u.run_key for p in plans for u in p.units)
    finally:
        ledger.close()
    known = {k: r.state for k, r in rows.items()}
    source = settings.resolve(spec.source.path)
    results = {
        part: check_partition(spec, source, unit.partition, unit.day, at)
        for part, unit in candidates(plans, known)
    }
    status = {p: r.status for p, r in results.items()}
    return decide_watch(plans, known, status, previous), results


@app.command("watch")
def watch(
    config: str = ConfigOpt,
    start: str | None = typer.Option(None, "--start", help="First day (default: the ledger's)."),
    end: str | None = typer.Option(None, "--end", help="Last day of the range."),
    keys: str | None = KeysOpt,
    interval: float = typer.Option(60.0, "--interval", min=0.1, help="Seconds between passes."),
    once: bool = typer.Option(False, "--once", help="One pass, then exit."),
    backfill: bool = typer.Option(
        False, "--backfill", help="Re-run the affected runnable units (narrowed backfills)."
    ),
    reprocess: Reprocess = typer.Option(
        Reprocess.FAILED, "--reprocess", help="Passed to the narrowed backfills."
    ),
    now: str | None = typer.Option(None, "--now", help="Evaluate as of this ISO time (UTC)."),
    as_json: bool = JsonOpt,
    allow_local_state: bool = typer.Option(
        False,
        "--allow-local-state",
        help="With --backfill attached to a single-node Ray cluster: keep SQLite and local "
        "paths (see `rayorch backfill --allow-local-state`).",
    ),
) -> None:
    """Pick up late data: report (and with --backfill re-run) units a now-READY partition frees.

    Without --start/--end the ranges of this pipeline's recent backfills are watched. Exit 1
    when a narrowed backfill fails.
    """
    with cli_errors(as_json):
        spec = load_pipeline(config)
        st = load_settings()
        plans = watch_plans(spec, start, end, keys_arg(keys), st)
        previous: dict[str, SensorStatus] = {}
        failed = False
        while True:
            decision, results = watch_pass(spec, plans, st, _at(now), previous)
            previous = {p: r.status for p, r in results.items()}
            ran: list[dict[str, Any]] = []
            if backfill:
                from rayorch.api import run_backfill

                for req in decision.requests:
                    summary = run_backfill(
                        spec,
                        req.start,
                        req.end,
                        req.keys,
                        ",".join(req.steps),
                        reprocess=reprocess,
                        settings=st,
                        allow_local_state=allow_local_state,
                    )
                    failed |= summary.state.value != "SUCCEEDED"
                    ran.append({"request": req.to_dict(), "summary": summary.to_dict()})
            _report(spec.name, decision, results, ran, as_json)
            if once:
                break
            time.sleep(interval)
        if failed:
            raise typer.Exit(1)


def _report(
    pipeline: str,
    decision: WatchDecision,
    results: dict[str, SensorResult],
    ran: list[dict[str, Any]],
    as_json: bool,
) -> None:
    if as_json:
        emit_json(
            {
                "pipeline": pipeline,
                "checked": len(results),
                **decision.to_dict(),
                "reasons": {
                    p: [x.message for x in r.reasons]
                    for p, r in results.items()
                    if r.status is not SensorStatus.READY
                },
                "backfills": ran,
            }
        )
        return
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%SZ")
    console.print(
        f"[{stamp}] checked {len(results)} partition(s); newly READY: "
        f"{', '.join(decision.newly_ready) or 'none'}; still waiting: {len(decision.waiting)}"
    )
    if decision.affected:
        table = Table(title=f"affected units: {pipeline}")
        for col in ("run key", "verdict", "because of", "blocked by"):
            table.add_column(col, overflow="fold")
        for a in decision.affected:
            table.add_row(
                a.unit.run_key, a.verdict.value, ", ".join(a.because_of), ", ".join(a.blocked_by)
            )
        out.print(table)
    for r in ran:
        s = r["summary"]
        out.print(f"backfill {s['backfill_id']}: {s['state']} {s['counts']}")
