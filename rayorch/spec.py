"""Pipeline configs as frozen, validated pydantic models.

``load_pipeline(path)`` reads YAML and raises :class:`ConfigError` naming the file, the field
path and what was expected. Relative data paths resolve under ``RAYORCH_HOME``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rayorch.env.spec import EnvironmentSpec
from rayorch.errors import ConfigError, PartitionKeyError
from rayorch.partitions import validate_dimension, validate_segment

SCHEMA_VERSION = 1
_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_entrypoint(v: str) -> str:
    if not _ENTRYPOINT_RE.match(v):
        raise ValueError(f"entrypoint {v!r} must look like 'package.module:function'")
    return v


Entrypoint = Annotated[str, AfterValidator(_check_entrypoint)]


class TimeDimension(_Frozen):
    name: str = Field("date", description="Name of the day-granular time dimension.")
    granularity: Literal["day"] = Field("day", description="Only day partitions are supported.")
    sub_partition: str = Field("hour", description="Sub-partition dimension in the raw data.")

    @field_validator("name", "sub_partition")
    @classmethod
    def _dim(cls, v: str) -> str:
        return _wrap_key_error(validate_dimension, v)


class PartitionsSpec(_Frozen):
    time: TimeDimension = Field(default_factory=TimeDimension, description="The time dimension.")
    keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Key dimensions and their known values, e.g. {city: [SF, NYC]}.",
    )

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for dim, values in v.items():
            _wrap_key_error(validate_dimension, dim)
            if not values:
                raise ValueError(f"key dimension {dim!r} lists no values")
            if len(set(values)) != len(values):
                raise ValueError(f"key dimension {dim!r} repeats a value")
            for value in values:
                _wrap_key_error(validate_segment, str(value), what=f"value of {dim!r}")
        return {k: [str(x) for x in vals] for k, vals in v.items()}

    @model_validator(mode="after")
    def _no_clash(self) -> PartitionsSpec:
        if self.time.name in self.keys or self.time.sub_partition in self.keys:
            raise ValueError("a key dimension reuses the time or sub-partition dimension name")
        return self


class ExampleData(_Frozen):
    generator: Entrypoint = Field(description="module:function producing one hour of example rows.")
    rows_per_hour: int = Field(40, ge=1, description="Rows per hourly sub-partition.")
    seed: int = Field(7, description="Base seed; data is deterministic per (seed, key, hour).")


class SourceSpec(_Frozen):
    path: str = Field(description="Raw hive-partitioned parquet root (relative: RAYORCH_HOME).")
    unique_key: list[str] = Field(description="Columns that identify a raw row uniquely.")
    schema_: dict[str, str] = Field(
        default_factory=dict,
        alias="schema",
        description="Expected column -> arrow type name (e.g. int64, string, double).",
    )
    example: ExampleData | None = Field(None, description="How `rayorch data generate` fakes it.")


class FreshnessSpec(_Frozen):
    expected_sub_partitions: int = Field(24, ge=1, le=24, description="Hours expected per day.")
    require_success_marker: bool = Field(True, description="Each hour needs a _SUCCESS file.")
    min_rows_per_sub_partition: int = Field(1, ge=0, description="Rows required per hour.")
    min_rows_ratio_to_median: float | None = Field(
        None, ge=0, description="Day rows must be >= this x the trailing median of recent days."
    )
    trailing_days: int = Field(7, ge=1, description="Days in the trailing median window.")
    lateness_hours: float = Field(
        6.0, ge=0, description="Hours after the day ends during which missing hours are PENDING."
    )
    wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a backfill waits on a PENDING input before failing."
    )
    poll_interval_s: float = Field(5.0, gt=0, description="Sensor re-check interval while waiting.")
    check_unique_keys: bool = Field(True, description="Reject partitions with duplicate keys.")
    min_ready_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Training window: fraction of partitions that must be READY (1.0 = all).",
    )


class TaskGroupingSpec(_Frozen):
    """Short feature units share a Ray task (see rayorch/backfill/grouping.py)."""

    target_task_s: float = Field(
        0.25,
        ge=0,
        description="Pack short feature units into Ray tasks of about this many seconds, "
        "judged by the unit times measured so far (0: one task per partition).",
    )
    max_partitions: int = Field(32, ge=1, description="At most this many units per task.")


class FeaturesSpec(_Frozen):
    entrypoint: Entrypoint = Field(description="module:function(ctx, table) -> table.")
    code_version: str | None = Field(
        None,
        description="Version of the feature code; committed partitions built by another "
        "version are stale. Default: a hash of the entrypoint module's source.",
    )
    output: str = Field(description="Feature partitions root (relative: RAYORCH_HOME).")
    unique_key: list[str] = Field(description="Columns unique within a committed partition.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters handed to the function as ctx.params."
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs per feature task.")
    retries: int = Field(2, ge=0, description="Retries of a failed unit before marking failed.")
    retry_backoff_s: float = Field(1.0, ge=0, description="Base backoff; doubles per retry.")
    grouping: TaskGroupingSpec = Field(
        default_factory=TaskGroupingSpec,
        description="How short units share a task; never changes what a unit produces.",
    )


class ScalingSpec(_Frozen):
    num_workers: int = Field(1, ge=1, description="Ray Train workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker (0 = CPU).")


class CheckpointSpec(_Frozen):
    """When the training loop checkpoints (whichever comes first) and where checkpoints live."""

    every_epochs: int | None = Field(1, ge=1, description="Checkpoint every N epochs (None: off).")
    every_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimizer steps (None: off)."
    )
    every_seconds: float | None = Field(
        None, gt=0, description="Also checkpoint when this long passed since the last one."
    )
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept per unit.")
    storage_path: str = Field(
        "checkpoints",
        description="Root (relative: RAYORCH_HOME) or any pyarrow filesystem URI (s3://, gs://).",
    )


class StragglerAction(str, enum.Enum):
    REPORT = "report"  # flag it (status, MLflow, log line naming the node)
    RESTART = "restart"  # also checkpoint and restart the worker group without that node


class StragglerSpec(_Frozen):
    """A worker is a straggler when its step time exceeds ``slowdown`` x the median of the
    other workers for ``consecutive_steps`` steps in a row."""

    enabled: bool = Field(True, description="Collect per-worker step times and flag stragglers.")
    slowdown: float = Field(2.0, gt=1, description="k: step time > k x median flags the step.")
    consecutive_steps: int = Field(5, ge=1, description="M: flagged steps in a row to report.")
    min_step_s: float = Field(
        0.005, ge=0, description="Ignore steps faster than this (timer noise on tiny steps)."
    )
    warmup_steps: int = Field(
        2, ge=0, description="Steps after each (re)start not judged (data pipeline start-up)."
    )
    action: StragglerAction = Field(StragglerAction.REPORT, description="report | restart")
    max_restarts: int = Field(2, ge=0, description="Group restarts for stragglers per unit.")


class TrainSpec(_Frozen):
    entrypoint: Entrypoint = Field(description="module:function(config) Ray Train per-worker loop.")
    code_version: str | None = Field(
        None,
        description="Version of the training code; trained units built by another version "
        "are stale. Default: a hash of the entrypoint module's source.",
    )
    window_days: int = Field(3, ge=1, description="Days of features per as-of date.")
    label: str = Field("label", description="Label column.")
    feature_columns: list[str] = Field(description="Input columns for the model.")
    epochs: int = Field(5, ge=1, description="Epochs per training unit.")
    batch_size: int = Field(256, ge=1, description="Per-worker batch size.")
    learning_rate: float = Field(0.05, gt=0, description="Optimizer learning rate.")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out fraction.")
    seed: int = Field(0, description="Training seed.")
    split_in_task_max_mb: float = Field(
        64.0,
        ge=0,
        description="A window whose data files total at most this many MiB is shuffled and "
        "split inside the unit's task (seconds faster on small windows); a larger one by Ray "
        "Data's distributed shuffle. 0: always Ray Data.",
    )
    max_failures: int = Field(1, ge=0, description="Ray Train worker-group restarts allowed.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Ray Train scaling.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    stragglers: StragglerSpec = Field(
        default_factory=StragglerSpec, description="Straggler detection."
    )
    torch_backend: Literal["nccl", "gloo"] | None = Field(
        None,
        description="torch.distributed backend (None: nccl with GPUs, gloo without). gloo "
        "with GPUs keeps Ray's GPU accounting on nodes whose torch has no CUDA (fake-GPU tests).",
    )
    yield_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Bound for a unit asked to yield (SIGTERM, scheduler) to checkpoint and stop.",
    )
    log_every_steps: int = Field(
        10, ge=1, description="Per-step metrics (step_loss) are logged every N steps."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Free-form parameters handed to the loop as params."
    )


class MetricGate(_Frozen):
    """A threshold on one metric of the model version's run (latest logged value)."""

    metric: str = Field(description="Metric name on the version's MLflow run, e.g. val_auc.")
    min: float | None = Field(None, description="Reject when the metric is below this.")
    max: float | None = Field(None, description="Reject when the metric is above this.")

    @model_validator(mode="after")
    def _some_bound(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError(f"metric gate {self.metric!r} needs min or max")
        return self


class GatesSpec(_Frozen):
    """What a model version must show before an alias may point at it."""

    metrics: list[MetricGate] = Field(
        default_factory=list, description="Metric thresholds, e.g. [{metric: val_auc, min: 0.8}]."
    )
    max_loss_ratio: float | None = Field(
        None,
        gt=0,
        description="Reject when val_loss / train_loss exceeds this (train 0.3 vs val 2.1 is 7).",
    )
    train_loss_metric: str = Field("train_loss", description="Run metric holding training loss.")
    val_loss_metric: str = Field("val_loss", description="Run metric holding validation loss.")
    require_validated_data: bool = Field(
        True, description="Reject versions whose run has no validated training dataset input."
    )


class RegistrySpec(_Frozen):
    model_name: str = Field(description="Registered model name in MLflow.")
    gates: GatesSpec = Field(
        default_factory=GatesSpec, description="Promotion gates every alias move must pass."
    )


class PipelineSpec(_Frozen):
    """One pipeline: partitions, raw source, features, training and registry."""

    schema_version: int = Field(SCHEMA_VERSION, description="Config schema version.")
    name: str = Field(description="Pipeline name; part of every run key.")
    namespace: str = Field("default", description="Quota namespace the pipeline runs in.")
    partitions: PartitionsSpec = Field(default_factory=PartitionsSpec, description="Dimensions.")
    source: SourceSpec = Field(description="Raw input data.")
    freshness: FreshnessSpec = Field(default_factory=FreshnessSpec, description="Sensor policy.")
    features: FeaturesSpec = Field(description="Feature step.")
    train: TrainSpec | None = Field(None, description="Training step (optional).")
    registry: RegistrySpec | None = Field(None, description="Model registration (optional).")
    environment: EnvironmentSpec | None = Field(
        None, description="Pinned image, lockfile and runtime_env of the units (optional)."
    )

    @field_validator("name", "namespace")
    @classmethod
    def _name(cls, v: str) -> str:
        return _wrap_key_error(validate_segment, v, what="name")

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this rayorch reads {SCHEMA_VERSION}")
        return v

    @property
    def time_dim(self) -> str:
        return self.partitions.time.name

    @property
    def key_dims(self) -> list[str]:
        return sorted(self.partitions.keys)

    def select_keys(self, keys: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
        """Key dimension values to cover: the configured ones, narrowed (or extended) by --keys."""
        selection = {d: list(v) for d, v in self.partitions.keys.items()}
        for dim, values in (keys or {}).items():
            if dim not in selection:
                raise ConfigError(
                    f"--keys names dimension {dim!r}; pipeline {self.name!r} has "
                    f"{sorted(selection) or 'no key dimensions'}",
                    field=f"partitions.keys.{dim}",
                )
            selection[dim] = list(values)
        return selection

    def fingerprint(self) -> str:
        """Stable hash of the effective config, stored with every backfill."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _wrap_key_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except PartitionKeyError as e:
        raise ValueError(e.message) from None


def format_validation_error(
    err: ValidationError, source: str, what: str = "pipeline config"
) -> str:
    lines = [f"{source}: invalid {what} ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def validate_config(model: type[M], data: Any, *, source: str, what: str) -> M:
    """Validate parsed YAML into ``model``; errors name the source, the field path and why."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping", file=source, field="<root>")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(
            format_validation_error(e, source, what),
            file=source,
            field=".".join(str(p) for p in first["loc"]),
            problems=[
                {"field": ".".join(str(p) for p in x["loc"]), "message": x["msg"]}
                for x in e.errors()
            ],
        ) from None


def read_yaml(path: str | Path, *, what: str = "config") -> tuple[Any, str]:
    """Read a YAML file; a missing file or bad YAML is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found", file=str(p), field=None)
    try:
        return yaml.safe_load(p.read_text()), str(p)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}", file=str(p), field=None) from None


def parse_pipeline(data: Any, *, source: str = "<config>") -> PipelineSpec:
    return validate_config(PipelineSpec, data, source=source, what="pipeline config")


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Load a pipeline YAML. Errors name the file, the field path and what was expected."""
    data, source = read_yaml(path)
    return parse_pipeline(data, source=source)
