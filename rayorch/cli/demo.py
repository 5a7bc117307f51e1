"""`rayorch demo`: generate example data and run the fraud backfill on embedded defaults."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer

from rayorch.api import generate_data
from rayorch.cli.backfill import _print_summary, _run_with_progress
from rayorch.cli.common import JsonOpt, cli_errors, console, out
from rayorch.errors import ConfigError
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline

DEMO_START = dt.date(2026, 10, 1)
DEMO_DAYS = 2


def find_config(name: str) -> Path:
    """The example configs ship in the repository's configs/ folder."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        p = base / "configs" / f"{name}.yaml"
        if p.is_file():
            return p
    raise ConfigError(f"cannot find configs/{name}.yaml; run from the rayorch checkout")


def demo(
    days: int = typer.Option(DEMO_DAYS, help="As-of days to backfill."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate example data, then backfill the fraud pipeline: features, training, registry."""
    with cli_errors(as_json):
        cfg = find_config("fraud")
        spec = load_pipeline(cfg)
        st = load_settings()
        end = DEMO_START + dt.timedelta(days=days - 1)
        first = DEMO_START - dt.timedelta(days=(spec.train.window_days if spec.train else 1) - 1)
        raw_root = Path(st.resolve(spec.source.path))
        if not raw_root.exists():
            rep = generate_data(spec, first, end, settings=st)
            if not as_json:
                console.print(f"generated {len(rep.partitions)} raw partitions under {rep.root}")
        summary = _run_with_progress(as_json, config=spec, start=DEMO_START, end=end, settings=st)
        _print_summary(summary, as_json)
        if not as_json:
            out.print("\nWhere to look:")
            out.print(f"  ledger:  rayorch status --backfill {summary.backfill_id}")
            out.print(f"  MLflow:  mlflow ui --backend-store-uri {st.mlflow_uri}")
            out.print(f"  data:    {st.home / 'data'}")
            out.print("  again:   rayorch demo   (skips what is done)")
        if summary.failed:
            raise typer.Exit(1)
