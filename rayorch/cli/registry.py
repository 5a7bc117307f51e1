"""`rayorch registry …`: promote, rollback, history, verify.

Exit codes (also in docs/registry.md):
  0  APPLIED or ALREADY_TARGET (verify: MATCH)
  3  CONFLICT: the alias was not at --expect; nothing moved
  4  REJECTED: unknown / not-READY version, or a gate failed; nothing moved
  5  verify: DRIFT, the deployed artifact is not the alias's
  6  verify: UNKNOWN, the alias is unset or its version has no recorded digest
  1, 2  errors (infrastructure / configuration), as everywhere in rayorch
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import typer

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out
from rayorch.errors import ConfigError
from rayorch.registry.decisions import PromotionOutcome, VerifyStatus
from rayorch.settings import load_settings
from rayorch.spec import GatesSpec

app = typer.Typer(help="Model registry: safe promotions, audit history, deployed drift.")

EXIT_CODES = {
    PromotionOutcome.APPLIED: 0,
    PromotionOutcome.ALREADY_TARGET: 0,
    PromotionOutcome.CONFLICT: 3,
    PromotionOutcome.REJECTED: 4,
}
VERIFY_EXIT_CODES = {VerifyStatus.MATCH: 0, VerifyStatus.DRIFT: 5, VerifyStatus.UNKNOWN: 6}

ModelArg = typer.Argument(..., help="Registered model name, e.g. fraud-detector.")
AliasOpt = typer.Option("production", "--alias", "-a", help="Alias to move or check.")
GatesConfigOpt = typer.Option(
    None,
    "--config",
    "-c",
    help="Pipeline YAML whose registry.gates apply (default: only require validated data).",
)


def _gates(config: Path | None, model: str) -> GatesSpec:
    if config is None:
        return GatesSpec()
    from rayorch.spec import load_pipeline

    spec = load_pipeline(config)
    if spec.registry is None:
        raise ConfigError(f"{config} has no registry section; add registry.model_name and gates")
    if spec.registry.model_name != model:
        raise ConfigError(
            f"{config} gates model {spec.registry.model_name!r}, not {model!r}",
            file=str(config),
            field="registry.model_name",
        )
    return spec.registry.gates


def _connect() -> None:
    from rayorch.runtime import ensure_ray

    # Without RAY_ADDRESS this starts a private local Ray, and the coordinator dies with it
    # when the command exits: harmless, all state is in the ledger and MLflow.
    ensure_ray(load_settings(), num_cpus=1)


def _print_result(res: dict, as_json: bool) -> None:
    if as_json:
        emit_json(res)
        return
    colour = {"APPLIED": "green", "ALREADY_TARGET": "green", "CONFLICT": "yellow"}.get(
        res["outcome"], "red"
    )
    cur = res["current"] or "none"
    out.print(
        f"[bold {colour}]{res['outcome']}[/] {res['model']} {res['alias']}: "
        f"{cur} -> {res['target']} (audit #{res['audit_id']}, {res['phase']})",
        highlight=False,
    )
    for r in res["reasons"]:
        out.print(f"  - {r}", highlight=False)


@app.command("promote")
def promote_cmd(
    model: str = ModelArg,
    version: str = typer.Option(..., "--version", "-v", help="Version to promote, e.g. 7."),
    alias: str = AliasOpt,
    expect: str | None = typer.Option(
        None,
        "--expect",
        help="Version the alias must name now ('none': unset). Default: read it first.",
    ),
    config: Path | None = GatesConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move ALIAS to VERSION if it still names --expect (compare-and-set), through the gates."""
    from rayorch.registry import coordinator

    with cli_errors(as_json):
        gates = _gates(config, model)
        _connect()
        if expect is None:
            expected = coordinator.current_version(model, alias)
        else:
            expected = None if expect.lower() == "none" else expect
        res = coordinator.promote(model, version, alias, expected, gates=gates, via="cli")
    _print_result(res.to_dict(), as_json)
    raise typer.Exit(EXIT_CODES[res.outcome])


@app.command("rollback")
def rollback_cmd(
    model: str = ModelArg,
    alias: str = AliasOpt,
    config: Path | None = GatesConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Move ALIAS back to the version it named before (per the audit log), by the same CAS."""
    from rayorch.registry import coordinator

    with cli_errors(as_json):
        gates = _gates(config, model)
        _connect()
        res = coordinator.rollback(model, alias, gates=gates, via="cli")
    _print_result(res.to_dict(), as_json)
    raise typer.Exit(EXIT_CODES[res.outcome])


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("history")
def history_cmd(
    model: str = ModelArg,
    alias: str | None = typer.Option(None, "--alias", "-a", help="Only this alias."),
    limit: int | None = typer.Option(None, "--limit", "-n", help="Only the last N attempts."),
    as_json: bool = JsonOpt,
) -> None:
    """Every promotion attempt: who, when, from, to, outcome, gates."""
    from rayorch.registry.queries import history

    with cli_errors(as_json):
        rows = history(model, alias, limit)
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    # One block per attempt: stays readable at any terminal width (use --json for tools).
    colour = {"APPLIED": "green", "ALREADY_TARGET": "green", "CONFLICT": "yellow"}
    out.print(f"[bold]{model}[/]: {len(rows)} promotion attempt(s)", highlight=False)
    for r in rows:
        who = f"{r.who.get('user', '?')}@{r.who.get('host', '?')}:{r.who.get('pid', '?')}"
        phase = "" if r.phase.value == "FINISHED" else f" [{r.phase.value}]"
        out.print(
            f"#{r.id} {_when(r.started_at)} {r.alias} {r.kind} "
            f"{r.from_version or 'none'} -> {r.to_version} (expect {r.expected or 'none'}) "
            f"[{colour.get(r.outcome.value, 'red')}]{r.outcome.value}[/]{phase} by {who}",
            highlight=False,
        )
        for reason in r.reasons:
            out.print(f"    - {reason}", highlight=False)


@app.command("verify")
def verify_cmd(
    model: str = ModelArg,
    alias: str = AliasOpt,
    deployed: str = typer.Option(
        ..., "--deployed", help="What is deployed: sha256, model directory, or artifact URI."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Check that the deployed artifact is the one ALIAS names (by content digest)."""
    from rayorch.registry.queries import verify_deployed

    with cli_errors(as_json):
        res = verify_deployed(model, alias, deployed)
    if as_json:
        emit_json(res.to_dict())
    else:
        colour = {"MATCH": "green", "DRIFT": "red"}.get(res.status.value, "yellow")
        out.print(
            f"[bold {colour}]{res.status.value}[/] {model} {alias} -> "
            f"{res.alias_version or 'none'}",
            highlight=False,
        )
        for r in res.reasons:
            out.print(f"  - {r}", highlight=False)
    raise typer.Exit(VERIFY_EXIT_CODES[res.status])
