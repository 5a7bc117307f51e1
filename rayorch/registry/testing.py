"""Build a real local MLflow registry with model versions, for tests and benchmarks.

Versions are registered the way training registers them (``Tracker.register_model``: a logged
torch model, ``rayorch.artifact_digest`` tag) or, when many are needed quickly, as further
versions of an already-logged model with their own runs and metrics. Nothing here is a fake:
it is MLflow on SQLite with local artifacts, or a real tracking server when given its URI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

GOOD = {"train_loss": 0.30, "val_loss": 0.33, "val_auc": 0.91}
GAP = {"train_loss": 0.30, "val_loss": 2.10, "val_auc": 0.90}  # the duplicate-rows model


@dataclass(frozen=True, slots=True)
class MadeVersion:
    version: str
    run_id: str
    artifact_digest: str | None
    model_uri: str | None


def tracking_uri_for(root: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(root), 'mlflow.db')}"


class RegistryBuilder:
    def __init__(
        self, root: str, experiment: str = "registry-tests", uri: str | None = None
    ) -> None:
        from rayorch.lineage.tracking import Tracker

        self.root = os.path.abspath(root)
        self.uri = uri or tracking_uri_for(root)
        self.tracker = Tracker(self.uri, artifact_root=os.path.join(self.root, "artifacts"))
        self.client = self.tracker.client
        self.experiment_id = self.tracker.experiment_id(experiment)

    def _run(self, metrics: dict[str, float], with_dataset: bool, seed: int) -> str:
        run_id = self.client.create_run(self.experiment_id).info.run_id
        for k, v in metrics.items():
            self.client.log_metric(run_id, k, v)
        if with_dataset:  # a validated training input, as training records it (public API)
            from mlflow.entities import Dataset, DatasetInput, InputTag

            digest = f"{seed + 1:064x}"
            source = {"table": "features", "partition": f"city=SF/date=2026-10-{seed % 28 + 1:02d}"}
            entity = Dataset(
                name="features", digest=digest[:32], source_type="iceberg",
                source=json.dumps(source),
            )  # fmt: skip
            tag = InputTag("mlflow.data.context", "training")
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[tag])])
        return run_id

    def trained(
        self,
        model: str,
        metrics: dict[str, float] = GOOD,
        *,
        with_dataset: bool = True,
        seed: int = 0,
    ) -> MadeVersion:
        """A version registered as training registers it: a logged torch model and digests."""
        import numpy as np
        import torch

        run_id = self._run(metrics, with_dataset, seed)
        torch.manual_seed(seed)
        net = torch.nn.Linear(3, 1)
        version, digest = self.tracker.register_model(
            run_id, net, model, {}, input_example=np.zeros((1, 3), dtype=np.float32)
        )
        self.tracker.finish(run_id)
        uri = self.client.get_model_version(model, version).source
        return MadeVersion(version, run_id, digest, uri)

    def logged(
        self,
        model: str,
        metrics: dict[str, float] = GOOD,
        *,
        with_dataset: bool = True,
        seed: int = 0,
    ) -> MadeVersion:
        """A version whose artifact is a small model directory logged to its own run: fast.

        Distinct seeds give distinct artifacts (and digests); the digest is computed and tagged
        exactly as ``Tracker.register_model`` does it.
        """
        import tempfile

        run_id = self._run(metrics, with_dataset, seed)
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "model")
            os.makedirs(d)
            with open(os.path.join(d, "MLmodel"), "w") as f:
                f.write(f"artifact_path: model\nflavors: {{}}\nrun_id: {run_id}\n")
            with open(os.path.join(d, "weights.bin"), "wb") as f:
                f.write(seed.to_bytes(8, "big") * 64)
            self.client.log_artifacts(run_id, d, "model")
        source = f"runs:/{run_id}/model"
        try:
            self.client.get_registered_model(model)
        except Exception:
            self.client.create_registered_model(model)
        mv = self.client.create_model_version(model, source, run_id=run_id)
        digest = self.tracker.artifact_digest(source)
        self.client.set_model_version_tag(model, mv.version, "rayorch.artifact_digest", digest)
        self.tracker.finish(run_id)
        return MadeVersion(str(mv.version), run_id, digest, source)


# --- a real tracking server, for tests and benchmarks ----------------------------------------
def fresh_database(admin_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``admin_url``; its URL."""
    from sqlalchemy import create_engine, text

    base, _, _ = admin_url.rpartition("/")
    eng = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        eng.dispose()
    return f"{base}/{name}"


#: uvicorn worker processes of ``mlflow server``: one. With ``--workers`` > 1 uvicorn binds the
#: listening socket itself (``socket.socket(family=...)``, proto 0), so asyncio never sets
#: TCP_NODELAY on accepted connections and every response, written as headers then body, waits
#: out the client's delayed ACK: measured here 60-68 ms a REST call with 2 or 3 workers against
#: 15 ms with 1 (GET and POST of an alias, same server CPU). One worker is the faster setting on
#: this 2-core machine; more processes need a front that sets TCP_NODELAY.
SERVER_WORKERS = 1
#: MLflow's job runner and its seven huey consumers poll for GenAI jobs rayorch never submits
#: (several % of a core each, constantly): off.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
#: uvicorn kills a worker that does not answer its supervisor's ping within 5 s, and a worker
#: restarted on a loaded 2-core machine takes longer than that to import MLflow: without a longer
#: grace the workers are killed and restarted for ever (seen here: "Child process [...] died").
SERVER_UVICORN_OPTS = "--timeout-worker-healthcheck 120"


def server_command(backend: str, artifacts: Path, port: int, workers: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend.replace("postgresql://", "postgresql+psycopg://", 1),
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    if workers > 1:
        cmd += ["--uvicorn-opts", SERVER_UVICORN_OPTS]
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mlflow_server(
    backend: str, artifacts: Path, log: Path, workers: int = SERVER_WORKERS
) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` in its own process group; returns it once /health answers.

    Served as a deployment would be (see ``SERVER_WORKERS``, ``server_command``).
    """
    port = free_port()
    proc = subprocess.Popen(
        server_command(backend, artifacts, port, workers),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **SERVER_ENV},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_process_group(proc)
    raise RuntimeError(f"mlflow server did not answer in 120 s: {log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the group this test started (the server and its workers), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
