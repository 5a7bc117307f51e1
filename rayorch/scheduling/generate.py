"""Random seed-like workloads: small GPU clusters, daily production jobs that fit production's
guaranteed quota, and backfills of mostly small units that keep the cluster busy.

Issue #16's family: 2-5 nodes of 4 or 8 GPUs; production's total demand (all its daily jobs at
once) inside its nominal quota, often one whole-node job; one to three backfills of mostly
2-GPU units (some 4s and whole nodes) that borrow whatever production does not use. Used by the
benchmark and by the property tests, so both exercise the same family. Pure and deterministic
per seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
from rayorch.scheduling.shapes import JobShape, NodeShape
from rayorch.scheduling.workload import HOUR, SimJob


@dataclass(frozen=True, slots=True)
class GeneratedWorkload:
    seed: int
    spec: ClusterSpec
    nodes: tuple[NodeShape, ...]
    jobs: tuple[SimJob, ...]
    yield_latency_s: float
    resume_overhead_s: float

    def describe(self) -> str:
        sizes = sorted({n.gpus for n in self.nodes})
        prod = sorted({str(j.shape) for j in self.jobs if j.priority is PriorityClass.PRODUCTION})
        return (
            f"seed {self.seed}: {len(self.nodes)} nodes ({'/'.join(map(str, sizes))} GPUs), "
            f"production {', '.join(prod)} in {self.spec.namespaces['production'].gpus} GPUs, "
            f"{sum(1 for j in self.jobs if j.priority is PriorityClass.BACKFILL)} backfill units"
        )


def _prod_shapes(rng: random.Random, node_gpus: int, quota: int) -> list[JobShape]:
    """Daily production shapes, total <= quota, each fitting one node; often a whole node."""
    out: list[JobShape] = []
    if rng.random() < 0.7:
        out.append(JobShape(1, node_gpus))
    menu = [JobShape(1, 2), JobShape(2, 2), JobShape(1, 4), JobShape(2, node_gpus // 2)]
    if node_gpus >= 8:
        menu.append(JobShape(4, 2))
    for _ in range(rng.randint(1, 3)):
        s = rng.choice(menu)
        if sum(x.total_gpus for x in out) + s.total_gpus <= quota:
            out.append(s)
    if not out:
        out.append(JobShape(1, 2))
    return out


def random_workload(seed: int, days: int = 7, cycle_s: float = 1.0) -> GeneratedWorkload:
    rng = random.Random(seed)
    node_gpus = rng.choice([4, 8, 8])
    n_nodes = rng.randint(2, 5)
    nodes = tuple(NodeShape(node_gpus, 32.0, "A100") for _ in range(n_nodes))
    total = node_gpus * n_nodes
    prod_quota = max(node_gpus, (total // 2) // node_gpus * node_gpus)
    bf_quota = rng.randint(0, total - prod_quota)
    spec = ClusterSpec(
        namespaces={
            "production": NamespaceQuota(
                gpus=prod_quota, cpus=64, max_concurrent_units=16, can_borrow=True
            ),
            "backfill": NamespaceQuota(
                gpus=bf_quota, cpus=10**4, max_concurrent_units=1000, can_borrow=True
            ),
        },
        scheduling_cycle_s=cycle_s,
    )
    jobs: list[SimJob] = []
    for i, shape in enumerate(_prod_shapes(rng, node_gpus, prod_quota)):
        at = rng.uniform(0, 20)
        dur = rng.uniform(0.5, 3.0)
        for day in range(days):
            t = day * 24 * HOUR + at * HOUR
            jobs.append(
                SimJob(
                    f"prod{i}-{shape}/day{day}",
                    "production",
                    PriorityClass.PRODUCTION,
                    shape,
                    t,
                    dur * HOUR,
                    t + (dur + rng.choice([0.5, 1.0, 2.0])) * HOUR,
                )
            )
    small = [JobShape(1, 2)] * 6 + [JobShape(1, min(4, node_gpus))] * 2 + [JobShape(1, node_gpus)]
    for b in range(rng.randint(1, 3)):
        submit = rng.uniform(0, 2) * HOUR
        mean_h = rng.uniform(0.5, 3.0)
        # enough work to keep the cluster busy for the whole simulated time
        n_units = int(total * days * 24 / mean_h / 2.5 / (b + 1)) + 4
        for u in range(n_units):
            jobs.append(
                SimJob(
                    f"bf{b}/u{u:05d}",
                    "backfill",
                    PriorityClass.BACKFILL,
                    rng.choice(small),
                    submit,
                    mean_h * HOUR * rng.uniform(0.5, 1.5),
                )
            )
    jobs.sort(key=lambda j: (j.submit_at, j.job_id))
    return GeneratedWorkload(seed, spec, nodes, tuple(jobs), 60.0, 30.0)
