"""The Python API: what the CLI, ``jobs/*.py`` and notebooks all call."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayorch.backfill.driver import (
    BackfillDriver,
    BackfillSummary,
    DriverOptions,
    OnConflict,
    ProgressFn,
)
from rayorch.backfill.executor import RayExecutor, UnitExecutor
from rayorch.backfill.plan import AnnotatedUnit, BackfillPlan, Step, annotate, plan_backfill
from rayorch.clustermode import enforce as enforce_cluster_mode
from rayorch.clustermode import judge_for
from rayorch.data.generate import Faults, GenerateReport, generate_raw
from rayorch.env.runtime import enforce_image_policy
from rayorch.ledger.states import Reprocess
from rayorch.ledger.store import Ledger
from rayorch.runtime import ensure_ray
from rayorch.settings import Settings, load_settings
from rayorch.spec import PipelineSpec, load_pipeline


def _spec(config: str | Path | PipelineSpec) -> PipelineSpec:
    return config if isinstance(config, PipelineSpec) else load_pipeline(config)


def open_ledger(settings: Settings | None = None) -> Ledger:
    return Ledger((settings or load_settings()).db_url)


def generate_data(
    config: str | Path | PipelineSpec,
    start: str | dt.date,
    end: str | dt.date,
    keys: dict[str, list[str]] | None = None,
    faults: Faults | None = None,
    settings: Settings | None = None,
) -> GenerateReport:
    """Write deterministic example raw data for the pipeline under its source path."""
    spec = _spec(config)
    st = settings or load_settings()
    return generate_raw(spec, st.resolve(spec.source.path), start, end, keys, faults)


def current_versions(spec: PipelineSpec, settings: Settings) -> dict[str, dict[str, str]]:
    """What a commit of each step would record now (config, code, environment)."""
    from rayorch.backfill.versions import env_fingerprint, step_versions
    from rayorch.env.fingerprint import env_context

    ctx = env_context(spec, None, guard=False)
    return step_versions(spec, env_fingerprint(ctx.image, ctx.lockfile_sha256))


def plan_with_status(
    config: str | Path | PipelineSpec,
    start: str | dt.date,
    end: str | dt.date,
    keys: dict[str, list[str]] | None = None,
    steps: str | None = None,
    reprocess: Reprocess = Reprocess.MISSING,
    settings: Settings | None = None,
) -> tuple[BackfillPlan, list[AnnotatedUnit]]:
    """The plan plus what the ledger says about each unit (the dry run)."""
    spec = _spec(config)
    enforce_image_policy(spec, file=None if isinstance(config, PipelineSpec) else str(config))
    from rayorch.backfill.versions import stale_units

    st = settings or load_settings()
    plan = plan_backfill(spec, start, end, keys, steps)
    ledger = open_ledger(st)
    try:
        known = ledger.get_units(u.run_key for u in plan.units)
        now = ledger.now()
    finally:
        ledger.close()
    stale = stale_units(plan, known, current_versions(spec, st))
    return plan, annotate(plan, known, now, Reprocess(reprocess), stale=stale)


def run_backfill(
    config: str | Path | PipelineSpec,
    start: str | dt.date,
    end: str | dt.date,
    keys: dict[str, list[str]] | None = None,
    steps: str | None = None,
    *,
    max_concurrency: int | None = None,
    reprocess: Reprocess | str = Reprocess.MISSING,
    on_conflict: OnConflict | str = OnConflict.WAIT,
    resume_id: str | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    executor: UnitExecutor | None = None,
    ledger: Ledger | None = None,
    lease_s: float | None = None,
    preempt: threading.Event | None = None,
    cluster: Any = None,
    namespace: str | None = None,
    priority: str | None = None,
    allow_local_state: bool = False,
) -> BackfillSummary:
    """Plan and run a backfill on Ray. Re-running the same call skips what is done.

    Attached to a Ray cluster (``RAY_ADDRESS``), node-local state (a SQLite ledger or MLflow
    store, local storage paths) is refused before the plan runs (``rayorch.clustermode``);
    ``allow_local_state`` keeps it on a single-node cluster.

    With ``resume_id`` the plan is rebuilt from that backfill's recorded parameters. Setting
    ``preempt`` (e.g. from a SIGTERM handler) makes running training units checkpoint and
    stop within ``train.yield_timeout_s``; the backfill ends PREEMPTED and the next run of the
    same backfill resumes them from their checkpoints.

    With ``cluster`` (a path to configs/cluster.yaml or a ClusterSpec) every unit is admitted
    by the named scheduler actor in ``namespace`` (default: the pipeline's) and ``priority``
    (default: the cluster's default_priority, backfill) - see docs/scheduling.md.
    """
    st = settings or load_settings()
    own_ledger = ledger is None
    led = ledger or open_ledger(st)
    try:
        if resume_id is not None:
            params: dict[str, Any] = led.get_backfill(resume_id).params
            start, end = params["start"], params["end"]
            keys, steps = params["keys"], ",".join(params["steps"])
        spec = _spec(config)
        plan = plan_backfill(spec, start, end, keys, steps)
        gate_args = None
        if cluster is not None:
            from rayorch.backfill.scheduled import gate_args as _gate_args

            gate_args = _gate_args(cluster, namespace, priority, spec, plan.units)
        ensure_ray(st)
        import ray

        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        enforce_cluster_mode(judge_for(st, spec, alive, allow_local_state))

        cpus = ray.cluster_resources().get("CPU", 4)
        opts = DriverOptions(
            max_concurrency=max_concurrency,
            reprocess=Reprocess(reprocess),
            on_conflict=OnConflict(on_conflict),
            resume_id=resume_id,
            retries=spec.features.retries,
            retry_backoff_s=spec.features.retry_backoff_s,
            sensor_wait_timeout_s=spec.freshness.wait_timeout_s,
            sensor_poll_s=spec.freshness.poll_interval_s,
            yield_timeout_s=spec.train.yield_timeout_s if spec.train else 120.0,
            **({"lease_s": lease_s} if lease_s else {}),
        )
        gate = None
        if gate_args is not None:
            from rayorch.backfill.scheduled import SchedulerGate

            gate = SchedulerGate(*gate_args)
        from rayorch.backfill.versions import stale_units
        from rayorch.ledger.liveness import current_owner

        versions = current_versions(spec, st)
        rerun: frozenset[str] = frozenset()
        if opts.reprocess is Reprocess.STALE:
            rows = led.get_units(u.run_key for u in plan.units)
            rerun = frozenset(stale_units(plan, rows, versions))
        driver = BackfillDriver(
            plan,
            led,
            executor or RayExecutor(spec, st),
            opts,
            progress,
            cluster_cpus=cpus,
            gate=gate,
            owner=current_owner(_ray_job_id(st)),
            versions=versions,
            rerun=rerun,
        )
        if preempt is not None:
            driver.preempt_requested = preempt
        return driver.run()
    finally:
        if own_ledger:
            led.close()


def _ray_job_id(settings: Settings) -> str | None:
    """This driver's Ray job id when attached to a cluster (``ray job submit``), so another
    driver can ask Ray whether it still runs."""
    if not settings.ray_address:
        return None
    import ray

    try:
        return ray.get_runtime_context().get_job_id()
    except Exception:
        return None


def simulate_policies(
    cluster: str | Path,
    workload: str | Path,
    policies: Sequence[str] = ("rayorch", "first-fit", "fifo"),
    *,
    trace: bool = False,
) -> list[Any]:
    """`rayorch simulate` as a function: one SimResult per admission policy, same jobs."""
    from rayorch.scheduling.admission import POLICIES
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.simulator import simulate
    from rayorch.scheduling.workload import expand, load_workload, node_shapes

    spec, wl = load_cluster(cluster), load_workload(workload)
    shapes, jobs = node_shapes(wl, spec), expand(wl)
    return [
        simulate(
            spec,
            shapes,
            jobs,
            POLICIES[p],
            wl.yield_latency_s,
            wl.resume_overhead_s,
            trace=trace,
        )
        for p in policies
    ]


def env_diff(run_a: str, run_b: str, settings: Settings | None = None) -> Any:
    """`rayorch env diff` as a function: what changed in the environment from RUN_A to RUN_B."""
    import json

    from rayorch.env.diff import diff_fingerprints
    from rayorch.env.errors import FingerprintMissingError
    from rayorch.env.fingerprint import Fingerprint
    from rayorch.env.worker import FINGERPRINT_ARTIFACT
    from rayorch.lineage.reproduce import tracker_for

    tracker = tracker_for(settings or load_settings())

    def load(run_id: str) -> Fingerprint:
        text = tracker.read_artifact(run_id, FINGERPRINT_ARTIFACT)
        if text is None:
            raise FingerprintMissingError(
                f"run {run_id} has no {FINGERPRINT_ARTIFACT} at {tracker.uri}: not a rayorch "
                "training unit, or MLFLOW_TRACKING_URI points elsewhere",
                run_id=run_id,
            )
        return Fingerprint.from_dict(json.loads(text))

    return diff_fingerprints(load(run_a), load(run_b))


__all__ = [
    "Step",
    "current_versions",
    "env_diff",
    "generate_data",
    "open_ledger",
    "plan_backfill",
    "plan_with_status",
    "run_backfill",
    "simulate_policies",
]
