"""Simulator workloads (``configs/workloads/*.yaml``): daily production jobs with deadlines and
backfills of N days, expanded into a deterministic list of :class:`SimJob`. Pure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayorch.errors import ConfigError
from rayorch.scheduling.quota import NodePool, PriorityClass
from rayorch.scheduling.shapes import JobShape, parse_job_shape
from rayorch.spec import read_yaml, validate_config

HOUR = 3600.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_shape(v: str) -> str:
    try:
        parse_job_shape(v)
    except ConfigError as e:
        raise ValueError(e.message) from None
    return v


class DailyJob(_Frozen):
    name: str = Field(description="Job name; one instance per simulated day.")
    namespace: str = Field("production", description="Quota namespace.")
    priority: PriorityClass = Field(PriorityClass.PRODUCTION, description="Priority class.")
    shape: str = Field(description="Job shape, e.g. '1x8' or '2x2'.")
    cpus_per_bundle: float = Field(1.0, gt=0, description="CPUs per bundle.")
    at_hour: float = Field(0.0, ge=0, lt=24, description="Submission hour of each day.")
    duration_hours: float = Field(gt=0, description="Run time once started.")
    deadline_hours: float | None = Field(
        None, gt=0, description="Must finish this many hours after submission (SLA)."
    )
    allow_reshape: bool = Field(False, description="May run cut differently (1x8 as 2x4).")

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: str) -> str:
        return _check_shape(v)


class BackfillUnit(_Frozen):
    shape: str = Field(description="Unit shape, e.g. '1x4'.")
    cpus_per_bundle: float = Field(1.0, gt=0, description="CPUs per bundle.")
    hours: float = Field(gt=0, description="Mean run time of the unit.")
    allow_reshape: bool = Field(False, description="May run cut differently.")

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: str) -> str:
        return _check_shape(v)


class BackfillJob(_Frozen):
    name: str = Field(description="Backfill name.")
    namespace: str = Field("backfill", description="Quota namespace.")
    priority: PriorityClass = Field(PriorityClass.BACKFILL, description="Priority class.")
    submit_hour: float = Field(0.0, ge=0, description="Hour (from simulation start) submitted.")
    days: int = Field(gt=0, description="Days backfilled; each day expands to `units`.")
    units: list[BackfillUnit] = Field(min_length=1, description="Units per backfilled day.")
    jitter: float = Field(0.0, ge=0, lt=1, description="Run-time jitter fraction (seeded).")


class WorkloadSpec(_Frozen):
    schema_version: int = Field(1, description="Workload schema version.")
    name: str = Field(description="Workload name.")
    seed: int = Field(7, description="Seed for run-time jitter.")
    days: int = Field(gt=0, description="Days of daily production jobs simulated.")
    yield_latency_s: float = Field(
        60.0, ge=0, description="Seconds a preempted unit takes to checkpoint and release."
    )
    resume_overhead_s: float = Field(
        30.0, ge=0, description="Seconds a resumed unit spends restoring its checkpoint."
    )
    nodes: list[NodePool] | None = Field(
        None, description="Node inventory for this workload (default: the cluster config's)."
    )
    production: list[DailyJob] = Field(default_factory=list, description="Daily jobs.")
    backfills: list[BackfillJob] = Field(default_factory=list, description="Backfills.")


@dataclass(frozen=True, slots=True)
class SimJob:
    job_id: str
    namespace: str
    priority: PriorityClass
    shape: JobShape
    submit_at: float
    duration_s: float
    deadline_at: float | None = None
    allow_reshape: bool = False


def expand(spec: WorkloadSpec) -> list[SimJob]:
    """The workload as a deterministic job list, sorted by submission time."""
    rng = random.Random(spec.seed)
    jobs: list[SimJob] = []
    for day in range(spec.days):
        for p in spec.production:
            t = day * 24 * HOUR + p.at_hour * HOUR
            jobs.append(
                SimJob(
                    f"{p.name}/day{day:03d}",
                    p.namespace,
                    p.priority,
                    parse_job_shape(p.shape, p.cpus_per_bundle),
                    t,
                    p.duration_hours * HOUR,
                    t + p.deadline_hours * HOUR if p.deadline_hours else None,
                    p.allow_reshape,
                )
            )
    for b in spec.backfills:
        for day in range(b.days):
            for i, u in enumerate(b.units):
                dur = u.hours * HOUR * (1 + rng.uniform(-b.jitter, b.jitter))
                jobs.append(
                    SimJob(
                        f"{b.name}/d{day:03d}/u{i}",
                        b.namespace,
                        b.priority,
                        parse_job_shape(u.shape, u.cpus_per_bundle),
                        b.submit_hour * HOUR,
                        dur,
                        None,
                        u.allow_reshape,
                    )
                )
    return sorted(jobs, key=lambda j: (j.submit_at, j.job_id))


def node_shapes(spec: WorkloadSpec, cluster: Any) -> list[Any]:
    """The workload's own inventory when it declares one, else the cluster config's."""
    if spec.nodes:
        return cluster.model_copy(update={"nodes": spec.nodes}).node_shapes()
    return cluster.node_shapes()


def parse_workload(data: Any, *, source: str = "<workload>") -> WorkloadSpec:
    return validate_config(WorkloadSpec, data, source=source, what="workload")


def load_workload(path: str | Path) -> WorkloadSpec:
    data, source = read_yaml(path, what="workload")
    return parse_workload(data, source=source)
