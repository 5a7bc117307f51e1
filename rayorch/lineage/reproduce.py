"""`rayorch reproduce`: compare a recorded run with the present, and re-run it when nothing moved.

Everything a run recorded comes from its MLflow artifacts: ``config/pipeline.yaml`` (the
effective config), ``dataset_manifest.json`` (the feature table, the snapshot id it read and
every data file, per partition) and ``environment/fingerprint.json`` (from the rank-0 Ray
Train worker). The data check compares those partitions with the table's current snapshot:
metadata only, never a data scan. The environment check fingerprints a Ray worker started
with the pipeline's runtime_env (what a re-run would get), or this process with ``local_env``.

A re-run reads the recorded snapshot (time travel), so it reproduces the run even after its
partitions were reprocessed; only a changed environment or code stops it. A snapshot that was
expired is reported as gone, plainly.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import yaml

from rayorch.data.reader import pin_window
from rayorch.data.tables import StepTable
from rayorch.env.diff import diff_fingerprints
from rayorch.env.fingerprint import EnvContext, Fingerprint, capture
from rayorch.env.worker import FINGERPRINT_ARTIFACT
from rayorch.errors import NotFoundError
from rayorch.lineage.compare import (
    CurrentPartition,
    ReproduceCheck,
    compare_metrics,
    compare_partitions,
)
from rayorch.lineage.tracking import (
    CONFIG_ARTIFACT,
    DATASET_ARTIFACT,
    TAG_GENERATION,
    TAG_REPRODUCES,
    TAG_RUN_KEY,
    Tracker,
)
from rayorch.partitions import PartitionKey
from rayorch.settings import Settings, load_settings
from rayorch.spec import PipelineSpec, parse_pipeline


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    run_key: str
    generation: int
    as_of: str
    spec: PipelineSpec
    dataset: dict[str, Any]
    fingerprint: Fingerprint | None
    metrics: dict[str, float]

    @property
    def inputs(self) -> tuple[PartitionKey, ...]:
        """Exactly the partitions the run read (its dataset manifest)."""
        return tuple(PartitionKey.parse(p["partition"]) for p in self.dataset.get("partitions", []))

    @property
    def snapshot_id(self) -> int | None:
        """The feature-table snapshot the run read (None: recorded before Iceberg tables)."""
        sid = self.dataset.get("snapshot_id")
        return int(sid) if sid else None

    @property
    def files(self) -> list[str]:
        return [f["path"] for p in self.dataset.get("partitions", []) for f in p.get("files", [])]


def tracker_for(settings: Settings) -> Tracker:
    return Tracker(settings.mlflow_uri, artifact_root=settings.artifact_root)


def load_run(tracker: Tracker, run_id: str) -> RunRecord:
    try:
        run = tracker.client.get_run(run_id)
    except Exception as e:
        raise NotFoundError(
            f"no MLflow run {run_id!r} at {tracker.uri} (set MLFLOW_TRACKING_URI / RAYORCH_HOME)",
            run_id=run_id,
        ) from e
    tags = run.data.tags
    config = tracker.read_artifact(run_id, CONFIG_ARTIFACT)
    dataset = tracker.read_artifact(run_id, DATASET_ARTIFACT)
    if config is None or dataset is None:
        missing = [
            n for n, v in ((CONFIG_ARTIFACT, config), (DATASET_ARTIFACT, dataset)) if v is None
        ]
        raise NotFoundError(
            f"run {run_id} lacks {', '.join(missing)}: it was not logged by a rayorch training "
            "unit (or predates config logging), so it cannot be reproduced",
            run_id=run_id,
            missing=missing,
        )
    spec = parse_pipeline(yaml.safe_load(config), source=f"run {run_id}:{CONFIG_ARTIFACT}")
    fp_text = tracker.read_artifact(run_id, FINGERPRINT_ARTIFACT)
    gen = tags.get(TAG_GENERATION, "0")
    return RunRecord(
        run_id=run_id,
        run_key=tags.get(TAG_RUN_KEY, ""),
        generation=int(gen) if gen.isdigit() else 0,
        as_of=run.data.params.get("as_of", ""),
        spec=spec,
        dataset=json.loads(dataset),
        fingerprint=Fingerprint.from_dict(json.loads(fp_text)) if fp_text else None,
        metrics={k: float(v) for k, v in run.data.metrics.items()},
    )


def current_partitions(
    spec: PipelineSpec, settings: Settings, partitions: list[str]
) -> dict[str, CurrentPartition | None]:
    """The partitions at the feature table's current snapshot (metadata only)."""
    live = StepTable.for_spec(spec, settings).live([PartitionKey.parse(p) for p in partitions])
    out: dict[str, CurrentPartition | None] = {}
    for name in partitions:
        p = live.get(name)
        out[name] = None if p is None else CurrentPartition(p.content_hash, p.rows, True)
    return out


def _capture_task(ctx: EnvContext) -> Fingerprint:
    return capture(ctx, worker="reproduce-check")


def current_fingerprint(
    spec: PipelineSpec, settings: Settings, *, local_env: bool = False
) -> Fingerprint:
    """The environment a re-run would get: a Ray worker with the pipeline's runtime_env."""
    from rayorch.env.runtime import unit_environment

    ue = unit_environment(spec, None, guard=False)
    if local_env:
        return capture(ue.context, worker="driver")
    import ray

    from rayorch.runtime import ensure_ray

    ensure_ray(settings)
    task = ray.remote(num_cpus=0, max_retries=0)(_capture_task)
    return ray.get(task.options(**ue.task_options()).remote(ue.context))


def check_record(rec: RunRecord, settings: Settings, *, local_env: bool = False) -> ReproduceCheck:
    recorded = rec.dataset.get("partitions", [])
    now = current_partitions(rec.spec, settings, [p["partition"] for p in recorded])
    changes = compare_partitions(recorded, now)
    current = pin_window(StepTable.for_spec(rec.spec, settings), rec.inputs)
    notes = []
    env = None
    if rec.fingerprint is None:
        notes.append("the run recorded no environment fingerprint; environment not compared")
    else:
        env = diff_fingerprints(
            rec.fingerprint, current_fingerprint(rec.spec, settings, local_env=local_env)
        )
    return ReproduceCheck(
        run_id=rec.run_id,
        run_key=rec.run_key,
        partitions_checked=len(recorded),
        data_changes=tuple(changes),
        env=env,
        recorded_dataset_digest=rec.dataset.get("digest"),
        current_dataset_digest=None if current.missing else current.digest,
        notes=tuple(notes),
    )


def check_run(
    run_id: str, settings: Settings | None = None, *, local_env: bool = False
) -> ReproduceCheck:
    """What differs between run ``run_id`` and the present (data and environment)."""
    st = settings or load_settings()
    return check_record(load_run(tracker_for(st), run_id), st, local_env=local_env)


def reproduce_run(
    run_id: str,
    settings: Settings | None = None,
    *,
    tolerance: float = 1e-6,
    local_env: bool = False,
) -> dict[str, Any]:
    """Check, then re-run the unit into a NEW linked MLflow run on the snapshot it read.

    The re-run uses the recorded config, the recorded table snapshot (time travel: the same
    data files even after those partitions were reprocessed) and requires the same
    environment and code; it registers no model version. Returns the check, the new run id,
    the snapshot and files read, and whether every recorded metric matches within
    ``tolerance`` (relative and absolute).
    """

    from rayorch.env.runtime import unit_environment
    from rayorch.runtime import ensure_ray
    from rayorch.train.runner import TrainRequest, TrainTarget, submit_training

    st = settings or load_settings()
    tracker = tracker_for(st)
    rec = load_run(tracker, run_id)
    chk = check_record(rec, st, local_env=local_env)
    doc: dict[str, Any] = {"check": chk.to_dict(), "reran": False}
    env_ok = chk.env is not None and chk.env.equal and not chk.code_changed
    if not env_ok or (chk.data_changes and rec.snapshot_id is None):
        return doc  # a changed environment, or changed data with no snapshot to go back to
    if rec.snapshot_id is not None:
        table = StepTable.for_spec(rec.spec, st)
        ice = table.load()
        if ice is None or ice.snapshot_by_id(rec.snapshot_id) is None:
            raise NotFoundError(
                f"run {run_id} read snapshot {rec.snapshot_id} of {table.identifier}, which is "
                "gone (expired); the run cannot be re-run on its data. `rayorch reproduce "
                f"{run_id} --check` still names what changed",
                run_id=run_id,
                snapshot_id=rec.snapshot_id,
            )
    if not rec.inputs:
        raise NotFoundError(
            f"run {run_id}: its dataset manifest names no partitions to re-read",
            run_id=run_id,
            run_key=rec.run_key,
        )
    spec = rec.spec.model_copy(update={"registry": None})  # a reproduction registers nothing
    ue = unit_environment(spec, st.db_url, guard=False)
    target = TrainTarget(rec.run_key, dt.date.fromisoformat(rec.as_of), rec.inputs, rec.snapshot_id)
    req = TrainRequest(spec, st, target, 0, rec.generation, env=ue.context, reproduces=run_id)
    ensure_ray(st)
    result = submit_training(req, ue.task_options())
    new_id = result.mlflow_run_id
    new_metrics = {k: float(v) for k, v in tracker.client.get_run(new_id).data.metrics.items()}
    matches = compare_metrics(rec.metrics, new_metrics, tolerance)
    ok = bool(matches) and all(m.match for m in matches)
    tracker.client.set_tag(new_id, "rayorch.reproduce.metrics_match", str(ok).lower())
    doc.update(
        reran=True,
        new_run_id=new_id,
        reproduces=tracker.client.get_run(new_id).data.tags.get(TAG_REPRODUCES),
        tolerance=tolerance,
        metrics=[m.to_dict() for m in matches],
        metrics_match=ok,
        dataset_digest=getattr(result, "dataset_digest", None),
        snapshot_id=rec.snapshot_id,
        inputs_same=_same_inputs(tracker, rec, new_id),
    )
    return doc


def _same_inputs(tracker: Tracker, rec: RunRecord, new_id: str) -> bool:
    """The re-run read the recorded snapshot's exact files (from its own dataset record)."""
    text = tracker.read_artifact(new_id, DATASET_ARTIFACT)
    if text is None:
        return False
    got = json.loads(text)
    files = [f["path"] for p in got.get("partitions", []) for f in p.get("files", [])]
    return got.get("snapshot_id") == rec.dataset.get("snapshot_id") and files == rec.files
