"""`rayorch tables list|expire`: the feature tables as any Iceberg reader finds them.

``list`` prints each table's identifier, catalog URI, warehouse, location and current
snapshot (read them with pyiceberg, pandas, DuckDB or Ray Data; ``rayorch.open_table`` in
Python). ``expire`` drops old snapshots from a table's metadata, never the current one, the
newest ``--retain-last`` or one a registered model version was trained on, then deletes the
files no retained snapshot refers to once they are older than ``--grace-hours``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import typer
from rich.table import Table

from rayorch.cli.common import ConfigOpt, JsonOpt, cli_errors, emit_json, out
from rayorch.data.tables import StepTable, expire_snapshots, list_tables, remove_orphan_files
from rayorch.lineage.tracking import registered_snapshots
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline

app = typer.Typer(
    help="Feature tables (Apache Iceberg) in rayorch's catalog.", no_args_is_help=True
)


@app.command("list")
def list_cmd(as_json: bool = JsonOpt) -> None:
    """Every table: identifier, catalog URI, warehouse, location, current snapshot."""
    with cli_errors(as_json):
        infos = list_tables(load_settings())
        if as_json:
            emit_json({"tables": [dataclasses.asdict(i) for i in infos]})
            return
        if not infos:
            out.print("no tables yet: a backfill creates its step's table on first commit")
            return
        t = Table("table", "current snapshot", "snapshots")
        t.add_column("location", overflow="fold")
        for i in infos:
            t.add_row(i.identifier, str(i.current_snapshot), str(i.snapshots), i.location)
        out.print(t)
        out.print(f"catalog {infos[0].catalog_uri}  warehouse {infos[0].warehouse}")


@app.command("expire")
def expire_cmd(
    config: str = ConfigOpt,
    older_than_days: float = typer.Option(30.0, "--older-than-days", min=0),
    retain_last: int = typer.Option(10, "--retain-last", min=1),
    orphans: bool = typer.Option(
        True,
        "--orphans/--no-orphans",
        help="Also delete files no retained snapshot refers to (older than --grace-hours).",
    ),
    grace_hours: float = typer.Option(
        24.0,
        "--grace-hours",
        min=0,
        help="Never delete an unreferenced file younger than this: a running or not yet "
        "published attempt wrote it.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would go; change nothing."),
    as_json: bool = JsonOpt,
) -> None:
    """Expire snapshots older than N days, keeping the newest K and every snapshot a
    registered model version read (so `rayorch reproduce` can still re-run it); then delete
    the data and metadata files no retained snapshot refers to: unpublished attempts and
    versions only expired snapshots had."""
    with cli_errors(as_json):
        spec = load_pipeline(config)
        st = load_settings()
        protected = (
            registered_snapshots(st.mlflow_uri, spec.registry.model_name)
            if spec.registry
            else set()
        )
        now = time.time()
        step = StepTable.for_spec(spec, st)
        plan = expire_snapshots(
            step,
            protected,
            older_than_ms=int((now - older_than_days * 86400) * 1000),
            retain_last=retain_last,
            dry_run=dry_run,
        )
        sweep = (
            remove_orphan_files(
                step,
                cutoff_ms=int((now - grace_hours * 3600) * 1000),
                dry_run=dry_run,
                excluding=plan.expire if dry_run else (),
            )
            if orphans
            else None
        )
        doc: dict[str, Any] = {
            "table": step.identifier,
            "dry_run": dry_run,
            "expired": list(plan.expire),
            "kept_for_models": list(plan.kept_for_models),
        }
        if sweep is not None:
            doc["orphans"] = {
                "delete" if dry_run else "deleted": [
                    {"path": f.path, "size": f.size} for f in sweep.plan.delete
                ],
                "bytes": sweep.plan.bytes,
                "kept_young": [f.path for f in sweep.plan.kept_young],
                "referenced": sweep.plan.referenced,
            }
        if as_json:
            emit_json(doc)
            return
        verb = "would expire" if dry_run else "expired"
        out.print(
            f"{step.identifier}: {verb} {len(plan.expire)} snapshot(s); kept "
            f"{len(plan.kept_for_models)} a registered model version was trained on"
        )
        if sweep is not None:
            verb = "would delete" if dry_run else "deleted"
            for f in sweep.plan.delete:
                out.print(f"  {verb} {f.path} ({f.size} bytes)")
            out.print(
                f"{verb} {len(sweep.plan.delete)} unreferenced file(s), {sweep.plan.bytes} bytes; "
                f"kept {len(sweep.plan.kept_young)} younger than {grace_hours:g} h and "
                f"{sweep.plan.referenced} a retained snapshot needs"
            )
