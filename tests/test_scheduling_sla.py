"""Production SLAs under fragmentation (issue #16): nominated placements held while victims
drain, defragmenting moves, the per-unit preemption bound, deadline slack, and the controller's
durable leased state (in-process, SQLite, manual clock: no Ray, no sleeps)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rayorch.errors import ConfigError
from rayorch.scheduling.admission import RAYORCH, AdmissionOutcome, Reason, admit
from rayorch.scheduling.cycle import Reservation, queue_order, schedule
from rayorch.scheduling.model import (
    BundlePlacement,
    NodeState,
    PlacementPlan,
    Request,
    RunningWorkload,
    Snapshot,
    Strategy,
)
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
from rayorch.scheduling.shapes import JobShape, NodeShape, parse_job_shape

A100 = NodeShape(8, 16.0, "A100")
PROD, BF = PriorityClass.PRODUCTION, PriorityClass.BACKFILL


def spec(bf_gpus: int = 0) -> ClusterSpec:
    return ClusterSpec(
        namespaces={
            "prod": NamespaceQuota(gpus=16, cpus=32, max_concurrent_units=8, can_borrow=True),
            "bf": NamespaceQuota(gpus=bf_gpus, cpus=64, max_concurrent_units=64, can_borrow=True),
        }
    )


def req(wid: str, shape: str, ns: str = "bf", prio: PriorityClass = BF, **kw) -> Request:
    return Request(wid, ns, parse_job_shape(shape), prio, **kw)


def work(wid: str, node: str, gpus: int, ns: str = "bf", prio=BF, started=1.0, **kw):
    plan = PlacementPlan(JobShape(1, gpus), Strategy.STRICT_PACK, (BundlePlacement(node, gpus, 1),))
    return RunningWorkload(wid, ns, prio, plan, started_at=started, **kw)


def snap_of(sp: ClusterSpec, running: list[RunningWorkload], n: int = 2, now: float = 100.0):
    used: dict[str, tuple[int, float]] = {}
    for w in running:
        for b in w.placement.bundles:
            g, c = used.get(b.node_id, (0, 0.0))
            used[b.node_id] = (g + b.gpus, c + b.cpus)
    nodes = tuple(
        NodeState(
            f"n{i}",
            A100,
            8 - used.get(f"n{i}", (0, 0))[0],
            16.0 - used.get(f"n{i}", (0, 0.0))[1],
        )
        for i in range(n)
    )
    return Snapshot(sp, nodes, tuple(running), now)


# --- nomination: the fewest nodes, the cheapest victims there -----------------------------
def test_whole_node_job_is_nominated_one_node_and_only_its_victims():
    # n0: two borrowed 2-GPU units + 4 free; n1: four borrowed 2-GPU units
    running = [work("a", "n0", 2), work("b", "n0", 2)] + [work(f"c{i}", "n1", 2) for i in range(4)]
    a = admit(req("p", "1x8", "prod", PROD), snap_of(spec(), running))
    assert a.outcome is AdmissionOutcome.PREEMPT and a.reason is Reason.PREEMPTING
    assert sorted(a.victims) == ["a", "b"]  # n0 needs two victims, n1 four
    assert a.placement.gpus_by_node() == {"n0": 8}


def test_cheapest_victims_first_latest_started_then_most_slack():
    running = [
        work("old", "n0", 4, started=1.0),
        work("new", "n0", 4, started=50.0),
        work("x", "n1", 8, started=60.0),
    ]
    a = admit(req("p", "1x4", "prod", PROD), snap_of(spec(), running))
    assert a.victims == ("x",) or a.victims == ("new",)
    # the n0 pair and n1 tie on one victim each; fewer GPUs preempted wins: "new" (4 GPUs)
    assert a.victims == ("new",)


# --- reservation: what the victims free is held for the preemptor --------------------------
def test_freed_capacity_is_held_for_the_preemptor_not_given_to_queued_backfill():
    sp = spec()
    running = [work("a", "n0", 4), work("b", "n0", 4)] + [work(f"c{i}", "n1", 2) for i in range(4)]
    pending = [req("p", "1x8", "prod", PROD, submitted_at=5.0), req("q", "1x2", submitted_at=0.0)]
    r1 = schedule(pending, snap_of(sp, running), RAYORCH)
    p1 = r1.decisions[0]
    assert p1.outcome is AdmissionOutcome.PREEMPT and set(p1.victims) == {"a", "b"}
    assert set(r1.reservations) == {"p"}
    # "a" released; its 4 GPUs on n0 are free, but "q" (1x2) must not take them
    after = [replace(w, yielding=True) if w.workload_id == "b" else w for w in running[1:]]
    r2 = schedule(pending, snap_of(sp, after), RAYORCH, r1.reservations)
    by = {d.workload_id: d for d in r2.decisions}
    assert by["p"].reason is Reason.RESERVED and by["p"].victims == ("b",)
    assert by["q"].outcome is AdmissionOutcome.QUEUED
    # "b" released too: production is admitted on exactly the nominated node
    r3 = schedule(pending, snap_of(sp, running[2:]), RAYORCH, r2.reservations)
    by = {d.workload_id: d for d in r3.decisions}
    assert by["p"].outcome is AdmissionOutcome.ADMITTED
    assert by["p"].placement == p1.placement
    assert not r3.reservations


def test_reservation_dropped_when_its_node_is_gone():
    sp = spec()
    res = Reservation(
        "p",
        PlacementPlan(JobShape(1, 8), Strategy.STRICT_PACK, (BundlePlacement("gone", 8, 1),)),
        ("v",),
        0.0,
    )
    r = schedule([req("p", "1x8", "prod", PROD)], snap_of(sp, []), RAYORCH, {"p": res})
    assert r.decisions[0].outcome is AdmissionOutcome.ADMITTED  # decided afresh
    assert r.decisions[0].placement.gpus_by_node() != {"gone": 8}


# --- defragmentation -----------------------------------------------------------------------
def test_in_quota_backfill_spread_over_nodes_is_moved_to_make_a_whole_node():
    # backfill inside its 8-GPU quota, spread 4 + 4: production's quota is free, no node has 8
    sp = spec(bf_gpus=8)
    running = [work("a", "n0", 4), work("b", "n1", 4)]
    a = admit(req("p", "1x8", "prod", PROD), snap_of(sp, running))
    assert a.outcome is AdmissionOutcome.PREEMPT and a.reason is Reason.DEFRAGMENTING
    assert len(a.victims) == 1 and "move to other nodes" in a.detail


def test_in_quota_work_is_never_evicted_when_it_cannot_be_moved():
    sp = spec(bf_gpus=16)
    running = [work("a", "n0", 6), work("b", "n1", 6)]  # a 6-GPU unit fits nowhere else
    a = admit(req("p", "1x8", "prod", PROD), snap_of(sp, running))
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.NO_CAPACITY


# --- bounds and deadlines ------------------------------------------------------------------
@pytest.mark.parametrize(
    "history,victim",
    [
        ((), "a"),  # "a" is cheaper (started later)
        ((60.0, 90.0), "b"),  # "a" was preempted twice this hour: not a victim again
        ((-5000.0, 90.0), "a"),  # one of them is older than an hour
    ],
)
def test_a_unit_is_preempted_at_most_twice_an_hour(history, victim):
    running = [
        work("a", "n0", 8, started=50.0, preempted_at=history),
        work("b", "n1", 8, started=10.0),
    ]
    a = admit(req("p", "1x8", "prod", PROD), snap_of(spec(), running, now=100.0))
    assert a.victims == (victim,)


def test_queue_orders_by_slack_within_a_priority_class():
    now = 1000.0
    loose = req("loose", "1x2", "prod", PROD, submitted_at=1.0, deadline_at=now + 7200)
    tight = req(
        "tight",
        "1x2",
        "prod",
        PROD,
        submitted_at=2.0,
        deadline_at=now + 7200,
        expected_duration_s=6000,
    )
    none = req("none", "1x2", "prod", PROD, submitted_at=0.0)
    bf = req("bf", "1x2", submitted_at=0.0, deadline_at=now)
    order = [r.workload_id for r in queue_order([loose, none, bf, tight], RAYORCH, now)]
    assert order == ["tight", "loose", "none", "bf"]
    assert tight.slack(now) == pytest.approx(1200.0)


def test_victim_with_more_slack_is_cheaper():
    now = 100.0
    running = [
        work("tight", "n0", 8, started=50.0, deadline_at=now + 3600, expected_duration_s=3000),
        work("loose", "n1", 8, started=10.0, deadline_at=now + 90000, expected_duration_s=3000),
    ]
    a = admit(req("p", "1x8", "prod", PROD), snap_of(spec(), running, now=now))
    assert a.victims == ("loose",)


# --- shrunk counter-examples and the issue's scenario --------------------------------------
def test_issue_scenario_whole_node_production_job_waits_one_yield():
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.simulator import simulate
    from rayorch.scheduling.workload import expand, load_workload, node_shapes

    sp = load_cluster("configs/cluster.yaml")
    wl = load_workload("configs/workloads/fragmented-4x8.yaml")
    wl = wl.model_copy(update={"days": 2, "production": wl.production[:1]})
    r = simulate(sp, node_shapes(wl, sp), expand(wl), RAYORCH, wl.yield_latency_s)
    assert r.deadline_misses == 0 and not r.violations
    assert r.production_wait_max_min * 60 <= wl.yield_latency_s + 2 * sp.scheduling_cycle_s
    assert r.preemptions_per_production_max <= 4 and r.max_preemptions_per_unit_hour <= 2


# --- the controller's durable, leased state ------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def controller(db: str, clock: Clock, lease_s: float = 30.0, sp: ClusterSpec | None = None):
    from rayorch.scheduling.controller import SchedulerController

    nodes = tuple(NodeState.empty(f"n{i}", A100) for i in range(2))
    return SchedulerController(
        sp or spec(),
        nodes=nodes,
        create_placement_groups=False,
        db_url=db,
        lease_s=lease_s,
        clock=clock,
    )


def test_restarted_controller_rebuilds_queue_admissions_and_reservations(tmp_path):
    db, clock = f"sqlite:///{tmp_path / 'ledger.db'}", Clock()
    c = controller(db, clock)
    for i in range(2):
        assert c.submit(req(f"b{i}", "1x8", holder="drv")).outcome is AdmissionOutcome.ADMITTED
    assert c.submit(req("q", "1x2", holder="drv")).outcome is AdmissionOutcome.QUEUED
    clock.t += 5  # work admitted in the same cycle is never a victim
    p = c.submit(req("p", "1x8", "prod", PROD, holder="prod"))
    assert p.outcome is AdmissionOutcome.PREEMPT
    c2 = controller(db, clock)  # what Ray's restart does: same arguments, same database
    st = c2.status()
    assert sorted(r["workload_id"] for r in st["running"]) == ["b0", "b1"]
    assert [q["workload_id"] for q in st["queue"]] == ["p", "q"]
    assert [r["workload_id"] for r in st["reservations"]] == ["p"]
    assert c2.yield_requested(p.victims[0])
    c2.release(p.victims[0], requeue=True)
    assert c2.poll("p").placement == p.placement


def test_killed_drivers_capacity_is_reclaimed_within_one_lease(tmp_path):
    db, clock = f"sqlite:///{tmp_path / 'ledger.db'}", Clock()
    c = controller(db, clock, lease_s=30.0, sp=spec(bf_gpus=16))
    for i in range(2):
        assert c.submit(req(f"b{i}", "1x8", holder="dead")).outcome is AdmissionOutcome.ADMITTED
    # in-quota work that cannot move: production waits for capacity, not for preemption
    assert c.submit(req("p", "1x8", "prod", PROD, holder="alive")).outcome is (
        AdmissionOutcome.QUEUED
    )
    clock.t += 20
    c.heartbeat("alive")
    assert c.poll("p").outcome is AdmissionOutcome.QUEUED  # "dead"'s lease still runs
    clock.t += 11  # 31 s since "dead" last renewed
    assert c.poll("p").outcome is AdmissionOutcome.ADMITTED
    assert [e["workload_id"] for e in c.events() if e["event"] == "expired"] == ["b0", "b1"]
    assert "p" in {r["workload_id"] for r in controller(db, clock).status()["running"]}


def test_changed_cluster_config_is_picked_up_or_refused(tmp_path):
    db, clock = f"sqlite:///{tmp_path / 'ledger.db'}", Clock()
    c = controller(db, clock)
    c.submit(req("b0", "1x8"))
    bigger = spec(bf_gpus=8)
    assert c.reconfigure(bigger) == c.config_fingerprint()
    assert controller(db, clock).config_fingerprint() == c.config_fingerprint()  # durable
    only_prod = ClusterSpec(namespaces={"prod": NamespaceQuota(gpus=16, cpus=32)})
    with pytest.raises(ConfigError, match="drops namespace"):
        c.reconfigure(only_prod)


# --- plan --deadline-check and simulate --trace/--plot -------------------------------------
class _Unit:
    def __init__(self, i: int) -> None:
        self.run_key, self.step, self.cpus, self.gpus, self.workers = (
            f"p/train/{i}",
            "train",
            1,
            8,
            1,
        )


@pytest.mark.parametrize("policy,misses", [("rayorch", False), ("fifo", True)])
def test_deadline_check_says_whether_and_by_how_much(policy, misses):
    from rayorch.scheduling.admission import POLICIES
    from rayorch.scheduling.deadline import deadline_check, render_deadline_check
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.workload import load_workload

    wl = load_workload("configs/workloads/fragmented-4x8.yaml")
    c = deadline_check(
        [_Unit(i) for i in range(40)],
        load_cluster("configs/cluster.yaml"),
        "backfill",
        wl,
        "fraud-daily-train",
        {"train": 3 * 3600},
        policy=POLICIES[policy],
    )
    assert c.misses is misses and c.finish_alone_min == pytest.approx(120.0)
    assert (c.late_by_min > 60) is misses
    assert ("MISS" in render_deadline_check(c)) is misses
    with pytest.raises(ConfigError, match="no production job"):
        deadline_check([], load_cluster("configs/cluster.yaml"), "backfill", wl, "nope")


def test_simulate_cli_writes_trace_and_plot(tmp_path):
    import json

    from typer.testing import CliRunner

    from rayorch.cli.app import app

    trace, png = tmp_path / "t.json", tmp_path / "o.png"
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--workload",
            "configs/workloads/fraud-90d.yaml",
            "--policies",
            "rayorch",
            "--trace",
            str(trace),
            "--plot",
            str(png),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(trace.read_text())["policies"]["rayorch"]
    reasons = {d["reason"] for d in doc["decisions"]}
    assert {"FITS", "PREEMPTING"} <= reasons
    assert all(d["detail"] for d in doc["decisions"])
    assert doc["occupancy"] and png.read_bytes()[:4] == b"\x89PNG"


def test_online_placement_gap_to_a_clairvoyant_packing():
    """The utilization bound, stated by its counter-example (hypothesis found it): durations
    are unknown when units are placed, so two 2-h units can land on different nodes; when a
    4-GPU unit arrives after the 1-h one ends, no node is whole and it waits an hour at 6/8
    GPUs used. A clairvoyant packing (both 2-h units on one node) keeps 8/8. So rayorch does
    not promise >= 0.9 of clairvoyant on every workload; it reaches 0.75 here, and >= 0.99 on
    the generated seed-like workloads of benchmarks/bench_scheduling.py."""
    from rayorch.scheduling.admission import RAYORCH
    from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass
    from rayorch.scheduling.shapes import JobShape, NodeShape
    from rayorch.scheduling.simulator import simulate
    from rayorch.scheduling.workload import HOUR, SimJob

    spec = ClusterSpec(
        namespaces={
            "production": NamespaceQuota(
                gpus=4, cpus=1e3, max_concurrent_units=16, can_borrow=True
            ),
            "backfill": NamespaceQuota(
                gpus=0, cpus=1e4, max_concurrent_units=1000, can_borrow=True
            ),
        },
        scheduling_cycle_s=1.0,
    )
    bf = PriorityClass.BACKFILL
    jobs = [
        SimJob("b/u0", "backfill", bf, JobShape(1, 2), 0.0, HOUR),
        SimJob("b/u1", "backfill", bf, JobShape(1, 2), 0.0, 2 * HOUR),
        SimJob("b/u2", "backfill", bf, JobShape(1, 2), 0.0, 2 * HOUR),
        SimJob("b/u3", "backfill", bf, JobShape(1, 4), HOUR, HOUR),
        SimJob("p0", "production", PriorityClass.PRODUCTION, JobShape(1, 2), HOUR, HOUR, 2.5 * HOUR),
    ]  # fmt: skip
    nodes = (NodeShape(4, 64.0, "A100"), NodeShape(4, 64.0, "A100"))
    r = simulate(spec, nodes, jobs, RAYORCH, 60.0, 30.0)
    assert r.violations == [] and r.deadline_misses == 0
    assert r.util_while_queued == 0.75 and r.queued_hours == 1.0
