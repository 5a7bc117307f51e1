"""Shared CLI plumbing: JSON output, error handling with exit codes, option types."""

from __future__ import annotations

import io
import json
import os
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


#: Where ``emit_json`` writes once :func:`json_stdout` took file descriptor 1 over.
_json_out: io.TextIOBase | None = None


def json_stdout() -> None:
    """With ``--json``, stdout carries exactly one JSON document: move everything else that
    writes to fd 1 (Ray's ``(raylet)`` lines, library prints, C extensions) to stderr, and
    keep the real stdout for :func:`emit_json` alone. Idempotent."""
    global _json_out
    if _json_out is not None:
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # fd 1 is stderr from here on, for this process and its children
    _json_out = io.TextIOWrapper(os.fdopen(saved, "wb", buffering=0), encoding="utf-8")
    sys.stdout = sys.stderr


def emit_json(data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    if _json_out is not None:
        _json_out.write(text)
        _json_out.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


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
