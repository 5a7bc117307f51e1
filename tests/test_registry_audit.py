"""The promotion audit log on SQLite and PostgreSQL: phases, history, the cross-process lock.

PostgreSQL runs when RAYORCH_TEST_PG_URL is set. These tests only add rows under a unique
registry name to their own ``registry_promotions`` table; they never drop anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rayorch.errors import IllegalTransitionError
from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import AuditLog, Phase, who_am_i
from rayorch.registry.decisions import (
    PromotionDecision,
    PromotionOutcome,
    PromotionRequest,
)
from rayorch.spec import GatesSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = os.environ.get("RAYORCH_TEST_PG_URL")
    if not url:
        pytest.skip("RAYORCH_TEST_PG_URL not set: PostgreSQL audit tests need a server")
    return url


def _decision(outcome: PromotionOutcome, current: str | None, target: str) -> PromotionDecision:
    return PromotionDecision(outcome, (f"{outcome.value} test",), current, target)


def test_phases_history_and_illegal_transitions(db_url):
    reg = f"sqlite:///registry-{uuid.uuid4().hex}"
    log = AuditLog(db_url)
    try:
        who = who_am_i("test")
        r1 = PromotionRequest("m", "1", "production", None, who=who)
        key = AliasKey(reg, "m", "production")
        a = log.record(
            reg, r1, _decision(PromotionOutcome.APPLIED, None, "1"), GatesSpec(), "d" * 64, None
        )
        assert log.recorded(key).pending  # claimed with the STARTED row
        assert log.get(a).phase is Phase.STARTED  # write-ahead: not finished before the move
        assert [r.id for r in log.started(reg)] == [a]
        log.transition(a, Phase.FINISHED, key=key)
        assert (log.recorded(key).version, log.recorded(key).pending) == ("1", False)
        with pytest.raises(IllegalTransitionError) as err:
            log.transition(a, Phase.ROLLED_BACK)
        assert err.value.fields["phase"] == "FINISHED"

        r2 = PromotionRequest("m", "2", "production", "7", who=who)
        c = log.record(reg, r2, _decision(PromotionOutcome.CONFLICT, "1", "2"), GatesSpec(), None)
        assert log.get(c).phase is Phase.FINISHED  # nothing to move: final at once
        b = log.record(
            reg, PromotionRequest("m", "2", "production", "1", who=who),
            _decision(PromotionOutcome.APPLIED, "1", "2"), GatesSpec(max_loss_ratio=2.0), None,
            log.recorded(key),
        )  # fmt: skip
        assert log.recorded(key).version == "2"
        log.transition(b, Phase.ROLLED_BACK, "alias names 1, not moved", key)
        assert log.recorded(key).version == "1"  # the claim was put back
        assert log.started(reg) == []

        hist = log.history(reg, "m")
        assert [(h.id, h.outcome, h.phase) for h in hist] == [
            (a, PromotionOutcome.APPLIED, Phase.FINISHED),
            (c, PromotionOutcome.CONFLICT, Phase.FINISHED),
            (b, PromotionOutcome.APPLIED, Phase.ROLLED_BACK),
        ]
        assert [h.moved_alias for h in hist] == [True, False, False]
        assert hist[2].reasons[-1] == "alias names 1, not moved"
        assert hist[2].gates["max_loss_ratio"] == 2.0
        assert hist[0].who["pid"] == os.getpid() and hist[0].who["via"] == "test"
        assert hist[1].expected == "7" and hist[1].from_version == "1"
        assert [h.id for h in log.history(reg, "m", limit=2)] == [c, b]
        # only the applied-and-finished moves feed rollback
        steps = log.applied_steps(reg, "m", "production")
        assert [(s.from_version, s.to_version) for s in steps] == [(None, "1")]
        assert log.history(reg, "other") == []
    finally:
        log.close()


WORKER = r"""
import sys
import time
from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import AuditLog, Phase
from rayorch.registry.decisions import PromotionDecision, PromotionOutcome, PromotionRequest
from rayorch.spec import GatesSpec
key = AliasKey(sys.argv[2], "m", "production")
url, reg, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = AuditLog(url)
while time.time() < float(sys.argv[4]):  # start together
    time.sleep(0.001)
for _ in range(n):
    with log.lock(reg, "m"):
        steps = log.applied_steps(reg, "m", "production")  # read ...
        cur = steps[-1].to_version if steps else "0"
        nxt = str(int(cur) + 1)
        time.sleep(0.002)  # widen the window a lost update needs
        d = PromotionDecision(PromotionOutcome.APPLIED, (), cur, nxt)
        req = PromotionRequest("m", nxt, "production", cur)
        rid = log.record(reg, req, d, GatesSpec(), None, log.recorded(key))  # claims the row
        log.transition(rid, Phase.FINISHED, key=key)  # ... then write: only safe under the lock
print("ok")
"""


def test_lock_serializes_read_then_write_across_processes(db_url, tmp_path):
    """4 processes x 10 read-modify-write promotions: one unbroken chain 0 -> 40.

    Without ``log.lock`` the same workers lose updates (two rows from the same version).
    """
    reg = f"sqlite:///registry-{uuid.uuid4().hex}"
    AuditLog(db_url).close()  # create the table once, up front
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = str(time.time() + 4.0)
    procs = [
        subprocess.Popen([sys.executable, str(script), db_url, reg, "10", start], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    for p in procs:
        _outs, errs = p.communicate(timeout=120)
        assert p.returncode == 0, errs[-2000:]
    log = AuditLog(db_url)
    try:
        steps = log.applied_steps(reg, "m", "production")
        assert [(s.from_version, s.to_version) for s in steps] == [
            (str(i), str(i + 1)) for i in range(40)
        ]
        row = log.recorded(AliasKey(reg, "m", "production"))
        assert (row.version, row.revision, row.pending) == ("40", 40, False)
        assert (
            json.loads(json.dumps([h.to_dict() for h in log.history(reg, "m")]))[-1]["to_version"]
            == "40"
        )
    finally:
        log.close()
