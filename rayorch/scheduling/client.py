"""Driver-side use of the scheduler actor: get (or create) it, wait for an admission, run
work in its placement group, map a plan onto Ray Train, and the ``cluster status`` report.

The actor itself is :class:`rayorch.scheduling.controller.SchedulerController`.
"""

from __future__ import annotations

import time
from typing import Any

from rayorch.scheduling.admission import Admission, AdmissionOutcome
from rayorch.scheduling.controller import (
    DEFAULT_LEASE_S,
    MAX_RESTARTS,
    SCHEDULER_NAME,
    SCHEDULER_NAMESPACE,
    SchedulerController,
)
from rayorch.scheduling.fragmentation import fragmentation_report
from rayorch.scheduling.model import PlacementPlan, Request, Snapshot
from rayorch.scheduling.quota import ClusterSpec

__all__ = [
    "admit_and_wait",
    "get_scheduler",
    "live_status",
    "run_in_placement_group",
    "scaling_config_kwargs",
]


def get_scheduler(
    spec: ClusterSpec | None = None,
    policy: str = "rayorch",
    create_placement_groups: bool = True,
    db_url: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> Any:
    """The named scheduler actor, created on first use (``get_if_exists``).

    ``db_url``: the ledger database its admissions, queue and leases live in (None: memory
    only). Ray restarts it (``max_restarts``) and it rebuilds from there. A caller whose
    ``spec`` differs from the running actor's has it picked up (``reconfigure``), or gets a
    ConfigError saying why it cannot be.
    """
    import ray

    if spec is None:
        return ray.get_actor(SCHEDULER_NAME, namespace=SCHEDULER_NAMESPACE)
    from rayorch.scheduling.durable import fingerprint

    actor_cls = ray.remote(num_cpus=0, max_restarts=MAX_RESTARTS, max_task_retries=3)(
        SchedulerController
    )
    actor = actor_cls.options(
        name=SCHEDULER_NAME,
        namespace=SCHEDULER_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote(spec, policy, None, create_placement_groups, db_url, lease_s)
    if ray.get(actor.config_fingerprint.remote()) != fingerprint(spec):
        ray.get(actor.reconfigure.remote(spec))
    return actor


def admit_and_wait(
    scheduler: Any, request: Request, timeout_s: float = 3600.0, poll_s: float | None = None
) -> tuple[Admission, Any]:
    """Submit and wait until admitted; return (admission, ready placement group).

    A REJECTED admission is returned at once with ``None`` for the placement group, so the
    caller reports its reason; waiting longer than ``timeout_s`` raises InfrastructureError.
    """
    import ray

    a: Admission = ray.get(scheduler.submit.remote(request))
    deadline = time.monotonic() + timeout_s
    interval = poll_s or 1.0
    while a.outcome is not AdmissionOutcome.ADMITTED:
        if a.outcome is AdmissionOutcome.REJECTED:
            return a, None
        if time.monotonic() > deadline:
            from rayorch.errors import InfrastructureError

            raise InfrastructureError(
                f"{request.workload_id} not admitted within {timeout_s:g}s: {a.reason.value}",
                workload_id=request.workload_id,
                reason=a.reason.name,
            )
        time.sleep(interval)
        a = ray.get(scheduler.poll.remote(request.workload_id))
    pg = ray.get(scheduler.placement_group.remote(request.workload_id))
    ray.get(pg.ready(), timeout=max(1.0, deadline - time.monotonic()))
    return a, pg


def run_in_placement_group(
    remote_fn: Any,
    pg: Any,
    *args: Any,
    bundle_index: int = 0,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    **kwargs: Any,
) -> Any:
    """Launch a Ray task (or actor class) inside bundle ``bundle_index`` of ``pg``."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    opts: dict[str, Any] = {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg,
            placement_group_bundle_index=bundle_index,
            placement_group_capture_child_tasks=True,
        )
    }
    if num_gpus is not None:
        opts["num_gpus"] = num_gpus
    if num_cpus is not None:
        opts["num_cpus"] = num_cpus
    return remote_fn.options(**opts).remote(*args, **kwargs)


def scaling_config_kwargs(plan: PlacementPlan) -> dict[str, Any]:
    """How a plan maps onto Ray Train's ``ScalingConfig``: one worker per bundle.

    Ray Train creates its own placement group from these; submit such work with
    ``Request(reserve=False)`` so capacity is accounted, not reserved twice. Add
    ``label_selector=plan.label_selectors()`` to pin each worker to its planned node.
    """
    b = plan.bundles[0]
    return {
        "num_workers": len(plan.bundles),
        "use_gpu": b.gpus > 0,
        "resources_per_worker": {"CPU": b.cpus, **({"GPU": float(b.gpus)} if b.gpus else {})},
        "placement_strategy": plan.strategy.value,
    }


def live_status(address: str | None = None) -> dict[str, Any]:
    """``rayorch cluster status``: the scheduler's report, or the bare inventory without one."""
    import ray

    from rayorch.scheduling.inventory import connect, read_nodes
    from rayorch.scheduling.quota import NamespaceQuota

    connect(address)
    try:
        actor = ray.get_actor(SCHEDULER_NAME, namespace=SCHEDULER_NAMESPACE)
    except ValueError:
        actor = None
    if actor is not None:
        report = ray.get(actor.status.remote())
        report["scheduler"] = "running"
        return report
    snap = Snapshot(ClusterSpec(namespaces={"default": NamespaceQuota()}), read_nodes())
    report = fragmentation_report(snap, [])
    report.update(scheduler="not running", running=[], queue=[], namespaces={})
    return report
