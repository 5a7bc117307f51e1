"""A RayJob's state in rayorch's terms, from the RayJob and its Kueue Workload. Pure.

Kueue gates a RayJob through ``spec.suspend`` and a Workload (labelled
``kueue.x-k8s.io/job-uid``) whose conditions say whether quota was reserved, the job admitted,
evicted (preempted) or finished; KubeRay reports ``status.jobDeploymentStatus`` (New,
Initializing, Running, Complete, Failed, Suspending, Suspended, Retrying, ValidationFailed)
and ``status.jobStatus`` (PENDING ... SUCCEEDED/FAILED/STOPPED). ``kube_state`` folds them into
one enum with a reason, checked in this order: finished, evicted/preempted, suspended,
running, admitted, queued.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class KubeState(str, enum.Enum):
    NOT_FOUND = "NOT_FOUND"
    QUEUED = "QUEUED"  # waiting in Kueue for quota
    ADMITTED = "ADMITTED"  # quota reserved; KubeRay is creating the Ray cluster
    RUNNING = "RUNNING"  # the backfill driver runs
    RETRYING = "RETRYING"  # an attempt failed; KubeRay starts a new cluster (backoffLimit)
    PREEMPTED = "PREEMPTED"  # Kueue evicted it; suspended until re-admitted, then resumes
    SUSPENDED = "SUSPENDED"  # suspended (by a user or Kueue) without an eviction on record
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in (KubeState.SUCCEEDED, KubeState.FAILED, KubeState.NOT_FOUND)


@dataclass(frozen=True, slots=True)
class KubeStatus:
    state: KubeState
    reason: str
    job_deployment_status: str | None = None
    job_status: str | None = None
    workload: str | None = None
    cluster_queue: str | None = None
    attempts_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "job_deployment_status": self.job_deployment_status,
            "job_status": self.job_status,
            "workload": self.workload,
            "cluster_queue": self.cluster_queue,
            "attempts_failed": self.attempts_failed,
        }


def _conditions(workload: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    conds = ((workload or {}).get("status") or {}).get("conditions") or []
    return {c.get("type"): c for c in conds if c.get("status") == "True"}


def kube_state(rayjob: dict[str, Any] | None, workload: dict[str, Any] | None) -> KubeStatus:
    """The state of one RayJob (None: not found) given its Workload (None: none yet)."""
    if rayjob is None:
        return KubeStatus(KubeState.NOT_FOUND, "no such RayJob")
    st = rayjob.get("status") or {}
    deploy, job = st.get("jobDeploymentStatus"), st.get("jobStatus")
    conds = _conditions(workload)
    wl_name = ((workload or {}).get("metadata") or {}).get("name")
    cq = (((workload or {}).get("status") or {}).get("admission") or {}).get("clusterQueue")
    suspended = bool((rayjob.get("spec") or {}).get("suspend"))
    failed = int(st.get("failed") or 0)

    def out(state: KubeState, reason: str) -> KubeStatus:
        return KubeStatus(state, reason, deploy, job, wl_name, cq, failed)

    if deploy == "Complete" and job == "SUCCEEDED":
        return out(KubeState.SUCCEEDED, "the backfill job succeeded")
    if deploy in ("Complete", "Failed", "ValidationFailed"):
        why = st.get("message") or st.get("reason") or f"job status {job}"
        return out(KubeState.FAILED, f"{deploy}: {why}")
    evicted = conds.get("Evicted") or conds.get("Preempted")
    if evicted is not None and (suspended or deploy in ("Suspending", "Suspended")):
        return out(
            KubeState.PREEMPTED,
            f"evicted by Kueue ({evicted.get('reason', '?')}: {evicted.get('message', '')}); "
            "resumes from its checkpoints when re-admitted",
        )
    if deploy in ("Suspending", "Suspended"):
        return out(KubeState.SUSPENDED, f"RayJob {deploy.lower()}")
    if deploy == "Retrying":
        return out(KubeState.RETRYING, f"attempt failed ({failed} so far); starting a new cluster")
    if deploy == "Running":
        return out(KubeState.RUNNING, f"Ray job {job or 'PENDING'}")
    if "Admitted" in conds or (
        not suspended
        and deploy in ("Initializing", "New", None)
        and workload is not None
        and "QuotaReserved" in conds
    ):
        return out(KubeState.ADMITTED, "admitted by Kueue; the Ray cluster is starting")
    if suspended or workload is not None:
        pending = ((workload or {}).get("status") or {}).get("conditions") or []
        why = next((c.get("message") for c in pending if c.get("type") == "QuotaReserved"), None)
        return out(KubeState.QUEUED, why or "waiting in Kueue for quota")
    return out(KubeState.ADMITTED, "not queued by Kueue; the Ray cluster is starting")
