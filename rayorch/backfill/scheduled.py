"""A backfill under the scheduler: the driver's side of admission, placement and preemption.

With ``--cluster`` every claimed unit becomes a scheduler request (workload id = run key) and
waits, without blocking the driver loop, until the named scheduler actor admits it:

* feature units run inside the placement group the scheduler created for them;
* training units get Ray Train ``ScalingConfig`` kwargs (``placement_strategy`` and one
  ``label_selector`` per worker pinning it to its planned node), so Ray Train's own placement
  group follows the plan; the scheduler reserves nothing for them (``Request.reserve=False``);
* a REJECTED admission fails the unit at once with the scheduler's reason;
* running units the scheduler asks to yield are found with one batched call per second.

Every unit that finishes, fails or yields gives its capacity back (``release``; a yielded unit
with ``requeue=True`` keeps its place in the queue). All calls are short actor calls.

Leases: every request carries this gate's ``holder`` id; the scheduler keeps the holder's
admissions and queued requests only while its lease is renewed. ``admit`` and
``yields_requested`` renew it as a side effect, and ``heartbeat()`` (cheap, rate-limited to one
actor call per ``lease_s / 3``) renews it when neither ran; a SIGKILLed driver stops renewing,
and its capacity goes back within one lease.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from rayorch.backfill.plan import Unit
from rayorch.scheduling.admission import Admission
from rayorch.scheduling.model import PlacementPlan
from rayorch.scheduling.quota import ClusterSpec, PriorityClass
from rayorch.scheduling.units import unit_request


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an admitted unit runs: the plan, and the scheduler's placement group (if any)."""

    workload_id: str
    plan: PlacementPlan
    pg: Any = None  # ray PlacementGroup for feature units; None for Ray Train units

    def scaling_kwargs(self) -> dict[str, Any]:
        """Extra ``ray.train.ScalingConfig`` kwargs: the plan's strategy, and each worker
        pinned to the node its bundle was planned on."""
        return {
            "placement_strategy": self.plan.strategy.value,
            "label_selector": self.plan.label_selectors(),
        }


class SchedulerGate:
    """Talks to the ``rayorch-scheduler`` actor on behalf of one backfill driver."""

    def __init__(
        self,
        cluster: ClusterSpec,
        namespace: str,
        priority: PriorityClass | None = None,
        *,
        poll_s: float = 0.25,
        yield_check_s: float = 1.0,
        actor: Any = None,
        db_url: str | None = None,
        lease_s: float | None = None,
    ) -> None:
        from rayorch.scheduling.client import get_scheduler
        from rayorch.scheduling.controller import DEFAULT_LEASE_S
        from rayorch.settings import load_settings

        self.cluster = cluster
        self.namespace = namespace
        self.priority = priority or cluster.default_priority
        self.poll_s = poll_s
        self.yield_check_s = yield_check_s
        self.lease_s = lease_s or DEFAULT_LEASE_S
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.actor = (
            actor
            if actor is not None
            else get_scheduler(
                cluster, db_url=db_url or load_settings().db_url, lease_s=self.lease_s
            )
        )
        self._last_poll = 0.0
        self._last_yield_check = 0.0
        self._last_renew = 0.0

    def heartbeat(self, force: bool = False) -> bool:
        """Renew this driver's lease unless a call renewed it within ``lease_s / 3``.
        Returns whether an actor call was made. Call it once per driver loop turn."""
        import ray

        now = time.monotonic()
        if not force and now - self._last_renew < self.lease_s / 3:
            return False
        self._last_renew = now
        ray.get(self.actor.heartbeat.remote(self.holder))
        return True

    def describe(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "priority": self.priority.value}

    def admit(
        self, units: Iterable[Unit], force: bool = False
    ) -> dict[str, tuple[Admission, Placement | None]] | None:
        """Submit (or re-poll) units in one actor call; None when polled too recently.

        Submitting is idempotent per run key: a unit already queued keeps its place, one
        already admitted gets its admission back.
        """
        import ray

        us = list(units)
        now = time.monotonic()
        if not us or (not force and now - self._last_poll < self.poll_s):
            return None
        self._last_poll = now
        reqs = [
            replace(unit_request(u, self.namespace, self.priority), holder=self.holder) for u in us
        ]
        answers = ray.get(self.actor.submit_many.remote(reqs))
        self._last_renew = now
        out: dict[str, tuple[Admission, Placement | None]] = {}
        for req, (a, pg) in zip(reqs, answers, strict=True):
            placed = (
                Placement(req.workload_id, a.placement, pg) if a.placement is not None else None
            )
            out[req.workload_id] = (a, placed)
        return out

    def yields_requested(self, run_keys: Iterable[str]) -> list[str]:
        """Running units the scheduler asked to yield (at most one call per yield_check_s)."""
        import ray

        keys = list(run_keys)
        now = time.monotonic()
        if not keys or now - self._last_yield_check < self.yield_check_s:
            self.heartbeat()
            return []
        self._last_yield_check = now
        self._last_renew = now
        return list(ray.get(self.actor.yields_requested.remote(keys, self.holder)))

    def release(self, run_key: str, requeue: bool = False) -> None:
        """Give the unit's capacity back; ``requeue``: it resumes later, keeping its place."""
        import ray

        ray.get(self.actor.release.remote(run_key, requeue))

    def release_all(self, run_keys: Iterable[str]) -> None:
        import ray

        refs = [self.actor.release.remote(k, False) for k in run_keys]
        if refs:
            ray.get(refs)


def measured_durations(ledger: Any, pipeline: str) -> dict[str, float]:
    """Median seconds from CLAIM to COMMIT of the pipeline's committed units, per step.

    Includes time spent waiting for admission under a scheduler, so it errs long.
    """
    claims: dict[tuple[str, int], float] = {}
    for e in ledger.events(event_name="CLAIM"):
        if str(e["run_key"]).startswith(f"{pipeline}/"):
            claims[(e["run_key"], e["token"])] = e["at"]
    by_step: dict[str, list[float]] = {}
    for e in ledger.events(event_name="COMMIT"):
        started = claims.get((e["run_key"], e["token"]))
        if started is None:
            continue
        step = str(e["run_key"]).split("/")[1]
        by_step.setdefault(step, []).append(max(0.0, e["at"] - started))
    return {k: sorted(v)[len(v) // 2] for k, v in by_step.items()}


def load_cluster_spec(cluster: Any) -> ClusterSpec:
    from rayorch.scheduling.quota import load_cluster

    return cluster if isinstance(cluster, ClusterSpec) else load_cluster(cluster)


def resolve_namespace(cluster: ClusterSpec, namespace: str | None, default: str) -> str:
    """``--namespace`` or the pipeline's ``namespace:``; it must be in the cluster config."""
    from rayorch.errors import ConfigError

    ns = namespace or default
    if cluster.quota(ns) is None:
        raise ConfigError(
            f"namespace {ns!r} is not in the cluster config (namespaces: "
            f"{', '.join(sorted(cluster.namespaces))}); pass --namespace or add it",
            field="namespace",
            value=ns,
        )
    return ns


def gate_args(
    cluster: Any,
    namespace: str | None,
    priority: PriorityClass | str | None,
    spec: Any,
    units: Iterable[Unit] = (),
) -> tuple[ClusterSpec, str, PriorityClass | None]:
    """Validated arguments of ``SchedulerGate`` for ``run_backfill(cluster=...)``: checked
    before Ray starts, so a wrong namespace, priority or unit shape fails at once."""
    from rayorch.errors import ConfigError
    from rayorch.scheduling.units import unit_shape

    for u in {u.step: u for u in units}.values():
        unit_shape(u)  # e.g. fractional GPUs per worker: ConfigError
    cs = load_cluster_spec(cluster)
    ns = resolve_namespace(cs, namespace, spec.namespace)
    try:
        prio = PriorityClass(priority) if priority else None
    except ValueError:
        raise ConfigError(
            f"--priority {priority!r}: choose {' or '.join(p.value for p in PriorityClass)}",
            field="priority",
            value=priority,
        ) from None
    return cs, ns, prio


def schedule_check(
    plan: Any,
    spec: Any,
    cluster: Any,
    namespace: str | None = None,
    priority: PriorityClass | str | None = None,
    durations_s: dict[str, float] | None = None,
    ledger: Any = None,
) -> Any:
    """``rayorch plan --cluster``: REJECTED shapes and the cost under the namespace quota.

    Durations per step: ``durations_s`` (configured) over what the ledger measured for this
    pipeline over the defaults.
    """
    from rayorch.scheduling.units import check_plan

    cs = load_cluster_spec(cluster)
    ns = namespace or spec.namespace
    measured = measured_durations(ledger, plan.pipeline) if ledger is not None else {}
    given = {**measured, **(durations_s or {})}
    source = {k: "measured" for k in measured} | {k: "configured" for k in durations_s or {}}
    prio = PriorityClass(priority) if priority else cs.default_priority
    return check_plan(plan.units, cs, ns, prio, given, source)
