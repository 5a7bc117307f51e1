"""The scheduler actor's state in the ledger database, and its rebuild after a restart.

After every cycle the controller's changed requests are written (one transaction): queued ones
with their reservation, admitted ones with their placement, both with their holder and lease.
When Ray restarts the actor (``max_restarts``) the constructor calls :meth:`Durable.restore`:
the cluster config in force, the queue, the admissions (placement groups found again by name;
they are detached), yield requests, preemption history and leases come back as they were.

State written by a *different* Ray cluster (its head node is gone) is discarded at restore:
those admissions' nodes and drivers no longer exist. The config in force is the last one a
driver brought (``reconfigure``); ``get_scheduler`` compares fingerprints on every call.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from rayorch.ledger.admissions import AdmissionRow, AdmissionStore
from rayorch.scheduling.cycle import Reservation
from rayorch.scheduling.model import PlacementPlan, Request, RunningWorkload
from rayorch.scheduling.quota import ClusterSpec

if TYPE_CHECKING:
    from rayorch.scheduling.controller import SchedulerController

_SPEC_KEY = "cluster_spec"
_CLUSTER_KEY = "ray_cluster"


def fingerprint(spec: ClusterSpec) -> str:
    """Stable digest of a cluster config (what 'changed configs/cluster.yaml' means)."""
    text = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ray_cluster_id() -> str:
    """The head node's id: the same across actor restarts, new for a new Ray cluster."""
    import ray

    if not ray.is_initialized():
        return "no-ray"
    for n in ray.nodes():
        if "node:__internal_head__" in n.get("Resources", {}):
            return str(n["NodeID"])
    return "unknown"


class Durable:
    def __init__(self, ctrl: SchedulerController, url: str) -> None:
        self.ctrl = ctrl
        self.store = AdmissionStore(url)
        self.dirty: set[str] = set()

    # --- writes --------------------------------------------------------------------------
    def save_config(self) -> None:
        now = self.ctrl._clock()
        self.store.set_state(_SPEC_KEY, self.ctrl._spec.model_dump_json(), now)

    def renew(self, holder: str, until: float) -> None:
        self.store.renew(holder, until)

    def _row(self, wid: str) -> AdmissionRow | None:
        c = self.ctrl
        running = c._running.get(wid)
        req = c._requests.get(wid) if running is not None else c._pending.get(wid)
        if req is None:
            return None
        res = c._reservations.get(wid)
        return AdmissionRow(
            wid,
            "ADMITTED" if running is not None else "QUEUED",
            req.to_dict(),
            running.placement.to_dict() if running is not None else None,
            res.to_dict() if res is not None else None,
            c._history.get(wid, ()),
            c._yield_at.get(wid),
            req.holder,
            c._leases.get(req.holder) if req.holder else None,
            running.started_at if running is not None else None,
        )

    def flush(self) -> None:
        """Write the changed requests; reservations can change without a decision changing,
        so the preemptors are always rewritten."""
        ids = self.dirty | set(self.ctrl._reservations)
        self.dirty = set()
        ups, dels = [], []
        for wid in ids:
            row = self._row(wid)
            if row is None:
                dels.append(wid)
            else:
                ups.append(row)
        self.store.write(ups, dels, self.ctrl._clock())

    # --- restore -------------------------------------------------------------------------
    def restore(self) -> None:
        """Rebuild the controller from the database (no-op on an empty one)."""
        c = self.ctrl
        now = self.ctrl._clock()
        cluster = _ray_cluster_id() if c._static_nodes is None else "static"
        stored_cluster = self.store.get_state(_CLUSTER_KEY)
        if stored_cluster != cluster:
            dropped = self.store.clear()
            self.store.set_state(_CLUSTER_KEY, cluster, now)
            self.save_config()
            c._log("restored", "-", dropped_from_other_cluster=dropped)
            return
        spec_text = self.store.get_state(_SPEC_KEY)
        if spec_text:
            c._spec = ClusterSpec.model_validate_json(spec_text)
        else:
            self.save_config()
        restored = 0
        for row in self.store.rows():
            req = Request.from_dict(row.request)
            wid = row.workload_id
            if row.holder and row.lease_until is not None:
                c._leases[row.holder] = max(c._leases.get(row.holder, 0.0), row.lease_until)
            if row.preempted_at:
                c._history[wid] = row.preempted_at
            if row.state == "ADMITTED" and row.placement:
                plan = PlacementPlan.from_dict(row.placement)
                c._requests[wid] = req
                c._running[wid] = RunningWorkload(
                    wid,
                    req.namespace,
                    req.priority,
                    plan,
                    started_at=row.started_at or now,
                    deadline_at=req.deadline_at,
                    expected_duration_s=req.expected_duration_s,
                )
                if row.yield_requested_at is not None:
                    c._yield_at[wid] = row.yield_requested_at
                if c._create_pgs and req.reserve:
                    c._pgs[wid] = _find_or_create_pg(c, wid, plan)
            else:
                c._pending[wid] = req
                if row.reservation:
                    c._reservations[wid] = Reservation.from_dict(row.reservation)
            restored += 1
        c._log("restored", "-", requests=restored)


def _find_or_create_pg(c: SchedulerController, wid: str, plan: PlacementPlan) -> Any:
    from ray.util import get_placement_group

    try:
        return get_placement_group(f"rayorch:{wid}")
    except ValueError:
        return c._create_pg(wid, plan)
