"""The `rayorch` command: thin, noun-verb, over the Python API."""

from __future__ import annotations

import logging
import sys

import typer

from rayorch.cli import backfill, cluster, data, demo, env, registry, reproduce, sensors, simulate
from rayorch.cli import dev as dev_cmd
from rayorch.cli import kube as kube_cmd
from rayorch.cli import tables as tables_cmd
from rayorch.cli import ui as ui_cmd
from rayorch.cli.common import json_stdout
from rayorch.settings import load_settings

app = typer.Typer(
    help="rayorch: a training orchestrator on Ray (backfills, sensors, training, registry).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.command("plan")(backfill.plan_cmd)
app.command("status")(backfill.status_cmd)
app.add_typer(backfill.backfill_app, name="backfill")
app.add_typer(data.app, name="data")
app.add_typer(sensors.app, name="sensors")
app.add_typer(registry.app, name="registry")
app.add_typer(cluster.app, name="cluster")
app.command("simulate")(simulate.simulate)
app.add_typer(env.app, name="env")
app.command("reproduce")(reproduce.reproduce)
app.command("ui")(ui_cmd.ui)
app.add_typer(kube_cmd.app, name="kube")
app.add_typer(tables_cmd.app, name="tables")
app.add_typer(dev_cmd.app, name="dev")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--json" in args:
        json_stdout()  # before anything can print: one JSON document on stdout
    logging.basicConfig(level=load_settings().log_level, stream=sys.stderr)
    app(args)


if __name__ == "__main__":
    main()
