"""`rayorch dev up|down|status`: the production topology on one machine, for trying cluster
mode and for the tests (Ray head + workers, S3, MLflow server, PostgreSQL)."""

from __future__ import annotations

import typer
from rich.table import Table

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out
from rayorch.dev.run import DevState, alive, default_options, down, read_state, up
from rayorch.settings import load_settings

app = typer.Typer(help="A local cluster topology: Ray nodes, S3, MLflow server, PostgreSQL.")


def _print(state: DevState, as_json: bool) -> None:
    if as_json:
        emit_json(state.to_dict())
        return
    t = Table("service", "pid", "url", "alive")
    for s in state.services:
        t.add_row(s.name, str(s.pid), s.url, "yes" if alive(s.pid) else "NO")
    out.print(t)
    out.print(f"exports written to {state.env_file}; run: [bold]source {state.env_file}[/]")
    for k, v in sorted(state.env.items()):
        out.print(f"export {k}={v}", markup=False, highlight=False)


@app.command("up")
def up_cmd(
    workers: int = typer.Option(2, "--workers", help="Ray worker nodes besides the head."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="Fake GPUs per worker node."),
    pg_url: str | None = typer.Option(
        None, "--pg-url", help="PostgreSQL to create the dev databases on (default: local)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Start the topology (idempotent: a running one is printed as is)."""
    with cli_errors(as_json):
        home = load_settings().home
        _print(up(home, default_options(workers, gpus_per_node, pg_url)), as_json)


@app.command("down")
def down_cmd(as_json: bool = JsonOpt) -> None:
    """Stop exactly the processes `dev up` started (by recorded pid)."""
    with cli_errors(as_json):
        stopped = down(load_settings().home)
        if as_json:
            emit_json({"stopped": [{"name": s.name, "pid": s.pid} for s in stopped]})
            return
        out.print(f"stopped {len(stopped)} dev service(s)" if stopped else "nothing running")


@app.command("status")
def status_cmd(as_json: bool = JsonOpt) -> None:
    """The recorded topology and whether each process is alive."""
    with cli_errors(as_json):
        state = read_state(load_settings().home)
        if state is None:
            if as_json:
                emit_json({"env": {}, "services": []})
                return
            out.print("no dev topology recorded (rayorch dev up)")
            raise typer.Exit(1)
        _print(state, as_json)
