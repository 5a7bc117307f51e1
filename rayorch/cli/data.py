"""`rayorch data ...`: example data with injectable faults."""

from __future__ import annotations

import dataclasses

import typer

from rayorch.api import generate_data
from rayorch.cli.common import (
    ConfigOpt,
    EndOpt,
    JsonOpt,
    KeysOpt,
    StartOpt,
    cli_errors,
    console,
    emit_json,
    keys_arg,
)
from rayorch.data.generate import Faults
from rayorch.errors import ConfigError

app = typer.Typer(help="Example raw data in the public hive layout.", no_args_is_help=True)


def _hours(text: str | None, what: str) -> tuple[int, ...]:
    if not text:
        return ()
    hours: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                hours.extend(range(int(a), int(b) + 1))
            elif part:
                hours.append(int(part))
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a list of hours like '0,5,18-23'") from None
    if any(h < 0 or h > 23 for h in hours):
        raise ConfigError(f"{what}: hours must be within 0-23, got {text!r}")
    return tuple(sorted(set(hours)))


@app.command("generate")
def generate(
    config: str = ConfigOpt,
    start: str = StartOpt,
    end: str = EndOpt,
    keys: str | None = KeysOpt,
    drop_hours: str | None = typer.Option(None, help="Hours to leave out, e.g. '18-23'."),
    omit_marker: str | None = typer.Option(None, help="Hours written without _SUCCESS."),
    empty_hours: str | None = typer.Option(None, help="Hours with a marker but no rows."),
    duplicate_rows: int = typer.Option(0, help="Duplicate this many rows of hour 00."),
    change_type: list[str] = typer.Option([], help="COLUMN=TYPE, e.g. amount=string."),
    as_json: bool = JsonOpt,
) -> None:
    """Write deterministic raw partitions <source>/<key>/date=D/hour=HH/ with _SUCCESS."""
    with cli_errors(as_json):
        types = {}
        for item in change_type:
            if "=" not in item:
                raise ConfigError(f"--change-type {item!r} must look like COLUMN=TYPE")
            col, typ = item.split("=", 1)
            types[col] = typ
        faults = Faults(
            drop_hours=_hours(drop_hours, "--drop-hours"),
            omit_marker_hours=_hours(omit_marker, "--omit-marker"),
            empty_hours=_hours(empty_hours, "--empty-hours"),
            duplicate_rows=duplicate_rows,
            change_type=types,
        )
        report = generate_data(config, start, end, keys_arg(keys), faults)
        if as_json:
            emit_json(dataclasses.asdict(report))
        else:
            console.print(
                f"wrote {len(report.partitions)} partitions ({report.files} files, "
                f"{report.rows} rows) under {report.root}"
            )
