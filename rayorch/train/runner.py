"""Run one training unit with Ray Train over its window pinned to one snapshot of the
feature table, tracked in MLflow (table, snapshot id and every data file read).

Called inside a Ray task by the executor. The Ray Train run is named from the unit's run key
and generation, so a resumed unit (new driver, retried job attempt) continues from its newest
registered checkpoint, and the MLflow run is found again by tag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from rayorch.data import storage
from rayorch.data.reader import Window, pin_window, split_window
from rayorch.data.storage import read_parquet
from rayorch.data.tables import StepTable
from rayorch.errors import DataNotReadyError
from rayorch.lineage.tracking import TAG_DATASET_DIGEST, Tracker, dataset_digest
from rayorch.partitions import PartitionKey
from rayorch.results import Trained, Yielded
from rayorch.settings import Settings
from rayorch.spec import PipelineSpec
from rayorch.train.control import RunFiles
from rayorch.train.session import MODEL_FILE, run_user_loop

NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True, slots=True)
class TrainTarget:
    """What one training unit trains: its run key, as-of day and the feature partitions of
    its window (the training layer's own type; the planner's ``Unit`` stays above)."""

    run_key: str
    day: dt.date
    inputs: tuple[PartitionKey, ...]
    snapshot_id: int | None = None  # read the window at this snapshot (reproduce); else current


@dataclass(frozen=True, slots=True)
class TrainRequest:
    spec: PipelineSpec
    settings: Settings
    unit: TrainTarget
    token: int
    generation: int  # commits of this unit so far; a re-run after DONE is a new generation
    env: Any = None  # rayorch.env.fingerprint.EnvContext: every worker fingerprints and guards
    reproduces: str | None = None  # MLflow run id: a NEW run linked to it (rayorch reproduce)


def train_run_name(run_key: str, generation: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_key)[:80]
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    return f"{safe}-{digest}-g{generation}"


def collect_inputs(spec: PipelineSpec, settings: Settings, unit: TrainTarget) -> Window:
    """The window pinned to one snapshot (the current one, or the unit's); refuse a window
    with too many partitions missing from that snapshot."""
    window = pin_window(StepTable.for_spec(spec, settings), unit.inputs, unit.snapshot_id)
    missing = list(window.missing)
    assert spec.train is not None
    needed = spec.freshness.min_ready_fraction
    have = len(window.partitions) / max(len(unit.inputs), 1)
    if missing and have < needed:
        raise DataNotReadyError(
            f"{unit.run_key}: {len(missing)} of {len(unit.inputs)} feature partitions in the "
            f"training window are not committed in {window.table}: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
            + f" (freshness.min_ready_fraction={needed})",
            run_key=unit.run_key,
            missing=missing,
        )
    return window


def exclude_nodes_selector(nodes: list[str]) -> dict[str, str] | None:
    """A Ray label selector that keeps workers off the given nodes (straggler restarts)."""
    return {NODE_ID_LABEL: f"!in({','.join(sorted(nodes))})"} if nodes else None


def run_train_unit(req: TrainRequest, placement: dict[str, Any] | None = None) -> Trained | Yielded:
    """Train (or resume) the unit. Registers nothing and leaves its MLflow run RUNNING: the
    driver commits the result (fenced), then :func:`publish_trained` registers and ends it."""
    with storage.using(req.settings):
        return _run_train_unit(req, placement)


def _run_train_unit(req: TrainRequest, placement: dict[str, Any] | None) -> Trained | Yielded:
    import ray.data
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    spec, settings, unit = req.spec, req.settings, req.unit
    tspec = spec.train
    assert tspec is not None
    window = collect_inputs(spec, settings, unit)
    digest = dataset_digest(window)
    files = window.files
    tracker = Tracker(settings.mlflow_uri, artifact_root=settings.artifact_root)
    params = {
        "run_key": unit.run_key,
        "as_of": unit.day.isoformat(),
        "window_days": tspec.window_days,
        "epochs": tspec.epochs,
        "batch_size": tspec.batch_size,
        "learning_rate": tspec.learning_rate,
        "num_workers": tspec.scaling.num_workers,
        "partitions": len(window.partitions),
        "rows": window.rows,
        "table": window.table,
        "snapshot_id": window.snapshot_id,
        "config_fingerprint": spec.fingerprint(),
    }
    run_id, resumed = tracker.start_unit_run(
        f"rayorch/{spec.name}",
        unit.run_key,
        req.generation,
        params,
        {"rayorch.pipeline": spec.name, "rayorch.token": str(req.token)},
        reproduces=req.reproduces,
    )
    if not resumed:
        tracker.log_dataset(run_id, f"{spec.name}-features", window, digest)
        tracker.log_config(run_id, spec)
    columns = [*tspec.feature_columns, tspec.label]
    # Same batches in the same order on every attempt, so a resume mid-epoch skips exactly the
    # batches the checkpoint already covers.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # Exactly the data files of the pinned snapshot (immutable, committed by construction).
    train_ds, val_ds = split_window(
        window,
        columns,
        test_size=tspec.validation_fraction,
        seed=tspec.seed,
        in_task_max_bytes=int(tspec.split_in_task_max_mb * 2**20),
    )
    ckpt_root = settings.resolve(tspec.checkpoint.storage_path)
    if not storage.is_remote(ckpt_root):
        os.makedirs(ckpt_root, exist_ok=True)
    run_name = train_run_name(unit.run_key, req.generation)
    if req.reproduces:  # never resume from the original's checkpoints
        run_name += f"-repro-{run_id[:8]}"
    files_ = RunFiles(ckpt_root, run_name)
    # The settings' filesystem (credentials, S3-compatible endpoint), not pyarrow's guess from
    # the URI and this process's environment: workers on other nodes write the same store.
    storage_fs, storage_path = storage.filesystem_for(ckpt_root, settings)
    asked = files_.yield_requested_by()
    if asked is not None and asked < req.token:
        files_.clear_yield()  # a flag for an earlier attempt of this unit
    sc = tspec.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.gpus_per_worker:
        resources["GPU"] = sc.gpus_per_worker
    loop_config: dict[str, Any] = {
        "run_key": unit.run_key,
        "entrypoint": tspec.entrypoint,
        "storage": ckpt_root,
        "run_name": run_name,
        "token": req.token,
        "mlflow_uri": settings.mlflow_uri,
        "mlflow_run_id": run_id,
        "feature_columns": list(tspec.feature_columns),
        "label": tspec.label,
        "epochs": tspec.epochs,
        "batch_size": tspec.batch_size,
        "learning_rate": tspec.learning_rate,
        "seed": tspec.seed,
        "checkpoint": tspec.checkpoint.model_dump(mode="json"),
        "stragglers": tspec.stragglers.model_dump(mode="json"),
        "log_every_steps": tspec.log_every_steps,
        "params": dict(tspec.params),
        "straggler_restarts": 0,
        "env": req.env.to_dict() if req.env is not None else None,
    }
    excluded: list[str] = []
    while True:
        # Under the scheduler, `placement` pins each worker to its planned node; a straggler
        # restart moves off the excluded nodes instead.
        where = {**(placement or {})}
        if excluded or "label_selector" not in where:
            where["label_selector"] = exclude_nodes_selector(excluded)
        scaling = ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.gpus_per_worker > 0,
            resources_per_worker=resources,
            **where,
        )
        trainer = TorchTrainer(
            train_loop_per_worker=run_user_loop,
            train_loop_config={"rayorch": loop_config},
            scaling_config=scaling,
            torch_config=TorchConfig(backend=tspec.torch_backend) if tspec.torch_backend else None,
            run_config=ray.train.RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=ray.train.FailureConfig(max_failures=tspec.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=tspec.checkpoint.num_to_keep
                ),
            ),
            datasets={"train": train_ds, "val": val_ds},
        )
        try:
            result = trainer.fit()
        except Exception:
            tracker.finish(run_id, "FAILED")
            raise
        progress = files_.read_progress() or {}
        status = progress.get("status")
        if status == "restart_without_stragglers":
            excluded = list(progress.get("excluded_nodes", []))
            loop_config["straggler_restarts"] += 1
            continue
        break
    training = {
        k: progress.get(k)
        for k in ("restarts", "resumed_from_step", "step", "epoch", "stragglers", "last_checkpoint")
    }
    training["excluded_nodes"] = excluded
    if status == "yielded":
        tracker.finish(run_id, "KILLED")
        return Yielded(run_id, _checkpoint_uri(result.checkpoint), training)
    if result.checkpoint is None:
        tracker.finish(run_id, "FAILED")
        raise RuntimeError(f"{unit.run_key}: training produced no checkpoint")
    files_.write_progress({**progress, "status": "finished"})
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return Trained(
        run_id,
        _checkpoint_uri(result.checkpoint),
        digest,
        metrics,
        tuple(p.partition for p in window.partitions),
        training,
        spec.registry.model_name if spec.registry else None,
        files[0] if files else None,
    )


def _train_task(req: TrainRequest, placement: dict[str, Any] | None = None) -> Trained | Yielded:
    return run_train_unit(req, placement=placement)


def submit_training(req: TrainRequest, task_options: dict[str, Any] | None = None) -> Trained:
    """Run one training request as a zero-CPU Ray task and wait for it (``rayorch
    reproduce``: a NEW linked run, nothing registered); its MLflow run is ended here."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_train_task)
    result = ray.get(task.options(**(task_options or {})).remote(req))
    if not isinstance(result, Trained):
        raise RuntimeError(f"{req.unit.run_key}: training stopped before the end ({result})")
    Tracker(req.settings.mlflow_uri).finish(result.mlflow_run_id)
    return result


def publish_trained(req: TrainRequest, result: Trained) -> dict[str, Any]:
    """After the fenced commit: register the model version (once per MLflow run) and end the
    run FINISHED. Idempotent, so a resume rolls an interrupted publish forward."""
    import ray.train
    import torch

    spec, settings = req.spec, req.settings
    tracker = Tracker(settings.mlflow_uri, artifact_root=settings.artifact_root)
    extra: dict[str, Any] = {"model_version": None, "artifact_digest": None}
    if spec.registry is not None and spec.train is not None:
        ckpt_fs, ckpt_path = storage.filesystem_for(result.checkpoint, settings)
        ckpt = ray.train.Checkpoint(ckpt_path, filesystem=ckpt_fs)
        with ckpt.as_directory() as d:
            model = torch.load(os.path.join(d, MODEL_FILE), weights_only=False)
        example = (
            _input_example(result.sample_file, list(spec.train.feature_columns), settings)
            if result.sample_file
            else None
        )
        version, digest = tracker.register_model(
            result.mlflow_run_id,
            model,
            spec.registry.model_name,
            {
                "rayorch.run_key": req.unit.run_key,
                "rayorch.token": str(req.token),
                TAG_DATASET_DIGEST: result.dataset_digest,
            },
            input_example=example,
        )
        extra = {"model_version": version, "artifact_digest": digest}
    tracker.finish(result.mlflow_run_id)
    return extra


def _input_example(path: str, columns: list[str], settings: Settings) -> Any:
    import numpy as np

    with storage.using(settings):
        table = read_parquet(path, columns=columns).slice(0, 2)
    return np.stack([table.column(c).to_numpy() for c in columns], axis=1).astype(np.float32)


def _checkpoint_uri(checkpoint: Any) -> str | None:
    """A Ray Train checkpoint as a location another process can open (``s3://…`` on S3:
    ``Checkpoint.path`` alone is relative to its filesystem)."""
    if checkpoint is None:
        return None
    return storage.to_uri(checkpoint.filesystem, checkpoint.path)
