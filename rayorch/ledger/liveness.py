"""Observing a backfill owner: this process's identity, another process's start time, a Ray
job's status. The rules that judge what is observed are pure, in :mod:`rayorch.ledger.owners`.
"""

from __future__ import annotations

import os
import socket

from rayorch.ledger.owners import Observation, OwnerInfo


def process_started_at(pid: int) -> float | None:
    """Start time of process ``pid`` on this host, or None when there is none (or a zombie)."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(p.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def current_owner(ray_job_id: str | None = None) -> OwnerInfo:
    pid = os.getpid()
    return OwnerInfo(socket.gethostname(), pid, process_started_at(pid) or 0.0, ray_job_id)


def ray_job_running(job_id: str) -> bool | None:
    """Whether Ray job ``job_id`` (hex) is still running, through Ray's public state API.

    None when it cannot be told (Ray not connected, no dashboard, job unknown)."""
    try:
        import ray
        from ray.util.state import list_jobs

        if not ray.is_initialized():
            return None
        jobs = list_jobs(filters=[("job_id", "=", job_id)], timeout=5)
    except Exception:
        return None
    if not jobs:
        return None
    job = jobs[0]
    status = str(getattr(job, "status", "") or "").upper()
    if status:
        return status in ("PENDING", "RUNNING")
    driver = getattr(job, "driver_info", None)
    return None if driver is None else not bool(getattr(driver, "is_dead", False))


def observe(owner: OwnerInfo) -> Observation:
    here = socket.gethostname()
    started = process_started_at(owner.pid) if owner.host == here else None
    job = ray_job_running(owner.ray_job_id) if owner.ray_job_id else None
    return Observation(here, started, job)
