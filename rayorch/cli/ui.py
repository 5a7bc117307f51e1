"""`rayorch ui`: the web app over the ledger (backfills, partition grid, cluster, JSON API)."""

from __future__ import annotations

import typer

from rayorch.cli.common import cli_errors, console


def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8265, "--port", help="Port to serve on."),
    allow_actions: bool = typer.Option(
        False,
        "--allow-actions",
        help="Enable cancel / retry failed / reprocess (dry run first, POST with a CSRF token).",
    ),
    allow_remote_actions: bool = typer.Option(
        False, "--allow-remote-actions", help="Allow actions on a non-loopback --host."
    ),
    configs: list[str] = typer.Option(
        ["configs"],
        "--configs",
        help="Pipeline YAML files or folders (repeatable): for retry/reprocess and stale units.",
    ),
    mlflow_url: str | None = typer.Option(
        None, "--mlflow-url", help="An MLflow UI to link runs to, e.g. http://127.0.0.1:5000."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster for the cluster page (default: RAY_ADDRESS/auto)."
    ),
    refresh_s: float = typer.Option(3.0, "--refresh-seconds", help="Auto-refresh period."),
) -> None:
    """Serve the web UI; the same data as `rayorch status`, and /api/backfills for scripts."""
    from rayorch.settings import load_settings
    from rayorch.ui.actions import discover_configs
    from rayorch.ui.app import UIConfig
    from rayorch.ui.server import check_bind, serve

    with cli_errors():
        check_bind(host, allow_actions, allow_remote_actions)
        settings = load_settings()
        cfg = UIConfig(
            settings,
            allow_actions=allow_actions,
            configs=discover_configs(configs),
            mlflow_url=mlflow_url,
            ray_address=ray_address,
            refresh_s=refresh_s,
        )
        console.print(
            f"rayorch ui on http://{host}:{port}  (ledger {settings.db_url}; actions "
            f"{'on' if allow_actions else 'off'})",
            highlight=False,
        )
        serve(cfg, host, port)
