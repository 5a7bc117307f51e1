"""Test helpers: a small fraud-like pipeline config written to a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def small_config(
    tmp: Path,
    *,
    hours: int = 4,
    rows: int = 10,
    train: bool = False,
    retries: int = 0,
    entrypoint: str = "rayorch.examples.testing:flaky_features",
    params: dict[str, Any] | None = None,
    **freshness: Any,
) -> Path:
    base = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    base["partitions"]["keys"] = {"city": ["SF", "NYC", "LA"]}
    base["source"]["example"]["rows_per_hour"] = rows
    base["freshness"] = {"expected_sub_partitions": hours, "lateness_hours": 0, **freshness}
    base["features"]["entrypoint"] = entrypoint
    base["features"]["retries"] = retries
    base["features"]["params"] = params or {}
    base["features"]["retry_backoff_s"] = 0.1
    if train:
        base["train"]["epochs"] = 3
        base["train"]["window_days"] = 2
    else:
        base.pop("train")
        base.pop("registry")
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rayorch.cli.app", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"rayorch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(
            f"not JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from e
