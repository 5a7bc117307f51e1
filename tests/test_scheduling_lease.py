"""Live: a SIGKILLed driver's admissions are reclaimed within one lease, and a production request
then gets in; a restarted scheduler actor rebuilds its state from the ledger database.

Fake GPUs: ``ray.cluster_utils.Cluster`` with 2 nodes x 8 GPUs, in a subprocess of its own (as
tests/test_scheduling_cluster.py). The "driver" is a second process holding two 1x8 backfill
admissions *inside* its namespace's quota (nothing may preempt them) and heartbeating; it is
killed with SIGKILL. Run alone with: ``python tests/test_scheduling_lease.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEASE_S = 4.0


@pytest.fixture(scope="module")
def scenario() -> dict:
    from tests.helpers import run_scenario

    return run_scenario(__file__, timeout=180)


@pytest.mark.slow
def test_killed_drivers_admissions_reclaimed_within_one_lease(scenario):
    s = scenario
    assert s["driver_admissions"] == ["ADMITTED", "ADMITTED"]
    assert s["prod_before_kill"]["outcome"] == "QUEUED"  # in-quota work: no preemption
    assert s["prod_before_kill"]["reason"] == "NO_CAPACITY"
    assert s["prod_after"]["outcome"] == "ADMITTED"
    assert s["reclaimed_after_s"] <= LEASE_S + 1.5
    assert s["expired"] == sorted(s["driver_ids"])
    assert s["prod_pg_ready"] is True


@pytest.mark.slow
def test_restarted_scheduler_rebuilds_from_the_database(scenario):
    r = scenario["restart"]
    assert r["pid_changed"] is True
    assert r["running"] == ["prod-1"]
    assert r["queued"] == ["bf-late"]
    assert r["prod_pg_found"] is True


# --- the scenario (runs in the subprocess) ---------------------------------------------------
DRIVER = """
import sys, time, ray
from rayorch.scheduling.client import get_scheduler
from rayorch.scheduling.model import Request
from rayorch.scheduling.quota import ClusterSpec
from rayorch.scheduling.shapes import parse_job_shape
ray.init(address=sys.argv[1], namespace="rayorch", log_to_driver=False, configure_logging=False)
spec = ClusterSpec.model_validate_json(sys.argv[2])
sched = get_scheduler(spec, db_url=sys.argv[3], lease_s=float(sys.argv[4]))
reqs = [Request(f"bf-{i}", "bf", parse_job_shape("1x8", 0.5), holder="driver") for i in range(2)]
out = ray.get(sched.submit_many.remote(reqs))
for a, pg in out:
    ray.get(pg.ready(), timeout=30)
print("READY " + ",".join(a.outcome.value for a, _ in out), flush=True)
while True:
    ray.get(sched.heartbeat.remote("driver"))
    time.sleep(0.5)
"""


def main() -> dict:
    import ray

    from rayorch.scheduling.client import get_scheduler
    from rayorch.scheduling.model import Request
    from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
    from rayorch.scheduling.shapes import parse_job_shape
    from tests.helpers import fake_gpu_cluster

    out: dict = {}
    db = f"sqlite:///{Path(tempfile.mkdtemp()) / 'ledger.db'}"
    driver = None
    with fake_gpu_cluster(2, num_cpus=2) as cluster:
        try:
            spec = ClusterSpec(
                namespaces={
                    "prod": NamespaceQuota(gpus=8, cpus=4, max_concurrent_units=4, can_borrow=True),
                    "bf": NamespaceQuota(gpus=16, cpus=4, max_concurrent_units=8),
                },
                scheduling_cycle_s=0.2,
            )
            sched = get_scheduler(spec, db_url=db, lease_s=LEASE_S)
            driver = subprocess.Popen(
                [sys.executable, "-c", DRIVER, cluster.address, spec.model_dump_json(), db, "4"],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            line = driver.stdout.readline().strip()
            out["driver_admissions"] = line.removeprefix("READY ").split(",")
            out["driver_ids"] = ["bf-0", "bf-1"]
            prod = Request("prod-1", "prod", parse_job_shape("1x8", 0.5), PriorityClass.PRODUCTION)
            out["prod_before_kill"] = ray.get(sched.submit.remote(prod)).to_dict()
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=10)
            killed = time.monotonic()
            a = None
            while time.monotonic() - killed < LEASE_S + 10:
                a = ray.get(sched.poll.remote("prod-1"))
                if a.outcome.value == "ADMITTED":
                    break
                time.sleep(0.1)
            out["reclaimed_after_s"] = time.monotonic() - killed
            out["prod_after"] = a.to_dict()
            pg = ray.get(sched.placement_group.remote("prod-1"))
            out["prod_pg_ready"] = ray.get(pg.ready(), timeout=30) is not None
            out["expired"] = sorted(
                e["workload_id"] for e in ray.get(sched.events.remote()) if e["event"] == "expired"
            )
            # restart: kill the actor process, Ray restarts it, it rebuilds from the database
            late = Request("bf-late", "bf", parse_job_shape("2x8", 0.5))
            ray.get(sched.submit.remote(late))
            pid = ray.get(sched.status.remote())["pid"]
            ray.kill(sched, no_restart=False)
            deadline = time.monotonic() + 60
            st = None
            while time.monotonic() < deadline:  # ray.kill is asynchronous: wait for the new process
                with contextlib.suppress(Exception):
                    st = ray.get(sched.status.remote(), timeout=10)
                    if st["pid"] != pid:
                        break
                time.sleep(0.2)
            pid2 = st["pid"]
            found = ray.get(sched.placement_group.remote("prod-1"))
            out["restart"] = {
                "pid_changed": pid != pid2,
                "running": sorted(r["workload_id"] for r in st["running"]),
                "queued": [q["workload_id"] for q in st["queue"]],
                "prod_pg_found": found.id == pg.id,
            }
        finally:
            if driver is not None and driver.poll() is None:
                driver.kill()
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(main(), default=str))
