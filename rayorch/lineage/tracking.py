"""MLflow tracking behind a narrow interface: one run per training unit, resumable.

The run for a unit is found again by its ``rayorch.run_key`` tag and generation, so a resumed
unit continues the same MLflow run instead of opening a second one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from rayorch.data.reader import Window

TAG_RUN_KEY = "rayorch.run_key"
TAG_GENERATION = "rayorch.generation"
TAG_DATASET_DIGEST = "rayorch.dataset_digest"
TAG_REPRODUCES = "rayorch.reproduces"
TAG_CONFIG_FINGERPRINT = "rayorch.config_fingerprint"
TAG_TABLE = "rayorch.table"
TAG_SNAPSHOT = "rayorch.snapshot_id"  # the snapshot a run read (kept by snapshot expiry)
CONFIG_ARTIFACT_DIR = "config"
CONFIG_ARTIFACT = f"{CONFIG_ARTIFACT_DIR}/pipeline.yaml"
DATASET_ARTIFACT = "dataset_manifest.json"


_READY_STORES: set[str] = set()


def ensure_tracking_store(uri: str) -> None:
    """Create (or upgrade) a local MLflow SQLite store once, under an inter-process lock.

    MLflow runs its schema migrations when a process first opens a store; two processes
    opening a fresh SQLite file at once race in them (``duplicate column name``, alembic's
    ``expected to match one row``). The first process to take the lock migrates; the others
    wait and then find the schema current. Servers and PostgreSQL stores need no lock here.
    """
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        return
    import fcntl

    from mlflow.tracking import MlflowClient

    path = uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(f"{path}.init-lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY_STORES.add(uri)


def mlflow_client(uri: str, *, registry: bool = False) -> Any:
    """The one way rayorch opens MLflow: the store is made ready first (see above)."""
    from mlflow.tracking import MlflowClient

    ensure_tracking_store(uri)
    if registry:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    return MlflowClient(tracking_uri=uri)


def dataset_digest(window: Window) -> str:
    """Digest over the full content of every partition read (sorted), not a sample."""
    return window.digest


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: str | None = None) -> None:
        self.uri = tracking_uri
        self.artifact_root = artifact_root
        self.client = mlflow_client(tracking_uri)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.artifact_root and self.uri.startswith("sqlite"):
            if "://" in self.artifact_root:  # s3:// (RAYORCH_STORAGE_URL): MLflow writes there
                location = self.artifact_root
            else:
                os.makedirs(self.artifact_root, exist_ok=True)
                location = f"file://{os.path.abspath(self.artifact_root)}"
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            exp = self.client.get_experiment_by_name(name)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    def find_run(self, experiment_id: str, run_key: str, generation: int) -> str | None:
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_RUN_KEY}` = '{run_key}' and "
            f"tags.`{TAG_GENERATION}` = '{generation}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_or_resume(
        self,
        experiment: str,
        run_key: str,
        generation: int,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> tuple[str, bool]:
        """Return (run_id, resumed). Params are logged once, on creation."""
        exp_id = self.experiment_id(experiment)
        found = self.find_run(exp_id, run_key, generation)
        if found is not None:
            if self.client.get_run(found).info.status != "RUNNING":
                self.client.update_run(found, status="RUNNING")
            return found, True
        run = self.client.create_run(
            exp_id,
            run_name=run_key.replace("/", "."),
            tags={TAG_RUN_KEY: run_key, TAG_GENERATION: str(generation), **tags},
        )
        from mlflow.entities import Param

        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        )
        return run.info.run_id, False

    def start_unit_run(
        self,
        experiment: str,
        run_key: str,
        generation: int,
        params: dict[str, Any],
        tags: dict[str, str],
        *,
        reproduces: str | None = None,
    ) -> tuple[str, bool]:
        """Find-or-resume the unit's run; with ``reproduces`` always a NEW run linked to it.

        A reproduction carries its own generation tag (``reproduce-<id>``), so a later resume
        of the unit never finds it instead of the unit's own run.
        """
        if reproduces is None:
            return self.start_or_resume(experiment, run_key, generation, params, tags)
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id(experiment),
            run_name=run_key.replace("/", ".") + ".reproduce",
            tags={
                TAG_RUN_KEY: run_key,
                TAG_GENERATION: f"reproduce-{reproduces}",
                TAG_REPRODUCES: reproduces,
                **tags,
            },
        )
        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        )
        return run.info.run_id, False

    def log_config(self, run_id: str, spec: Any) -> None:
        """The effective pipeline config, so `rayorch reproduce` can re-run the unit."""
        import yaml

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pipeline.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), f, sort_keys=False)
            self.client.log_artifact(run_id, path, CONFIG_ARTIFACT_DIR)
        self.client.set_tag(run_id, TAG_CONFIG_FINGERPRINT, spec.fingerprint())

    def read_artifact(self, run_id: str, path: str) -> str | None:
        """Text of one artifact of a run, or None when the run has no such artifact."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=self.uri
                )
            except Exception as e:
                if "RESOURCE_DOES_NOT_EXIST" in str(e) or "No such file" in str(e):
                    return None
                if not os.path.exists(os.path.join(tmp, path)):
                    return None
                raise
            with open(local) as f:
                return f.read()

    def log_dataset(self, run_id: str, name: str, window: Window, digest: str) -> None:
        """Record exactly what was read: the table, its snapshot id and every data file, as
        an artifact and as the run's dataset input (an Iceberg source)."""
        from mlflow.entities import Dataset as DatasetEntity
        from mlflow.entities import DatasetInput, InputTag

        payload = {**window.to_dict(), "digest": digest}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, DATASET_ARTIFACT)
            with open(path, "w") as f:
                json.dump(payload, f, indent=1)
            self.client.log_artifact(run_id, path)
        source = {"table": window.table, "snapshot_id": window.snapshot_id, "files": window.files}
        text = json.dumps(source)
        if len(text) > 60000:  # MLflow's limit; the artifact keeps every file
            text = json.dumps({**source, "files": None, "files_in": DATASET_ARTIFACT})
        entity = DatasetEntity(
            name=name,
            digest=digest[:32],  # MLflow caps digests at 36 chars; the tag has all 64
            source_type="iceberg",
            source=text,
            profile=json.dumps(
                {
                    "num_rows": window.rows,
                    "num_partitions": len(window.partitions),
                    "num_files": len(window.files),
                    "catalog_uri": window.catalog_uri,
                }
            ),
        )
        self.client.log_inputs(
            run_id,
            datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "training")])],
        )
        self.client.set_tag(run_id, TAG_DATASET_DIGEST, digest)
        self.client.set_tag(run_id, TAG_TABLE, window.table)
        self.client.set_tag(run_id, TAG_SNAPSHOT, str(window.snapshot_id))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def register_model(
        self,
        run_id: str,
        model: Any,
        model_name: str,
        tags: dict[str, str],
        input_example: Any = None,
    ) -> tuple[str, str]:
        """Log the model on the run and register it once. Returns (version, artifact digest)."""
        import mlflow
        import mlflow.pytorch

        existing = self.client.search_model_versions(f"run_id = '{run_id}'")
        existing = [v for v in existing if v.name == model_name]
        if existing:
            v = existing[0]
            return str(v.version), v.tags.get("rayorch.artifact_digest", "")
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                registered_model_name=model_name,
                input_example=input_example,
                # Stated, not inferred: MLflow's inference imports the model in a subprocess
                # (seconds per registration); the full environment is recorded by its
                # fingerprint on the run.
                pip_requirements=model_requirements(),
            )
        version = str(info.registered_model_version)
        digest = self.artifact_digest(info.model_uri)
        for k, v in {**tags, "rayorch.artifact_digest": digest}.items():
            self.client.set_model_version_tag(model_name, version, k, v)
        return version, digest

    def artifact_digest(self, model_uri: str) -> str:
        """sha256 over every file of a logged model (relative path + bytes), sorted."""
        import mlflow.artifacts

        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tmp, tracking_uri=self.uri
            )
            return directory_digest(local)


def model_requirements() -> list[str]:
    """What loading a logged model needs: torch and numpy at this environment's versions
    (without a local build tag such as ``+cpu``: the same model loads on a GPU build)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "numpy")]


def directory_digest(root: str) -> str:
    """sha256 over every file under ``root`` (relative path + bytes), sorted.

    MLflow's download marker ``registered_model_meta`` at the root is left out: MLflow writes
    it into every model directory it downloads (naming the registered model, or null), so it
    says how a copy was fetched, not what the model is; a copy taken straight from the
    artifact store has none. Leaving it out gives every copy of one model one digest.
    """
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if rel == "registered_model_meta":
                continue
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def registered_snapshots(uri: str, model_name: str) -> set[int]:
    """Feature-table snapshots read by the runs a registered model version came from (what
    snapshot expiry must keep so ``rayorch reproduce`` still finds their data)."""
    client = mlflow_client(uri, registry=True)
    out: set[int] = set()
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except Exception:  # no such registered model yet
        return out
    for mv in versions:
        if not mv.run_id:
            continue
        tag = client.get_run(mv.run_id).data.tags.get(TAG_SNAPSHOT)
        if tag and tag.lstrip("-").isdigit():
            out.add(int(tag))
    return out
