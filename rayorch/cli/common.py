"""Shared CLI plumbing: JSON output, error handling with exit codes, option types."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console

from rayorch.errors import RayorchError
from rayorch.partitions import parse_key_selection

console = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = typer.Option(..., "--config", "-c", help="Pipeline YAML, e.g. configs/fraud.yaml.")
StartOpt = typer.Option(..., "--start", help="First day (YYYY-MM-DD), inclusive.")
EndOpt = typer.Option(..., "--end", help="Last day (YYYY-MM-DD), inclusive.")
KeysOpt = typer.Option(None, "--keys", help="Key values, e.g. 'city=SF,NYC' (default: all).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def keys_arg(text: str | None) -> dict[str, list[str]] | None:
    return parse_key_selection(text) or None


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def cli_errors(as_json: bool = False) -> Iterator[None]:
    """Turn rayorch errors into a clear message and the family's exit code."""
    try:
        yield
    except RayorchError as e:
        if as_json:
            emit_json(e.to_dict())
        else:
            console.print(f"[bold red]error:[/] {e.message}", highlight=False)
        raise typer.Exit(e.exit_code) from None
