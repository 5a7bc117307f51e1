"""Live placement on a 3-node fake-GPU Ray cluster (``ray.cluster_utils.Cluster``, 8 GPUs each).

The scenario runs in a subprocess with its own cluster, so the session-scoped local Ray of
other tests cannot interfere (and test order cannot break it). The subprocess prints one JSON
document; the test asserts on it. Run alone with: ``python tests/test_scheduling_cluster.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenario() -> dict:
    from tests.helpers import run_scenario

    return run_scenario(__file__, timeout=240)


@pytest.mark.slow
def test_inventory_reads_node_shapes(scenario):
    assert scenario["inventory"] == ["A100:8"] * 3


@pytest.mark.slow
def test_never_fitting_shape_rejected_at_submit(scenario):
    r = scenario["reject"]
    assert r["outcome"] == "REJECTED" and r["reason"] == "NEVER_FITS"
    assert "exceeds the largest node (8 GPUs)" in r["detail"]
    assert r["seconds"] < 5


@pytest.mark.slow
def test_two_gpu_workers_pack_as_planned(scenario):
    p = scenario["packed"]
    assert p["strategy"] == "STRICT_PACK"
    assert len(set(p["planned_nodes"])) == 1
    # Ray placed every bundle where the plan said, and each task saw 2 GPUs on that node
    assert p["ray_bundle_nodes"] == p["planned_nodes"]
    assert p["task_nodes"] == p["planned_nodes"]
    assert all(n == 2 for n in p["task_gpu_counts"])
    assert len({g for ids in p["task_gpu_ids"] for g in ids}) == 8  # 4 workers, 8 distinct GPUs


@pytest.mark.slow
def test_production_preempts_borrowed_backfill_then_backfill_resumes(scenario):
    s = scenario["preempt"]
    assert s["backfill_admissions"] == ["ADMITTED", "ADMITTED"]
    assert s["backfill_borrowed"] is True
    assert s["prod_first"]["outcome"] == "PREEMPT"
    assert s["prod_first"]["victims"] == [s["victim"]]
    # the unit yielded at a step boundary after a checkpoint, not at the start
    assert s["yield_result"]["yielded"] and s["yield_result"]["step"] >= 5
    # the production unit was admitted by the single cycle the victim's release triggered
    assert s["prod_after_release"]["outcome"] == "ADMITTED"
    assert s["cycles_between"] == 1
    assert s["prod_nodes"] == s["victim_nodes"]
    assert s["prod_pg_ready"] is True
    assert s["victim_requeued"]["outcome"] == "QUEUED"
    # after production finished, the backfill unit was re-admitted and resumed from its step
    assert s["victim_readmitted"]["outcome"] == "ADMITTED"
    assert s["resume_result"]["first_step"] == s["yield_result"]["step"] + 1
    assert s["resume_result"]["step"] == s["total_steps"]
    assert s["resume_result"]["steps_run"] == s["total_steps"] - s["yield_result"]["step"]


@pytest.mark.slow
def test_quota_without_borrowing_holds_even_with_idle_gpus(scenario):
    q = scenario["quota"]
    assert q["first"] == "ADMITTED"
    assert q["second"]["outcome"] == "QUEUED" and q["second"]["reason"] == "QUOTA_EXHAUSTED"
    assert q["free_gpus_then"] >= 2


@pytest.mark.slow
def test_cluster_status_cli_reports_live_nodes(scenario):
    st = scenario["status_cli"]
    assert st["exit_code"] == 0
    assert len(st["nodes"]) == 3
    assert sum(n["used_gpus"] for n in st["nodes"]) == st["expected_used"]
    assert st["stranded_gpus"] >= 0 and "queued_shapes" in st


# --- the scenario (runs in the subprocess) ---------------------------------------------------
def _backfill_unit(scheduler, workload_id: str, ckpt: str, total_steps: int, step_s: float):
    """A stand-in training unit: steps, checks for a yield request at each step boundary,
    checkpoints (step number) and stops when asked; resumes from the checkpoint."""
    import ray

    start = 0
    if os.path.exists(ckpt):
        with open(ckpt) as f:
            start = json.load(f)["step"]
    step = start
    while step < total_steps:
        time.sleep(step_s)
        step += 1
        with open(ckpt + ".progress", "w") as f:
            f.write(str(step))
        if ray.get(scheduler.yield_requested.remote(workload_id)):
            tmp = ckpt + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"step": step}, f)
            os.replace(tmp, ckpt)  # atomic: the checkpoint is whole or absent
            return {"yielded": True, "step": step, "first_step": start + 1}
    return {"yielded": False, "step": step, "first_step": start + 1, "steps_run": step - start}


def _where():
    import ray

    return {
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


def main() -> dict:
    import ray
    from ray.util.placement_group import placement_group_table

    from rayorch.scheduling.client import get_scheduler, run_in_placement_group
    from rayorch.scheduling.inventory import read_nodes
    from rayorch.scheduling.model import Request
    from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
    from rayorch.scheduling.shapes import parse_job_shape
    from tests.helpers import fake_gpu_cluster

    out: dict = {}
    marks: dict = {}
    t_start = time.monotonic()
    with fake_gpu_cluster(3, num_cpus=4):
        marks["nodes_up"] = time.monotonic() - t_start
        spec = ClusterSpec(
            namespaces={
                "prod": NamespaceQuota(gpus=16, cpus=8, max_concurrent_units=4),
                "bf": NamespaceQuota(gpus=8, cpus=4, max_concurrent_units=8, can_borrow=True),
                "fixed": NamespaceQuota(gpus=2, cpus=2, can_borrow=False),
            },
            scheduling_cycle_s=0.2,
        )
        sched = get_scheduler(spec)
        out["inventory"] = [str(n.shape) for n in read_nodes()]

        def req(wid, shape, ns="bf", prio=PriorityClass.BACKFILL, cpus=0.5):
            return Request(wid, ns, parse_job_shape(shape, cpus), prio)

        # 1. plan-time rejection
        t0 = time.monotonic()
        a = ray.get(sched.submit.remote(req("too-big", "1x16")))
        out["reject"] = {**a.to_dict(), "seconds": time.monotonic() - t0}

        # 2. a 2-GPU-per-worker job packs onto one node as planned
        a = ray.get(sched.submit.remote(req("bf-packed", "4x2")))
        pg = ray.get(sched.placement_group.remote("bf-packed"))
        ray.get(pg.ready(), timeout=30)
        where = ray.remote(_where)
        refs = [
            run_in_placement_group(where, pg, bundle_index=i, num_gpus=2, num_cpus=0.5)
            for i in range(4)
        ]
        seen = ray.get(refs, timeout=60)
        table = placement_group_table(pg)
        out["packed"] = {
            "strategy": a.placement.strategy.value,
            "planned_nodes": [b.node_id for b in a.placement.bundles],
            "ray_bundle_nodes": [table["bundles_to_node_id"][i] for i in range(4)],
            "task_nodes": [s["node"] for s in seen],
            "task_gpu_counts": [len(s["gpu_ids"]) for s in seen],
            "task_gpu_ids": [[f"{s['node']}:{g}" for g in s["gpu_ids"]] for s in seen],
        }

        marks["packed"] = time.monotonic() - t_start
        # 3. backfill borrows the rest of the cluster; production reclaims it
        bf = [ray.get(sched.submit.remote(req(f"bf-{i}", "1x8"))) for i in range(2)]
        status = ray.get(sched.status.remote())
        victim_guess = bf[-1].workload_id
        borrowed = any(r["borrowed"] for r in status["running"] if r["namespace"] == "bf")
        victim_pg = ray.get(sched.placement_group.remote(victim_guess))
        ray.get(victim_pg.ready(), timeout=30)
        ckpt = os.path.join(tempfile.mkdtemp(), "bf-unit.ckpt.json")
        total = 40
        unit = ray.remote(_backfill_unit)
        running = run_in_placement_group(
            unit, victim_pg, sched, victim_guess, ckpt, total, 0.05, num_gpus=8, num_cpus=0.5
        )
        progress = ckpt + ".progress"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # let it take a few steps first
            if os.path.exists(progress) and int(Path(progress).read_text() or 0) >= 5:
                break
            time.sleep(0.05)
        marks["unit_started"] = time.monotonic() - t_start
        prod_first = ray.get(
            sched.submit.remote(req("prod-daily", "1x8", "prod", PriorityClass.PRODUCTION))
        )
        victim = prod_first.victims[0] if prod_first.victims else None
        victim_nodes = [b.node_id for b in ray.get(sched.placement.remote(victim)).bundles]
        yield_result = ray.get(running, timeout=60)
        cycles_before = ray.get(sched.cycles.remote())
        requeued = ray.get(sched.release.remote(victim, requeue=True))
        cycles_after = ray.get(sched.cycles.remote())
        prod_after = ray.get(sched.poll.remote("prod-daily"))  # reads the decision (+1 cycle)
        prod_pg = ray.get(sched.placement_group.remote("prod-daily"))
        prod_ready = ray.get(prod_pg.ready(), timeout=30) is not None
        # production finishes; the backfill unit is re-admitted and resumes
        readmitted = ray.get(sched.release.remote("prod-daily"))
        readmitted = ray.get(sched.poll.remote(victim))
        victim_pg = ray.get(sched.placement_group.remote(victim))
        ray.get(victim_pg.ready(), timeout=30)
        resume = ray.get(
            run_in_placement_group(
                unit, victim_pg, sched, victim, ckpt, total, 0.01, num_gpus=8, num_cpus=0.5
            ),
            timeout=60,
        )
        out["preempt"] = {
            "backfill_admissions": [x.outcome.value for x in bf],
            "backfill_borrowed": borrowed,
            "prod_first": prod_first.to_dict(),
            "victim": victim,
            "victim_nodes": victim_nodes,
            "yield_result": yield_result,
            "cycles_between": cycles_after - cycles_before,
            "victim_requeued": requeued.to_dict(),
            "prod_after_release": prod_after.to_dict(),
            "prod_nodes": [b.node_id for b in prod_after.placement.bundles],
            "prod_pg_ready": prod_ready,
            "victim_readmitted": readmitted.to_dict(),
            "resume_result": resume,
            "total_steps": total,
        }

        marks["preempt_done"] = time.monotonic() - t_start
        # 4. a namespace without borrowing stays inside its quota with GPUs idle
        for wid in ("bf-packed", "bf-0", victim):
            ray.get(sched.release.remote(wid))
        first = ray.get(sched.submit.remote(req("fixed-1", "1x2", "fixed")))
        second = ray.get(sched.submit.remote(req("fixed-2", "1x2", "fixed")))
        st = ray.get(sched.status.remote())
        out["quota"] = {
            "first": first.outcome.value,
            "second": second.to_dict(),
            "free_gpus_then": st["free_gpus"],
        }

        # 5. `rayorch cluster status --json` against the live scheduler
        from typer.testing import CliRunner

        from rayorch.cli.app import app

        res = CliRunner().invoke(app, ["cluster", "status", "--json"])
        doc = json.loads(res.stdout) if res.exit_code == 0 else {}
        out["status_cli"] = {
            "exit_code": res.exit_code,
            "output": res.stdout[-500:],
            "expected_used": 2,
            **doc,
        }
    marks["total"] = time.monotonic() - t_start
    out["timings"] = marks
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(main(), default=str))
