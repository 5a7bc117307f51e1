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


def _plan(workers: int, gpus: int, root: Path = Path("/h/dev")):
    opts = DevOptions(workers=workers, gpus_per_node=gpus, pg_url="postgresql://u@db:5432/x")
    ports = ports_from(opts, list(range(20000, 20000 + ports_needed(opts))))
    return opts, ports, plan_topology(opts, root, ports, Path("/tmp/rdev-x"))


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
    assert _flag(head.argv, "--num-cpus") == ("0" if workers else "2")  # work goes to workers
    for n in nodes:
        assert _flag(n.argv, "--num-cpus") == "2"
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
    ledger_db, mlflow_db = plan.databases
    assert env["RAYORCH_DB_URL"] == f"postgresql://u@db:5432/{ledger_db}"
    assert ledger_db.startswith("rayorch_dev_") and mlflow_db == f"{ledger_db}_mlflow"
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports.mlflow}"
    assert env["RAYORCH_STORAGE_URL"].startswith("s3://rayorch-dev/")
    assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{ports.s3}"
    mlflow = next(s for s in plan.services if s.name == "mlflow")
    assert _flag(mlflow.argv, "--backend-store-uri").startswith("postgresql+psycopg://u@db:5432/")
    assert _flag(mlflow.argv, "--artifacts-destination").startswith("s3://rayorch-dev/")
    assert mlflow.env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]  # artifacts reach moto
    assert _flag(mlflow.argv, "--backend-store-uri").endswith(f"/{mlflow_db}")
    # Another topology root gets databases of its own (they are dropped with it on `down`).
    _, _, other = _plan(2, 8, root=Path("/elsewhere/dev"))
    assert set(other.databases).isdisjoint(plan.databases)


def test_every_node_carries_the_exports_and_a_home_of_its_own():
    """As a KubeRay pod's env would: a job's driver and workers reach the shared services
    with nothing passed on `ray job submit`; each node's RAYORCH_HOME is its own directory."""
    _, _, plan = _plan(2, 8)
    nodes = [s for s in plan.services if s.name.startswith("ray-")]
    for n in nodes:
        for k in (
            "RAYORCH_DB_URL",
            "MLFLOW_TRACKING_URI",
            "RAYORCH_STORAGE_URL",
            "AWS_ENDPOINT_URL",
        ):
            assert n.env[k] == plan.env[k], (n.name, k)
        assert "RAY_ADDRESS" not in n.env  # a node joins by --address
        assert n.env["RAYORCH_HOME"].startswith(n.cwd)
    assert len({n.env["RAYORCH_HOME"] for n in nodes}) == len(nodes)


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
