"""`rayorch sensors check`: validate raw partitions (metadata first) and say why not."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from rayorch.backfill.work import check_partition
from rayorch.cli.common import ConfigOpt, JsonOpt, KeysOpt, cli_errors, emit_json, keys_arg, out
from rayorch.errors import ConfigError
from rayorch.partitions import PartitionKey, date_range, key_product, parse_date
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline

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
        at = (
            dt.datetime.fromisoformat(now).replace(tzinfo=dt.timezone.utc)
            if now
            else dt.datetime.now(dt.timezone.utc)
        )
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
