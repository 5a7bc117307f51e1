"""`rayorch dev up --workers 2` / `down` for real: separate `ray start` nodes, moto S3, an
MLflow server on PostgreSQL, once per session; a multi-node cluster refuses local state.

Run under ``flock /tmp/rayorch-ray.lock`` (it starts Ray nodes). Needs PostgreSQL at
``RAYORCH_TEST_PG_URL``'s server (CI sets it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rayorch.dev.run import alive, group_alive

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.e2e]


def _cli(
    home: Path, *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    base = {**os.environ, "RAYORCH_HOME": str(home), "PYTHONPATH": str(REPO)}
    for k in ("RAY_ADDRESS", "RAYORCH_DB_URL", "MLFLOW_TRACKING_URI", "RAYORCH_STORAGE_URL"):
        base.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "rayorch.cli.app", *args], env={**base, **(env or {})},
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200, url
        return r.read()


@pytest.fixture(scope="session")
def dev(tmp_path_factory):
    url = os.environ.get("RAYORCH_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but RAYORCH_TEST_PG_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("RAYORCH_TEST_PG_URL not set: `rayorch dev up` needs PostgreSQL")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    home = tmp_path_factory.mktemp("dev") / "home"
    r = _cli(
        home, "dev", "up", "--workers", "2", "--gpus-per-node", "8", "--pg-url", admin, "--json"
    )
    try:
        assert r.returncode == 0, r.stderr[-4000:]
        state = json.loads(r.stdout)
        yield home, state, admin
    finally:
        down = _cli(home, "dev", "down", "--json", timeout=120)
        assert down.returncode == 0, down.stderr[-3000:]
        if r.returncode == 0:
            pids = [s["pid"] for s in state["services"]]
            assert sorted(s["pid"] for s in json.loads(down.stdout)["stopped"]) == sorted(pids)
            assert [p for p in pids if alive(p) or group_alive(p)] == []  # nothing left behind


def test_up_starts_the_topology_and_writes_the_exports(dev):
    home, state, _ = dev
    env = state["env"]
    names = [s["name"] for s in state["services"]]
    assert names == ["s3", "mlflow", "ray-head", "ray-worker-1", "ray-worker-2"]
    assert all(alive(s["pid"]) for s in state["services"])
    urls = {s["name"]: s["url"] for s in state["services"]}
    _get(f"{urls['s3']}/moto-api/")
    assert _get(f"{env['MLFLOW_TRACKING_URI']}/health").strip() == b"OK"
    nodes = json.loads(_get(f"{urls['ray-head']}/api/v0/nodes?limit=10"))["data"]["result"][
        "result"
    ]
    assert sorted(n["state"] for n in nodes) == ["ALIVE"] * 3
    assert sorted(n["resources_total"].get("GPU", 0) for n in nodes) == [0, 8.0, 8.0]
    script = (home / "dev" / "env.sh").read_text()
    for k in ("RAY_ADDRESS", "RAYORCH_DB_URL", "MLFLOW_TRACKING_URI", "RAYORCH_STORAGE_URL",
              "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):  # fmt: skip
        assert f"export {k}=" in script
    assert env["RAYORCH_DB_URL"].startswith("postgresql://")
    assert env["RAYORCH_STORAGE_URL"].startswith("s3://")
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    assert "rayorch-dev" in {b["Name"] for b in s3.list_buckets()["Buckets"]}


def test_up_again_is_idempotent(dev):
    home, state, admin = dev
    r = _cli(home, "dev", "up", "--workers", "2", "--pg-url", admin, "--json", timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == state  # same processes, same exports


def test_attached_to_the_multi_node_cluster_local_state_is_refused(dev):
    """With only RAY_ADDRESS exported (SQLite ledger/MLflow, local storage by default), the
    driver refuses before planning, naming every setting to change; exit 2."""
    home, state, _ = dev
    r = _cli(home / "driver", "backfill", "-c", "configs/fraud.yaml", "--start", "2026-10-01",
             "--end", "2026-10-01", "--json", env={"RAY_ADDRESS": state["env"]["RAY_ADDRESS"]},
             timeout=120)  # fmt: skip
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-3000:])
    err = json.loads(r.stdout)
    assert err["error"] == "LocalStateError", err
    assert err["settings"] == ["RAYORCH_DB_URL", "MLFLOW_TRACKING_URI", "RAYORCH_STORAGE_URL"]
    assert "3 nodes" in err["message"]
    allowed = _cli(home / "driver", "backfill", "-c", "configs/fraud.yaml", "--start",
                   "2026-10-01", "--end", "2026-10-01", "--allow-local-state", "--json",
                   env={"RAY_ADDRESS": state["env"]["RAY_ADDRESS"]}, timeout=120)  # fmt: skip
    assert allowed.returncode == 2 and "only covers a single node" in allowed.stdout
