"""Test helpers: a small fraud-like pipeline config written to a temp dir, the CLI in a
subprocess, and fake-GPU Ray clusters for the scheduling scenarios."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
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


def invoke_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (typer's ``CliRunner``): the same command functions, exit codes
    and output as :func:`run_cli`, without a Python start-up and its imports (seconds on two
    cores). For commands that read state; a test of the process itself (signals, one JSON
    document on fd 1, a takeover) keeps :func:`run_cli`."""
    from typer.testing import CliRunner

    from rayorch.cli.app import app

    res = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(["rayorch", *args], res.exit_code, res.stdout, res.stderr)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(
            f"not JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        ) from e


# --- fake-GPU clusters in a subprocess of their own ------------------------------------------
# A scenario module (tests/test_scheduling_*.py) runs its ``main()`` in a child process with a
# ``ray.cluster_utils.Cluster`` of its own, so the session Ray of other tests cannot interfere
# and test order cannot break it; the child prints one JSON document, the tests assert on it.
def run_scenario(script: str | Path, timeout: float, *, unset: tuple[str, ...] = ()) -> Any:
    """Run ``python <script>`` (its ``__main__`` prints the scenario as JSON) and parse the
    last JSON line; ``RAY_ADDRESS`` and the names in ``unset`` are removed from its env."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    for name in ("RAY_ADDRESS", *unset):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, str(Path(script).resolve())],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:] + proc.stdout[-2000:]
    return json.loads(lines[-1])


@contextlib.contextmanager
def fake_gpu_cluster(
    nodes: int, *, num_cpus: int, num_gpus: int = 8, accelerator: str = "A100"
) -> Iterator[Any]:
    """``nodes`` Ray nodes with ``num_gpus`` fake GPUs each (Ray accounts them; nothing uses
    them), this process attached. On exit the rayorch scheduler actor is killed, then Ray and
    the cluster are shut down."""
    import ray
    from ray.cluster_utils import Cluster

    from rayorch.scheduling.controller import SCHEDULER_NAME, SCHEDULER_NAMESPACE

    node_args = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "resources": {f"accelerator_type:{accelerator}": 1},
    }
    cluster = Cluster(
        initialize_head=True, head_node_args={**node_args, "include_dashboard": False}
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            ray.kill(ray.get_actor(SCHEDULER_NAME, namespace=SCHEDULER_NAMESPACE))
        ray.shutdown()
        cluster.shutdown()
