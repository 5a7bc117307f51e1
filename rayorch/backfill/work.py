"""The work of one unit, as plain functions the executor runs inside Ray tasks.

A feature unit validates its raw partition with the sensor, reads exactly the validated files,
calls the user's function at the user-code boundary and stages the output as a data file of
the step's Iceberg table (unreferenced until published). It never commits: the driver does,
fenced by the unit's token, then publishes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from rayorch.backfill.grouping import MemberOutcome, run_each
from rayorch.backfill.plan import Unit
from rayorch.data import outputs, storage
from rayorch.data.sensors import SensorPolicy, SensorStatus, evaluate, observe_partition
from rayorch.data.storage import read_parquet_files
from rayorch.data.tables import StepTable
from rayorch.partitions import PartitionKey
from rayorch.results import NotReady, Staged
from rayorch.settings import Settings
from rayorch.spec import PipelineSpec
from rayorch.userfn import load_entrypoint, user_code_boundary


@dataclass(frozen=True, slots=True)
class FeatureContext:
    """What a feature function may know about the unit it computes."""

    pipeline: str
    run_key: str
    partition: dict[str, str]
    day: dt.date
    token: int
    params: dict[str, Any] = field(default_factory=dict)


def sensor_policy(spec: PipelineSpec) -> SensorPolicy:
    return SensorPolicy(
        freshness=spec.freshness,
        schema=dict(spec.source.schema_),
        unique_key=tuple(spec.source.unique_key),
        sub_dim=spec.partitions.time.sub_partition,
    )


def check_partition(
    spec: PipelineSpec, source_root: str, key: PartitionKey, day: dt.date, now: dt.datetime
) -> Any:
    """Observe and evaluate one raw partition (with trailing volumes when the policy asks)."""
    policy = sensor_policy(spec)
    trailing: list[int] = []
    if spec.freshness.min_rows_ratio_to_median is not None:
        lite = SensorPolicy(
            policy.freshness.model_copy(update={"check_unique_keys": False}), {}, (), policy.sub_dim
        )
        for i in range(1, spec.freshness.trailing_days + 1):
            d = day - dt.timedelta(days=i)
            prev = observe_partition(
                source_root, key.with_(**{spec.time_dim: d.isoformat()}), d, lite
            )
            if prev.exists:
                trailing.append(prev.rows)
    obs = observe_partition(source_root, key, day, policy, trailing)
    return evaluate(policy, obs, now)


def run_feature_units(
    spec: PipelineSpec,
    source_root: str,
    settings: Settings,
    members: list[tuple[Unit, int]],
    now_ts: float,
    env: Any = None,
) -> list[MemberOutcome]:
    """Several feature units in one task (:mod:`rayorch.backfill.grouping`), one after the
    other: per unit its result or the error it raised (the others go on), and the seconds
    its work took."""
    with storage.using(settings):
        return run_each(
            lambda m: _feature_unit(spec, source_root, settings, m[0], m[1], now_ts, env), members
        )


def _feature_unit(
    spec: PipelineSpec,
    source_root: str,
    settings: Settings,
    unit: Unit,
    token: int,
    now_ts: float,
    env: Any,
) -> Staged | NotReady:
    now = dt.datetime.fromtimestamp(now_ts, dt.timezone.utc)
    result = check_partition(spec, source_root, unit.partition, unit.day, now)
    if result.status is not SensorStatus.READY:
        return NotReady(result.to_dict())
    assert result.manifest is not None
    from rayorch.env.worker import on_feature_unit

    # Fingerprint this worker; a drifted environment fails here, before any output is staged.
    environment = on_feature_unit(env, unit.run_key, token)
    files = [f.path for f in result.manifest.files]
    raw = read_parquet_files(files)
    fn = load_entrypoint(spec.features.entrypoint)
    ctx = FeatureContext(
        spec.name,
        unit.run_key,
        unit.partition.as_dict(),
        unit.day,
        token,
        dict(spec.features.params),
    )
    with user_code_boundary(spec.features.entrypoint, partition=str(unit.partition)):
        out = fn(ctx, raw)
        if not isinstance(out, pa.Table):
            raise TypeError(f"expected a pyarrow.Table, got {type(out).__name__}")
    staged = outputs.stage(
        StepTable.for_spec(spec, settings),
        unit.partition,
        out,
        run_key=unit.run_key,
        token=token,
        unique_key=list(spec.features.unique_key),
    )
    return Staged(staged, result.manifest.to_dict(), out.num_rows, environment)
