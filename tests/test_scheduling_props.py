"""Property tests (hypothesis) of the scheduling invariants, in the simulator, on the same pure
``schedule``/``admit``/``place`` code the live scheduler actor runs.

Random clusters (2-4 nodes of 4 or 8 GPUs), quotas (production's covers all of its daily jobs
at once; backfill's anything from 0 to the rest) and workloads (production shapes, arrivals,
durations; one or more backfills of mostly small units). Asserted on every example:

* no node is ever over-committed, and no namespace holds more than its quota plus its declared
  borrowing (``SimResult.violations`` is empty);
* production's demand fits its nominal quota by construction, so every production request
  starts within the yield latency plus two scheduling cycles, and none misses its deadline;
* no unit is preempted more than twice within any hour.

Counter-examples hypothesis shrinks become table tests in tests/test_scheduling_sla.py.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayorch.scheduling.admission import RAYORCH
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
from rayorch.scheduling.shapes import JobShape, NodeShape
from rayorch.scheduling.simulator import simulate
from rayorch.scheduling.workload import HOUR, SimJob

YIELD_S, CYCLE_S = 60.0, 1.0


@st.composite
def workloads(draw):
    g = draw(st.sampled_from([4, 8]))
    n = draw(st.integers(2, 4))
    total = g * n
    prod_quota = g * draw(st.integers(1, max(1, n // 2)))
    bf_quota = draw(st.integers(0, total - prod_quota))
    spec = ClusterSpec(
        namespaces={
            "production": NamespaceQuota(
                gpus=prod_quota, cpus=10**3, max_concurrent_units=16, can_borrow=True
            ),
            "backfill": NamespaceQuota(
                gpus=bf_quota, cpus=10**4, max_concurrent_units=1000, can_borrow=True
            ),
        },
        scheduling_cycle_s=CYCLE_S,
    )
    menu = [JobShape(1, 2), JobShape(2, 2), JobShape(1, g), JobShape(2, g // 2), JobShape(1, 4)]
    prod_shapes = draw(st.lists(st.sampled_from(menu), min_size=1, max_size=3))
    kept, used = [], 0
    for s in prod_shapes:  # production's total demand inside its nominal quota
        if used + s.total_gpus <= prod_quota:
            kept.append(s)
            used += s.total_gpus
    jobs = []
    for i, s in enumerate(kept):
        at = draw(st.floats(0.5, 20.0))
        dur = draw(st.floats(0.25, 2.0))
        for day in range(2):
            t = (day * 24 + at) * HOUR
            jobs.append(
                SimJob(
                    f"p{i}/d{day}",
                    "production",
                    PriorityClass.PRODUCTION,
                    s,
                    t,
                    dur * HOUR,
                    t + (dur + 0.5) * HOUR,
                )
            )
    units = draw(
        st.lists(
            st.tuples(
                st.sampled_from([JobShape(1, 2), JobShape(1, 2), JobShape(1, 4), JobShape(1, g)]),
                st.floats(0.25, 4.0),
                st.floats(0.0, 30.0),
            ),
            min_size=4,
            max_size=60,
        )
    )
    for j, (s, h, at) in enumerate(units):
        jobs.append(SimJob(f"b/u{j}", "backfill", PriorityClass.BACKFILL, s, at * HOUR, h * HOUR))
    jobs.sort(key=lambda x: (x.submit_at, x.job_id))
    return spec, tuple(NodeShape(g, 64.0, "A100") for _ in range(n)), jobs


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(workloads())
def test_scheduling_invariants_hold_on_random_workloads(w):
    spec, nodes, jobs = w
    r = simulate(spec, nodes, jobs, RAYORCH, YIELD_S, 30.0)
    assert r.violations == []
    waits = r.production_waits_min
    assert len(waits) == r.production_jobs
    assert max(waits.values()) * 60 <= YIELD_S + 2 * CYCLE_S, waits
    assert r.deadline_misses == 0, r.production_lateness_min
    assert r.max_preemptions_per_unit_hour <= RAYORCH.max_preemptions_per_hour
