"""Scheduling benchmark: the simulator on 3x8-GPU nodes (90-day backfill + daily production
jobs), issue #16's fragmented 4x8-GPU week, and a family of random seed-like workloads
(``rayorch.scheduling.generate``), rayorch vs first-fit vs FIFO, plus raw admission decisions
per second.

    python benchmarks/bench_scheduling.py [--json] [--random 25] [--days 7]

Targets: utilization while work is queued >= 95% (issue #5's workload); admission >= 1,000
decisions/s on 2 cores (Kueue's perf test: ~43/s); issue #16: rayorch has 0 deadline misses
and a production wait <= yield latency + 2 cycles on every generated workload (production's
demand always fits its quota there). Pure Python, no Ray: needs no cluster and no lock.
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
from rayorch.scheduling.generate import random_workload  # noqa: E402
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
from rayorch.scheduling.workload import expand, load_workload, node_shapes  # noqa: E402

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


def bench_random(n: int, days: int) -> dict:
    """Every policy on ``n`` generated workloads: misses, max production wait, preemptions
    per production job, utilization while queued (per workload and the worst case)."""
    rows = []
    for seed in range(n):
        g = random_workload(seed, days=days)
        bound_s = g.yield_latency_s + 2 * g.spec.scheduling_cycle_s
        per = {}
        for name, p in POLICIES.items():
            r = simulate(g.spec, g.nodes, g.jobs, p, g.yield_latency_s, g.resume_overhead_s)
            per[name] = {
                "misses": r.deadline_misses,
                "production_jobs": r.production_jobs,
                "max_wait_min": round(r.production_wait_max_min, 2),
                "preemptions_per_production_max": r.preemptions_per_production_max,
                "preemptions_per_production_mean": round(r.preemptions_per_production_mean, 2),
                "max_preemptions_per_unit_hour": r.max_preemptions_per_unit_hour,
                "util_while_queued": round(r.util_while_queued, 4),
                "violations": len(r.violations),
                "within_bound": r.production_wait_max_min * 60 <= bound_s
                and r.deadline_misses == 0,
                "decisions_per_s": round(r.decisions / r.wall_s) if r.wall_s else None,
            }
        rows.append({"workload": g.describe(), "bound_s": bound_s, "policies": per})
    return {"days": days, "workloads": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default=str(REPO / "configs" / "cluster.yaml"))
    ap.add_argument("--workload", default=str(REPO / "configs" / "workloads" / "fraud-90d.yaml"))
    ap.add_argument("--seconds", type=float, default=2.0, help="Admission benchmark duration.")
    ap.add_argument(
        "--fragmented", default=str(REPO / "configs" / "workloads" / "fragmented-4x8.yaml")
    )
    ap.add_argument("--random", type=int, default=25, help="Generated workloads (0: none).")
    ap.add_argument("--days", type=int, default=7, help="Simulated days per generated workload.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    spec = load_cluster(args.cluster)
    wl = load_workload(args.workload)
    jobs = expand(wl)
    sims = {
        name: simulate(
            spec, node_shapes(wl, spec), jobs, p, wl.yield_latency_s, wl.resume_overhead_s
        )
        for name, p in POLICIES.items()
    }
    fwl = load_workload(args.fragmented)
    fjobs = expand(fwl)
    frag = {
        name: simulate(
            spec, node_shapes(fwl, spec), fjobs, p, fwl.yield_latency_s, fwl.resume_overhead_s
        )
        for name, p in POLICIES.items()
    }
    rnd = bench_random(args.random, args.days) if args.random else {"workloads": []}
    adm = bench_admission(spec, args.seconds)
    r = sims["rayorch"]
    f = frag["rayorch"]
    bound = fwl.yield_latency_s + 2 * spec.scheduling_cycle_s
    targets = {
        "util_while_queued>=0.95": r.util_while_queued >= 0.95,
        "deadline_misses==0": r.deadline_misses == 0 and f.deadline_misses == 0,
        "fragmented: max production wait <= yield + 2 cycles": f.production_wait_max_min * 60
        <= bound,
        "random: every workload within bound": all(
            w["policies"]["rayorch"]["within_bound"] for w in rnd["workloads"]
        ),
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
        "fragmented": {k: v.to_dict() for k, v in frag.items()},
        "random": rnd,
        "admission": adm,
        "targets": targets,
    }
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(f"workload {wl.name}: {len(jobs)} jobs on {', '.join(doc['nodes'])}")
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
            (
                "preemptions per production job (max)",
                lambda s: str(s.preemptions_per_production_max),
            ),
            (
                "most preemptions of a unit in an hour",
                lambda s: str(s.max_preemptions_per_unit_hour),
            ),
            ("backfill finished after (h)", lambda s: f"{s.backfill_done_h or 0:.1f}"),
            ("simulation wall time (s)", lambda s: f"{s.wall_s:.2f}"),
        ]
        for title, res in ((wl.name, sims), (fwl.name + " (issue #16)", frag)):
            print(f"--- {title}")
            print(f"{'metric':40s}" + "".join(f"{n:>12s}" for n in res))
            for label, fmt in rows:
                print(f"{label:40s}" + "".join(f"{fmt(s):>12s}" for s in res.values()))
        if rnd["workloads"]:
            print(f"--- {len(rnd['workloads'])} generated workloads, {rnd['days']} days each")
            print(
                f"{'policy':14s}{'in bound':>10s}{'misses':>8s}{'max wait':>10s}"
                f"{'pre/prod max':>14s}{'pre/unit/h':>12s}{'util min':>10s}{'util mean':>10s}"
            )
            for name in POLICIES:
                ps = [w["policies"][name] for w in rnd["workloads"]]
                print(
                    f"{name:14s}{sum(p['within_bound'] for p in ps):>7d}/{len(ps):<2d}"
                    f"{sum(p['misses'] for p in ps):>8d}"
                    f"{max(p['max_wait_min'] for p in ps):>9.1f}m"
                    f"{max(p['preemptions_per_production_max'] for p in ps):>14d}"
                    f"{max(p['max_preemptions_per_unit_hour'] for p in ps):>12d}"
                    f"{min(p['util_while_queued'] for p in ps):>10.3f}"
                    f"{sum(p['util_while_queued'] for p in ps) / len(ps):>10.3f}"
                )
        print(
            f"admission: {adm['decisions_per_s']:,} decisions/s "
            f"({adm['decisions']:,} in {adm['seconds']}s; outcomes {adm['outcomes']})"
        )
        for k, ok in targets.items():
            print(f"target {k}: {'PASS' if ok else 'FAIL'}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
