"""`rayorch tables list|expire`: the feature tables as any Iceberg reader finds them.

``list`` prints each table's identifier, catalog URI, warehouse, location and current
snapshot (read them with pyiceberg, pandas, DuckDB or Ray Data; ``rayorch.open_table`` in
Python). ``expire`` drops old snapshots from a table's metadata, never the current one, the
newest ``--retain-last`` or one a registered model version was trained on.
"""

from __future__ import annotations

import dataclasses
import time

import typer
from rich.table import Table

from rayorch.cli.common import ConfigOpt, JsonOpt, cli_errors, emit_json, out
from rayorch.data.tables import StepTable, expire_snapshots, list_tables
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
    as_json: bool = JsonOpt,
) -> None:
    """Expire snapshots older than N days, keeping the newest K and every snapshot a
    registered model version read (so `rayorch reproduce` can still re-run it)."""
    with cli_errors(as_json):
        spec = load_pipeline(config)
        st = load_settings()
        protected = (
            registered_snapshots(st.mlflow_uri, spec.registry.model_name)
            if spec.registry
            else set()
        )
        cut = int((time.time() - older_than_days * 86400) * 1000)
        step = StepTable.for_spec(spec, st)
        plan = expire_snapshots(step, protected, older_than_ms=cut, retain_last=retain_last)
        doc = {
            "table": step.identifier,
            "expired": list(plan.expire),
            "kept_for_models": list(plan.kept_for_models),
        }
        if as_json:
            emit_json(doc)
        else:
            out.print(
                f"{step.identifier}: expired {len(plan.expire)} snapshot(s); kept "
                f"{len(plan.kept_for_models)} a registered model version was trained on"
            )
