"""Would this backfill, as planned, make a named production job miss its deadline?

``rayorch plan --cluster ... --deadline-check WORKLOAD.yaml:JOB``: the backfill's units (shapes
from the plan, durations configured / measured / default) are submitted at t=0 next to one day
of the workload's daily production jobs, and the day is replayed through the same ``schedule``
code the live scheduler runs, on the configured inventory. The answer compares the named job's
finish with its deadline, with and without the backfill. Pure: no Ray imports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rayorch.errors import ConfigError
from rayorch.scheduling.admission import RAYORCH, AdmissionPolicy
from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.scheduling.simulator import simulate
from rayorch.scheduling.units import DEFAULT_DURATIONS_S, _step, unit_shape
from rayorch.scheduling.workload import SimJob, WorkloadSpec, expand, node_shapes


@dataclass(frozen=True, slots=True)
class DeadlineCheck:
    job: str
    deadline_min: float  # after its submission
    finish_min: float | None  # after its submission, with the backfill
    finish_alone_min: float | None  # without the backfill
    wait_min: float
    preemptions: int
    backfill_units: int

    @property
    def misses(self) -> bool:
        return self.finish_min is None or self.finish_min > self.deadline_min

    @property
    def late_by_min(self) -> float:
        if self.finish_min is None:
            return float("inf")
        return max(0.0, self.finish_min - self.deadline_min)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "misses_deadline": self.misses,
            "late_by_min": None if self.finish_min is None else round(self.late_by_min, 1),
            "slack_min": None
            if self.finish_min is None
            else round(self.deadline_min - self.finish_min, 1),
            "deadline_min": round(self.deadline_min, 1),
            "finish_min": None if self.finish_min is None else round(self.finish_min, 1),
            "finish_alone_min": None
            if self.finish_alone_min is None
            else round(self.finish_alone_min, 1),
            "wait_min": round(self.wait_min, 1),
            "preemptions_caused": self.preemptions,
            "backfill_units": self.backfill_units,
        }


def deadline_check(
    units: Iterable[Any],
    cluster: ClusterSpec,
    namespace: str,
    workload: WorkloadSpec,
    job_name: str,
    durations_s: Mapping[str, float] | None = None,
    priority: PriorityClass = PriorityClass.BACKFILL,
    policy: AdmissionPolicy = RAYORCH,
) -> DeadlineCheck:
    names = [p.name for p in workload.production]
    if job_name not in names:
        raise ConfigError(
            f"--deadline-check: no production job {job_name!r} in workload {workload.name!r} "
            f"(jobs: {', '.join(names) or 'none'})",
            field="deadline-check",
            value=job_name,
        )
    target = next(p for p in workload.production if p.name == job_name)
    if target.deadline_hours is None:
        raise ConfigError(
            f"--deadline-check: production job {job_name!r} has no deadline_hours",
            field="deadline_hours",
            value=job_name,
        )
    shapes = node_shapes(workload, cluster)
    if not shapes:
        raise ConfigError(
            "--deadline-check needs a node inventory: `nodes:` in the cluster config or workload",
            field="nodes",
        )
    day = workload.model_copy(update={"days": 1, "backfills": []})
    prod = expand(day)
    durations = {**DEFAULT_DURATIONS_S, **(durations_s or {})}
    bf = [
        SimJob(
            u.run_key,
            namespace,
            priority,
            unit_shape(u),
            0.0,
            float(durations.get(_step(u), 60.0)),
        )
        for u in units
    ]
    jid = f"{job_name}/day000"

    def run(jobs: list[SimJob]) -> tuple[float | None, float, int]:
        r = simulate(
            cluster, shapes, jobs, policy, workload.yield_latency_s, workload.resume_overhead_s
        )
        late = r.production_lateness_min.get(jid)
        finish = None if late is None or late == float("inf") else late + target.deadline_hours * 60
        return finish, r.production_waits_min.get(jid, float("inf")), r.preemptions

    finish, wait, pre = run(sorted([*prod, *bf], key=lambda j: (j.submit_at, j.job_id)))
    alone, _, _ = run(prod)
    return DeadlineCheck(job_name, target.deadline_hours * 60, finish, alone, wait, pre, len(bf))


def render_deadline_check(check: DeadlineCheck) -> str:
    """One line for people."""
    d = check.to_dict()
    if check.finish_min is None:
        return f"[bold red]MISS[/] {check.job}: never finishes in the simulated day"
    if check.misses:
        return (
            f"[bold red]MISS[/] {check.job}: finishes {d['finish_min']} min after submission, "
            f"deadline {d['deadline_min']} min: late by {d['late_by_min']} min "
            f"(alone: {d['finish_alone_min']} min; waited {d['wait_min']} min)"
        )
    return (
        f"[green]OK[/] {check.job}: finishes {d['finish_min']} min after submission, "
        f"{d['slack_min']} min before its deadline ({d['backfill_units']} backfill units, "
        f"{d['preemptions_caused']} preemptions, waited {d['wait_min']} min)"
    )
