"""`rayorch dev` topology plan: pure, table-driven (no processes started)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from rayorch.dev.plan import (
    DevOptions,
    Ports,
    env_script,
    plan_topology,
    ports_from,
    ports_needed,
)


def _plan(workers: int, gpus: int):
    opts = DevOptions(workers=workers, gpus_per_node=gpus, pg_url="postgresql://u@db:5432/x")
    ports = ports_from(opts, list(range(20000, 20000 + ports_needed(opts))))
    return opts, ports, plan_topology(opts, Path("/h/dev"), ports, Path("/tmp/rdev-x"))


def _flag(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize(("workers", "gpus"), [(0, 0), (1, 8), (2, 8), (3, 2)])
def test_plan_names_every_service_and_distinct_ports(workers, gpus):
    _, ports, plan = _plan(workers, gpus)
    names = [s.name for s in plan.services]
    assert names == ["s3", "mlflow", "ray-head"] + [
        f"ray-worker-{i}" for i in range(1, workers + 1)
    ]
    every = [
        ports.s3,
        ports.mlflow,
        ports.gcs,
        ports.dashboard,
        *(p for n in ports.node for p in n),
    ]
    assert len(every) == len(set(every)) == ports_needed(DevOptions(workers=workers))
    head, *nodes = [s for s in plan.services if s.name.startswith("ray-")]
    assert "--head" in head.argv and _flag(head.argv, "--port") == str(ports.gcs)
    assert _flag(head.argv, "--num-gpus") == "0"
    for n in nodes:
        assert _flag(n.argv, "--address") == f"127.0.0.1:{ports.gcs}"
        assert _flag(n.argv, "--num-gpus") == str(gpus)
        assert "--block" in n.argv and "--head" not in n.argv
    ray_nodes = [s for s in plan.services if s.name.startswith("ray-")]
    assert len({_flag(s.argv, "--temp-dir") for s in ray_nodes}) == workers + 1  # own temp dir
    assert len({s.cwd for s in ray_nodes}) == workers + 1  # own working directory
    assert all(len(_flag(s.argv, "--temp-dir")) < 40 for s in ray_nodes)  # socket path limit


def test_env_points_every_setting_at_the_shared_services():
    _, ports, plan = _plan(2, 8)
    env = plan.env
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{ports.gcs}"
    assert env["RAYORCH_DB_URL"] == "postgresql://u@db:5432/rayorch_dev"
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports.mlflow}"
    assert env["RAYORCH_STORAGE_URL"].startswith("s3://rayorch-dev/")
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports.s3}"
    mlflow = next(s for s in plan.services if s.name == "mlflow")
    assert _flag(mlflow.argv, "--backend-store-uri").startswith("postgresql+psycopg://u@db:5432/")
    assert _flag(mlflow.argv, "--artifacts-destination").startswith("s3://rayorch-dev/")
    assert mlflow.env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]  # artifacts reach moto
    assert set(plan.databases) == {"rayorch_dev", "rayorch_dev_mlflow"}


def test_env_script_round_trips_through_a_shell():
    env = {"A": "plain", "B": "with space and 'quote'", "C": "s3://b/p?x=1&y=$HOME"}
    script = env_script(env)
    printed = subprocess.run(
        ["bash", "-c", f"{script}\nprintf '%s\\n' \"$A\" \"$B\" \"$C\""],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert printed == [env["A"], env["B"], env["C"]]
    assert all(line.startswith(("#", "export ")) for line in script.splitlines())
    assert shlex.split(script.splitlines()[1])[0] == "export"


@pytest.mark.parametrize("bad", [{"workers": -1}, {"gpus_per_node": -2}, {"cpus_per_node": 0}])
def test_options_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        DevOptions(**bad)


def test_ports_are_dealt_in_order():
    opts = DevOptions(workers=1)
    p = ports_from(opts, list(range(100, 100 + ports_needed(opts))))
    assert (p.s3, p.mlflow, p.gcs, p.dashboard) == (100, 101, 102, 103)
    assert p.node == (tuple(range(104, 110)), tuple(range(110, 116)))
    assert len(Ports.NODE_PORTS) == 6
