"""Who drives a backfill, and whether that driver is still alive.

Every backfill row records its owner: host, pid, the process start time (so a reused pid
does not look alive) and, under ``ray job submit``, the Ray job id. A newcomer judges the
owner with :func:`judge_owner` - a pure function of the recorded owner, what the newcomer can
observe (:class:`Observation`) and the database clock:

* ``DEAD``    - same host and the process is gone (or the pid now belongs to another
  process), or the owner's Ray job has ended, or the heartbeat is older than the backfill's
  stored lease: take over at once, with a higher owner epoch;
* ``ALIVE``   - same host and the very process still runs (or its Ray job still runs);
* ``UNKNOWN`` - another host and no job to ask: wait for the lease to run out.

Observing is the only effect (:mod:`rayorch.ledger.liveness`: psutil for the process table,
Ray's state API for the job); judging never touches anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

#: Process start times are compared with this tolerance (psutil rounds to 10 ms).
_START_TOLERANCE_S = 0.05


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """The driver process that owns a backfill (or claims for it)."""

    host: str
    pid: int
    started_at: float  # process start time (epoch seconds), so a reused pid is not "alive"
    ray_job_id: str | None = None

    def label(self) -> str:
        job = f" (Ray job {self.ray_job_id})" if self.ray_job_id else ""
        return f"{self.host}:{self.pid}{job}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "ray_job_id": self.ray_job_id,
        }


class Liveness(str, enum.Enum):
    ALIVE = "ALIVE"
    DEAD = "DEAD"
    UNKNOWN = "UNKNOWN"


class LivenessReason(str, enum.Enum):
    PROCESS_RUNNING = "the owner's process is running on this host"
    PROCESS_GONE = "the owner's process is gone from this host"
    PID_REUSED = "the owner's pid now belongs to another process"
    JOB_RUNNING = "the owner's Ray job is running"
    JOB_ENDED = "the owner's Ray job has ended"
    HEARTBEAT_EXPIRED = "the owner's heartbeat is older than the backfill's lease"
    OTHER_HOST = "the owner runs on another host and has no Ray job to ask"


@dataclass(frozen=True, slots=True)
class Observation:
    """What the newcomer saw of the owner: its process (same host only) and its Ray job."""

    host: str
    process_started_at: float | None = None  # None: no process with that pid here
    job_running: bool | None = None  # None: no job id, or its status could not be read


@dataclass(frozen=True, slots=True)
class Verdict:
    liveness: Liveness
    reason: LivenessReason

    @property
    def dead(self) -> bool:
        return self.liveness is Liveness.DEAD

    def describe(self) -> str:
        return f"{self.liveness.value}: {self.reason.value}"


def judge_owner(
    owner: OwnerInfo, seen: Observation, *, heartbeat_age_s: float, lease_s: float
) -> Verdict:
    """Is the owner alive? Pure; see the module docstring for the rules."""
    if heartbeat_age_s > lease_s:
        return Verdict(Liveness.DEAD, LivenessReason.HEARTBEAT_EXPIRED)
    if owner.ray_job_id and seen.job_running is not None:
        if not seen.job_running:
            return Verdict(Liveness.DEAD, LivenessReason.JOB_ENDED)
        if owner.host != seen.host:
            return Verdict(Liveness.ALIVE, LivenessReason.JOB_RUNNING)
    if owner.host != seen.host:
        return Verdict(Liveness.UNKNOWN, LivenessReason.OTHER_HOST)
    if seen.process_started_at is None:
        return Verdict(Liveness.DEAD, LivenessReason.PROCESS_GONE)
    if abs(seen.process_started_at - owner.started_at) > _START_TOLERANCE_S:
        return Verdict(Liveness.DEAD, LivenessReason.PID_REUSED)
    return Verdict(Liveness.ALIVE, LivenessReason.PROCESS_RUNNING)
