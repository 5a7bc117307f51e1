"""`rayorch dev up --workers 2` / `down` for real: separate `ray start` nodes, moto S3, an
MLflow server on PostgreSQL, once per session; a multi-node cluster refuses local state.

Run under ``flock /tmp/rayorch-ray.lock`` (it starts Ray nodes). Needs PostgreSQL at
``RAYORCH_TEST_PG_URL``'s server (CI sets it)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
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


# -- the end-to-end path: `ray job submit` across the nodes, faults, nothing on local disk ------

CONFIG = "tests/configs/fraud_interruptible.yaml"  # the example, training slowed to interrupt it
JOB_TIMEOUT_S = 900.0
#: Window A (one day, a 2-day training window: 6 feature units + 1 training unit) runs with a
#: worker node lost mid-training; window B is stopped, killed and resubmitted.
DAY_A, DAY_B = "2026-10-02", "2026-10-03"


def _topology_env(state: dict, home: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAYORCH_")},
            **state["env"], "RAYORCH_HOME": str(home), "RAY_AUTH_MODE": "disabled",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def _ray_job(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    r = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", *args], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout + r.stderr


def _submit(env: dict[str, str], day: str) -> str:
    """The README's command (this module's CONFIG), with the exports and nothing else."""
    sid = f"e2e-{day}-{uuid.uuid4().hex[:8]}"
    _ray_job(env, "submit", "--no-wait", "--submission-id", sid, "--working-dir", ".", "--",
             "python", "jobs/backfill.py", "--config", CONFIG, "--start", day, "--end", day,
             "--json")  # fmt: skip
    return sid


def _wait_until(pred, what: str, timeout: float = JOB_TIMEOUT_S, every: float = 0.5,
                job: tuple | None = None):  # fmt: skip
    """Poll ``pred`` until it is truthy. With ``job`` (client, submission id), fail at once,
    with the job's logs, if the job ends first: the wait is for something it should do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if job is not None:
            client, sid = job
            status = client.get_job_status(sid).value
            if status in ("SUCCEEDED", "FAILED", "STOPPED") and not (got := pred()):
                pytest.fail(f"job {sid} ended {status} before {what}:\n"
                            + client.get_job_logs(sid)[-4000:])  # fmt: skip
            if got:
                return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _finished(client, sid: str) -> str:
    from ray.job_submission import JobStatus

    done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    st = _wait_until(lambda: (s := client.get_job_status(sid)) in done and s, f"job {sid}")
    return str(st.value)


def _summary(client, sid: str) -> dict:
    """The driver's one `--json` document, from the job's logs."""
    logs = client.get_job_logs(sid)
    dec = json.JSONDecoder()
    found = None
    for i in (m.start() + 1 for m in re.finditer(r"\n\{", logs)):
        try:
            doc, _ = dec.raw_decode(logs, i)
        except ValueError:
            continue
        if isinstance(doc, dict) and "backfill_id" in doc:
            found = doc
    assert found is not None, logs[-4000:]
    return found


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip


def _keys(s3, prefix: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="rayorch-dev", Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def _checkpoints(s3, day: str) -> set[str]:
    """Checkpoint directories of the training unit of ``day`` written so far (in S3)."""
    run = f"fraud_train_date_{day}"
    return {
        k.split("/")[3]
        for k in _keys(s3, "rayorch/checkpoints/")
        if k.split("/")[2].startswith(run) and len(k.split("/")) > 4
        and k.split("/")[3].startswith("rayorch_s")
    }  # fmt: skip


def _settings(env: dict[str, str], home: Path):
    """Settings as a process with ``env`` would load them."""
    from rayorch.settings import load_settings

    keep = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings(home)
    finally:
        os.environ.clear()
        os.environ.update(keep)


def _table_rows(settings) -> dict[str, list[tuple]]:
    """Feature rows per partition, read through pyiceberg at the current snapshot."""
    from rayorch import open_table

    table = open_table(CONFIG, "features", settings=settings)
    df = table.scan().to_pandas()
    out: dict[str, list[tuple]] = {}
    for (city, day), g in df.groupby(["city", "date"]):
        out[f"city={city}/date={day}"] = sorted(
            map(tuple, g.drop(columns=["city", "date"]).astype(str).to_numpy().tolist())
        )
    return out


@pytest.fixture(scope="module")
def topo(dev, tmp_path_factory):
    """The exports a user sources, a submitter home, and raw data in S3 for both windows."""
    home, state, _ = dev
    submitter = tmp_path_factory.mktemp("submitter") / "home"
    env = _topology_env(state, submitter)
    r = subprocess.run([sys.executable, "-m", "rayorch.cli.app", "data", "generate", "-c", CONFIG,
                        "--start", "2026-10-01", "--end", DAY_B, "--json"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["root"] == "s3://rayorch-dev/rayorch/data/raw/fraud"
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient({s["name"]: s["url"] for s in state["services"]}["ray-head"])
    return {"home": home, "state": state, "env": env, "submitter": submitter, "client": client}


def test_job_submit_runs_the_backfill_across_the_nodes_and_survives_a_lost_node(topo):
    """`ray job submit` runs features and training on the worker nodes; the raylet of the node
    running the training worker is SIGKILLed after its first checkpoint; the unit resumes from
    that checkpoint on the other node and the backfill SUCCEEDS. State lands in PostgreSQL, S3
    and the tracking server."""
    import psutil
    from ray.util.state import list_actors

    env, state, client = topo["env"], topo["state"], topo["client"]
    urls = {s["name"]: s["url"] for s in state["services"]}
    workers = {s["pid"]: s["name"] for s in state["services"] if s["name"].startswith("ray-w")}
    s3 = _s3(env)
    sid = _submit(env, DAY_A)
    first = _wait_until(
        lambda: _checkpoints(s3, DAY_A), "the first training checkpoint", job=(client, sid)
    )

    def train_worker():
        for a in list_actors(address=urls["ray-head"], filters=[("state", "=", "ALIVE")]):
            if "RayTrainWorker" in a.class_name:
                return a
        return None

    actor = _wait_until(train_worker, "the training worker actor", job=(client, sid))
    raylet = psutil.Process(actor.pid).parent()
    assert raylet.name() == "raylet"
    node = workers[os.getpgid(raylet.pid)]  # a worker node: the head takes no work
    # More checkpoints since the first are fine (faster training); the final one is not: then
    # there is nothing left to resume and the kill would test nothing.
    now, status = _checkpoints(s3, DAY_A), client.get_job_status(sid).value
    if any("_final" in c for c in now | first) or status != "RUNNING":
        pytest.fail(
            f"training finished before the node could be killed (job {status}, checkpoints "
            f"{sorted(now)}): make it longer"
        )
    os.kill(raylet.pid, signal.SIGKILL)
    # Around a SIGKILLed raylet the checkpoint on storage and the one Train registered can differ
    # by one: the worker may finish an upload after the kill (resume from a step newer than this
    # listing), or an upload listed here may never have been reported (resume from the previous
    # one). Either way it resumes from a real checkpoint, never from step 0.
    at_kill = _checkpoints(s3, DAY_A)
    assert _finished(client, sid) == "SUCCEEDED", client.get_job_logs(sid)[-5000:]
    s = _summary(client, sid)
    assert s["state"] == "SUCCEEDED" and s["exit_code"] == 0 and s["not_done"] == []
    assert s["counts"]["done"] == 7
    (trained,) = s["trained"]
    steps = {int(c.split("_")[1][1:]) for c in at_kill}
    resumed = trained["training"]["resumed_from_step"]
    assert 0 < min(steps) <= resumed < 72, (node, steps, resumed)
    assert trained["training"]["restarts"] >= 1 and trained["training"]["step"] == 72
    assert trained["training"]["last_checkpoint"]["path"].startswith("s3://rayorch-dev/")
    # The ledger and the catalog are in PostgreSQL; every data file is in S3.
    settings = _settings(env, topo["submitter"])
    assert settings.db_url.startswith("postgresql://")
    from rayorch import open_ledger

    ledger = open_ledger(settings)
    try:
        units = ledger.get_units(ledger.backfill_run_keys(s["backfill_id"]))
    finally:
        ledger.close()
    assert {u.state.value for u in units.values()} == {"DONE"} and len(units) == 7
    from rayorch import open_table

    files = [t.file.file_path for t in open_table(CONFIG, settings=settings).scan().plan_files()]
    assert files and all(f.startswith("s3://rayorch-dev/rayorch/") for f in files)
    listed = _cli(topo["submitter"], "tables", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    (tab,) = [t for t in json.loads(listed.stdout)["tables"] if "features" in t["identifier"]]
    assert tab["catalog_uri"].startswith("postgresql") and tab["location"].startswith("s3://")
    # The model version is on the tracking server, its artifacts in S3.
    import mlflow

    mc = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    versions = mc.search_model_versions("name='fraud-detector'")
    assert [v.version for v in versions] == [trained["model_version"]] == ["1"]
    assert _keys(s3, "mlflow/"), "no MLflow artifact in S3"
    topo["result_a"] = (s, _table_rows(settings))


def test_a_stopped_then_killed_driver_is_resumed_by_resubmitting_the_same_job(topo):
    """`ray job stop` (its REST call) mid-training, then SIGKILL of the resubmitted job's driver process: each
    resubmission of the same arguments resumes (committed units stay, training continues from
    its checkpoint), the last one SUCCEEDS; one more resubmission (a KubeRay retry) runs
    nothing and registers nothing."""
    env, client = topo["env"], topo["client"]
    s3 = _s3(env)
    sid = _submit(env, DAY_B)
    _wait_until(lambda: _checkpoints(s3, DAY_B), "a checkpoint of window B", job=(client, sid))
    # What `ray job stop` sends (the job server's stop endpoint), without the CLI's seconds of
    # start-up (the config's training takes >= 4.5 s per epoch, so the stop lands mid-run).
    assert client.stop_job(sid)
    assert _finished(client, sid) == "STOPPED"
    seen = _checkpoints(s3, DAY_B)
    if any("_final_" in c for c in seen):
        pytest.fail(f"training finished before the stop landed ({sorted(seen)}): make it longer")
    sid2 = _submit(env, DAY_B)
    _wait_until(lambda: _checkpoints(s3, DAY_B) - seen, "a checkpoint after the resubmission",
                job=(client, sid2))  # fmt: skip
    pid = _wait_until(
        lambda: client.get_job_info(sid2).driver_info or None, "driver", job=(client, sid2)
    ).pid
    os.kill(int(pid), signal.SIGKILL)
    assert _finished(client, sid2) == "FAILED"
    seen2 = _checkpoints(s3, DAY_B)
    sid3 = _submit(env, DAY_B)
    assert _finished(client, sid3) == "SUCCEEDED", client.get_job_logs(sid3)[-5000:]
    s = _summary(client, sid3)
    assert s["state"] == "SUCCEEDED" and s["resumed"] and s["took_over_from"], s
    # Window B's features (its day and, for the 2-day training window, window A's day) were
    # committed before training began: kept, not re-run; only training ran to its end.
    assert (s["counts"]["skipped_done"], s["counts"]["done"]) == (6, 1), s["counts"]
    (trained,) = s["trained"]
    resumed_steps = {int(c.split("_")[1][1:]) for c in seen2}
    assert trained["training"]["resumed_from_step"] in resumed_steps, trained["training"]
    import mlflow

    mc = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    before = sorted(v.version for v in mc.search_model_versions("name='fraud-detector'"))
    assert before == ["1", "2"]  # one version per training day, none from the stopped attempts
    sid4 = _submit(env, DAY_B)  # the same job again, as a KubeRay retry would submit it
    assert _finished(client, sid4) == "SUCCEEDED"
    again = _summary(client, sid4)
    assert again["counts"]["done"] == 0 and again["counts"]["skipped_done"] == 7, again["counts"]
    assert sorted(v.version for v in mc.search_model_versions("name='fraud-detector'")) == before


def test_nothing_was_written_to_a_node_or_the_submitter_home(topo):
    """Every node's RAYORCH_HOME and working directory and the submitter's home hold no
    rayorch state: ledger, catalog, data, checkpoints and MLflow all went to the services."""
    nodes = Path(topo["home"]) / "dev" / "nodes"
    written = [p for p in nodes.rglob("*") if p.is_file()]
    if topo["submitter"].exists():
        written += [p for p in topo["submitter"].rglob("*") if p.is_file()]
    assert written == []
    assert sorted(p.name for p in nodes.iterdir()) == ["ray-head", "ray-worker-1", "ray-worker-2"]


def test_the_result_equals_embedded_mode(topo, tmp_path):
    """The same inputs backfilled embedded (one process, SQLite, local files): the same rows in
    every partition, and training metrics within tolerance of the run that lost a node."""
    assert "result_a" in topo, "the end-to-end run above did not complete"
    summary, rows = topo["result_a"]
    home = tmp_path / "embedded"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAYORCH_", "AWS_", "MLFLOW_")) and k != "RAY_ADDRESS"}  # fmt: skip
    env.update(RAYORCH_HOME=str(home), PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    for args in (("data", "generate", "-c", CONFIG, "--start", "2026-10-01", "--end", DAY_A),
                 ("backfill", "-c", CONFIG, "--start", DAY_A, "--end", DAY_A, "--json")):  # fmt: skip
        r = subprocess.run([sys.executable, "-m", "rayorch.cli.app", *args], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    embedded = json.loads(r.stdout)
    assert embedded["state"] == "SUCCEEDED"
    local_rows = _table_rows(_settings(env, home))
    assert sorted(local_rows) == sorted(rows) and len(rows) == 6
    for part, want in local_rows.items():
        assert rows[part] == want, part
    (a,), (b,) = summary["trained"], embedded["trained"]
    for metric in ("val_auc", "val_loss", "train_loss"):
        assert a["metrics"][metric] == pytest.approx(b["metrics"][metric], abs=0.02), metric
