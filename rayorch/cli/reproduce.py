"""`rayorch reproduce RUN_ID [--check] [--json]`.

``--check`` exits 0 when data, environment and code are what the run recorded and 1 when
anything differs (naming the partitions whose content hashes changed and the packages that
differ). Without ``--check``: the unit is re-run on the feature-table snapshot the run read
(time travel, so reprocessed partitions do not stop it) into a new MLflow run tagged
``rayorch.reproduces=<RUN_ID>``; exit 0 when its metrics match within ``--tolerance``, 1 when
they do not or when the environment or code differ (then nothing is re-run); a snapshot
that was expired is reported as gone (exit 2).
"""

from __future__ import annotations

from typing import Any

import typer

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out


def _print_check(chk: dict[str, Any]) -> None:
    verdict = "[green]same[/]" if chk["same"] else "[bold red]differs[/]"
    out.print(f"run {chk['run_id']} ({chk['run_key']}): {verdict}")
    changed = chk["partitions_changed"]
    out.print(f"data: {chk['partitions_checked']} partitions checked, {len(changed)} changed")
    for c in changed:
        out.print(f"  {c['line']}", highlight=False)
    env = chk["environment"]
    if env is None:
        out.print("environment: not recorded")
    else:
        lines = env["lines"]
        out.print(f"environment: {'equal' if env['equal'] else 'differs'}")
        for line in lines:
            out.print(f"  {line}", highlight=False)
    for n in chk["notes"]:
        out.print(f"note: {n}", highlight=False)


def reproduce(
    run_id: str = typer.Argument(..., help="MLflow run id of a rayorch training unit."),
    check: bool = typer.Option(False, "--check", help="Only report what differs; exit 1 if any."),
    tolerance: float = typer.Option(
        1e-6, "--tolerance", help="Relative and absolute tolerance for metric equality."
    ),
    local_env: bool = typer.Option(
        False,
        "--local-env",
        help="Fingerprint this process instead of a Ray worker with the runtime_env (no Ray).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Compare a run's data and environment with now; re-run it when nothing differs."""
    from rayorch.lineage.reproduce import check_run, reproduce_run

    with cli_errors(as_json):
        if check:
            chk = check_run(run_id, local_env=local_env).to_dict()
            if as_json:
                emit_json(chk)
            else:
                _print_check(chk)
            if not chk["same"]:
                raise typer.Exit(1)
            return
        doc = reproduce_run(run_id, tolerance=tolerance, local_env=local_env)
        if as_json:
            emit_json(doc)
        else:
            _print_check(doc["check"])
            if not doc["reran"]:
                out.print("[bold red]not re-run[/]: the run's environment or code changed")
            else:
                out.print(f"re-ran into MLflow run {doc['new_run_id']} (reproduces {run_id})")
                for m in doc["metrics"]:
                    mark = "=" if m["match"] else "≠"
                    out.print(
                        f"  {m['metric']}: {m['original']:.6g} {mark} {m['reproduced']}",
                        highlight=False,
                    )
                out.print(
                    "metrics match" if doc["metrics_match"] else "[bold red]metrics differ[/]"
                )
        if not doc["reran"] or not doc["metrics_match"]:
            raise typer.Exit(1)
