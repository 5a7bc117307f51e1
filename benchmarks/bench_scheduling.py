"""Scheduling benchmark: the simulator on 3x8-GPU nodes (90-day backfill + daily production
jobs), rayorch vs first-fit vs FIFO in one run, and raw admission decisions per second.

    python benchmarks/bench_scheduling.py [--json] [--cluster ...] [--workload ...]

Targets (issue #5): utilization while work is queued >= 95%, production deadline misses 0
(rayorch policy), admission >= 1,000 decisions/s on 2 cores (Kueue's perf test: ~43/s).
Pure Python, no Ray: needs no cluster and no lock.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rayorch.scheduling.admission import POLICIES, RAYORCH, AdmissionOutcome, admit  # noqa: E402
from rayorch.scheduling.model import (  # noqa: E402
    NodeState,
    Request,
    RunningWorkload,
    Snapshot,
    apply_placement,
)
from rayorch.scheduling.quota import PriorityClass, load_cluster  # noqa: E402
from rayorch.scheduling.shapes import parse_job_shape  # noqa: E402
from rayorch.scheduling.simulator import simulate  # noqa: E402
from rayorch.scheduling.workload import expand, load_workload  # noqa: E402

SHAPES = ["1x2", "1x4", "2x2", "1x8", "2x4", "4x2", "1x16"]


def bench_admission(spec, seconds: float = 2.0, seed: int = 1) -> dict:
    """admit() on a busy 3x8 cluster: mixed shapes, namespaces and priorities, so the stream
    includes admissions, queueing, borrowing, preemption searches and rejections."""
    rng = random.Random(seed)
    base = tuple(NodeState.empty(f"node-{i}", s) for i, s in enumerate(spec.node_shapes()))
    snaps = []
    for k in range(16):  # a pool of snapshots with 0..20 running units
        snap = Snapshot(spec, base)
        for j in range(rng.randint(0, 20)):
            ns = rng.choice(["production", "backfill", "backfill"])
            prio = PriorityClass.PRODUCTION if ns == "production" else PriorityClass.BACKFILL
            r = Request(f"r{k}-{j}", ns, parse_job_shape(rng.choice(SHAPES[:6])), prio)
            a = admit(r, snap)
            if a.outcome is AdmissionOutcome.ADMITTED:
                snap = Snapshot(
                    spec,
                    apply_placement(snap.nodes, a.placement),
                    (
                        *snap.running,
                        RunningWorkload(r.workload_id, ns, prio, a.placement, float(j)),
                    ),
                )
        snaps.append(snap)
    reqs = []
    for i in range(512):
        ns = rng.choice(["production", "backfill"])
        prio = PriorityClass.PRODUCTION if ns == "production" else PriorityClass.BACKFILL
        reqs.append(
            Request(
                f"q{i}",
                ns,
                parse_job_shape(rng.choice(SHAPES)),
                prio,
                allow_reshape=rng.random() < 0.3,
            )
        )
    outcomes: dict[str, int] = {}
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(256):
            a = admit(reqs[n % len(reqs)], snaps[n % len(snaps)], RAYORCH)
            outcomes[a.outcome.value] = outcomes.get(a.outcome.value, 0) + 1
            n += 1
    dt = time.perf_counter() - t0
    return {
        "decisions": n,
        "seconds": round(dt, 3),
        "decisions_per_s": round(n / dt),
        "outcomes": outcomes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default=str(REPO / "configs" / "cluster.yaml"))
    ap.add_argument("--workload", default=str(REPO / "configs" / "workloads" / "fraud-90d.yaml"))
    ap.add_argument("--seconds", type=float, default=2.0, help="Admission benchmark duration.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_cluster(args.cluster)
    wl = load_workload(args.workload)
    jobs = expand(wl)
    sims = {
        name: simulate(spec, spec.node_shapes(), jobs, p, wl.yield_latency_s, wl.resume_overhead_s)
        for name, p in POLICIES.items()
    }
    adm = bench_admission(spec, args.seconds)
    r = sims["rayorch"]
    targets = {
        "util_while_queued>=0.95": r.util_while_queued >= 0.95,
        "deadline_misses==0": r.deadline_misses == 0,
        "admission>=1000/s": adm["decisions_per_s"] >= 1000,
    }
    doc = {
        "nodes": [str(s) for s in spec.node_shapes()],
        "workload": wl.name,
        "jobs": len(jobs),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "simulation": {k: v.to_dict() for k, v in sims.items()},
        "admission": adm,
        "targets": targets,
    }
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(f"workload {wl.name}: {len(jobs)} jobs on {', '.join(doc['nodes'])}")
        print(f"{'metric':40s}" + "".join(f"{n:>12s}" for n in sims))
        rows = [
            ("GPU utilization while queued", lambda s: f"{s.util_while_queued:.1%}"),
            ("stranded GPUs per node (mean)", lambda s: f"{s.stranded_gpus_mean:.3f}"),
            (
                "stranded GPUs per node (worst node)",
                lambda s: f"{max(s.stranded_gpus_per_node.values()):.3f}",
            ),
            ("production wait mean (min)", lambda s: f"{s.production_wait_mean_min:.1f}"),
            ("production wait max (min)", lambda s: f"{s.production_wait_max_min:.1f}"),
            ("production deadline misses", lambda s: f"{s.deadline_misses}/{s.production_jobs}"),
            ("preemptions (checkpointed)", lambda s: str(s.preemptions)),
            ("backfill finished after (h)", lambda s: f"{s.backfill_done_h:.1f}"),
            ("simulation wall time (s)", lambda s: f"{s.wall_s:.2f}"),
        ]
        for label, fmt in rows:
            print(f"{label:40s}" + "".join(f"{fmt(s):>12s}" for s in sims.values()))
        print(
            f"admission: {adm['decisions_per_s']:,} decisions/s "
            f"({adm['decisions']:,} in {adm['seconds']}s; outcomes {adm['outcomes']})"
        )
        for k, ok in targets.items():
            print(f"target {k}: {'PASS' if ok else 'FAIL'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
