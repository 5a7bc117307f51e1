"""Who is dead: the pure judgement of a backfill owner, table-driven."""

from __future__ import annotations

import os

import pytest

from rayorch.ledger.liveness import current_owner, observe, process_started_at
from rayorch.ledger.owners import Liveness, LivenessReason, Observation, OwnerInfo, judge_owner

HERE = "host-a"
OWNER = OwnerInfo(HERE, 4242, 1000.0)
JOB_OWNER = OwnerInfo("host-b", 7, 5.0, ray_job_id="02000000")

CASES = [
    # owner, observation, heartbeat age, expected liveness, reason
    (OWNER, Observation(HERE, 1000.0), 1, Liveness.ALIVE, LivenessReason.PROCESS_RUNNING),
    (OWNER, Observation(HERE, 1000.01), 1, Liveness.ALIVE, LivenessReason.PROCESS_RUNNING),
    (OWNER, Observation(HERE, None), 1, Liveness.DEAD, LivenessReason.PROCESS_GONE),
    (OWNER, Observation(HERE, 2000.0), 1, Liveness.DEAD, LivenessReason.PID_REUSED),
    (OWNER, Observation("host-z", None), 1, Liveness.UNKNOWN, LivenessReason.OTHER_HOST),
    (OWNER, Observation("host-z", None), 61, Liveness.DEAD, LivenessReason.HEARTBEAT_EXPIRED),
    (OWNER, Observation(HERE, 1000.0), 61, Liveness.DEAD, LivenessReason.HEARTBEAT_EXPIRED),
    (JOB_OWNER, Observation(HERE, None, job_running=True), 1, Liveness.ALIVE, LivenessReason.JOB_RUNNING),
    (JOB_OWNER, Observation(HERE, None, job_running=False), 1, Liveness.DEAD, LivenessReason.JOB_ENDED),
    (JOB_OWNER, Observation(HERE, None, job_running=None), 1, Liveness.UNKNOWN, LivenessReason.OTHER_HOST),
]  # fmt: skip


@pytest.mark.parametrize(("owner", "seen", "age", "liveness", "reason"), CASES)
def test_judge_owner(owner, seen, age, liveness, reason):
    v = judge_owner(owner, seen, heartbeat_age_s=age, lease_s=60)
    assert (v.liveness, v.reason) == (liveness, reason)
    assert v.dead is (liveness is Liveness.DEAD)


def test_observing_this_process_and_a_gone_one():
    me = current_owner()
    assert me.pid == os.getpid() and me.started_at == process_started_at(os.getpid())
    seen = observe(me)
    assert judge_owner(me, seen, heartbeat_age_s=0, lease_s=60).liveness is Liveness.ALIVE
    gone = OwnerInfo(me.host, 2**22 + 12345, 1.0)  # above the default pid_max: no such process
    assert judge_owner(gone, observe(gone), heartbeat_age_s=0, lease_s=60).dead
