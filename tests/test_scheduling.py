"""Pure scheduling decisions: shapes, quotas, placement, admission, cycles, fragmentation,
estimates and the simulator. No Ray; runs in well under a second."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from rayorch.errors import ConfigError, RayorchError
from rayorch.scheduling.admission import (
    FIFO_NO_QUOTA,
    FIRST_FIT,
    RAYORCH,
    AdmissionOutcome,
    Reason,
    admit,
)
from rayorch.scheduling.cycle import schedule
from rayorch.scheduling.estimate import UnitCost, estimate, unit_costs
from rayorch.scheduling.fragmentation import (
    fragmentation_report,
    reshape_suggestions,
    stranded_gpus,
)
from rayorch.scheduling.model import (
    NodeState,
    Request,
    RunningWorkload,
    Snapshot,
    Strategy,
    apply_placement,
)
from rayorch.scheduling.placement import Packing, never_fits, place
from rayorch.scheduling.quota import (
    ClusterSpec,
    NamespaceQuota,
    PriorityClass,
    load_cluster,
    parse_cluster,
)
from rayorch.scheduling.shapes import (
    JobShape,
    NodeShape,
    node_shape_from_resources,
    parse_job_shape,
    parse_node_shape,
)
from rayorch.scheduling.simulator import simulate
from rayorch.scheduling.workload import expand, load_workload, parse_workload

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

A100 = NodeShape(8, 16.0, "A100")
PROD, BF = PriorityClass.PRODUCTION, PriorityClass.BACKFILL


def spec(**ns: NamespaceQuota) -> ClusterSpec:
    return ClusterSpec(
        namespaces=ns
        or {
            "prod": NamespaceQuota(gpus=16, cpus=32, max_concurrent_units=8, can_borrow=True),
            "bf": NamespaceQuota(gpus=8, cpus=16, max_concurrent_units=16, can_borrow=True),
        }
    )


def nodes(*free: int, shape: NodeShape = A100) -> tuple[NodeState, ...]:
    return tuple(NodeState(f"n{i}", shape, f, shape.cpus) for i, f in enumerate(free))


def req(wid: str, shape: str, ns: str = "bf", prio: PriorityClass = BF, **kw) -> Request:
    return Request(wid, ns, parse_job_shape(shape), prio, **kw)


def running_snapshot(
    sp: ClusterSpec, n: tuple[NodeState, ...], work: list[tuple[Request, float]]
) -> Snapshot:
    """Place each request (best fit) and mark it running, as the controller would."""
    snap = Snapshot(sp, n)
    for r, started in work:
        plan = place(r, snap.nodes)
        assert plan is not None, r
        snap = Snapshot(
            sp,
            apply_placement(snap.nodes, plan),
            (
                *snap.running,
                RunningWorkload(r.workload_id, r.namespace, r.priority, plan, started_at=started),
            ),
        )
    return snap


# --- shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("A100:8", NodeShape(8, 0.0, "A100")),
        ("8xA100", NodeShape(8, 0.0, "A100")),
        ("8XH100", NodeShape(8, 0.0, "H100")),
        ("4", NodeShape(4, 0.0, None)),
        (" L4:1 ", NodeShape(1, 0.0, "L4")),
    ],
)
def test_parse_node_shape(text, expected):
    assert parse_node_shape(text) == expected


@pytest.mark.parametrize(
    "text,bundles,gpus,acc",
    [
        ("4", 1, 4, None),
        ("2x4", 2, 4, None),
        ("4x2", 4, 2, None),
        ("A100:8", 1, 8, "A100"),
        ("8xA100", 1, 8, "A100"),
        ("2x4xA100", 2, 4, "A100"),
        ("2x4:H100", 2, 4, "H100"),
    ],
)
def test_parse_job_shape(text, bundles, gpus, acc):
    s = parse_job_shape(text)
    assert (s.bundles, s.gpus_per_bundle, s.accelerator) == (bundles, gpus, acc)
    assert s.total_gpus == bundles * gpus


@pytest.mark.parametrize(
    "text", ["", "x", "0", "2x0", "ax4", "A100:", "A100:eight", "1x2x3x4", "2x4x!!"]
)
def test_bad_shapes_are_config_errors(text):
    with pytest.raises(ConfigError) as e:
        parse_job_shape(text)
    assert e.value.fields["field"] == "shape"


def test_bad_node_shape_names_value():
    with pytest.raises(ConfigError, match="not understood"):
        parse_node_shape("2x4")


def test_reshapes_keep_total_gpus_fewest_bundles_first():
    alts = parse_job_shape("1x8").reshapes()
    assert [str(a) for a in alts] == ["2x4", "4x2", "8x1"]
    assert all(a.total_gpus == 8 and a.total_cpus == 1.0 for a in alts)


def test_node_shape_from_ray_resources():
    res = {"CPU": 2.0, "GPU": 8.0, "accelerator_type:A100": 1.0, "memory": 1e9}
    assert node_shape_from_resources(res) == NodeShape(8, 2.0, "A100")
    assert node_shape_from_resources({"CPU": 4.0}) == NodeShape(0, 4.0, None)


# --- quota config -------------------------------------------------------------------------
def test_repo_cluster_config_loads():
    sp = load_cluster(CONFIGS / "cluster.yaml")
    assert sp.quota("production").gpus == 16
    assert sp.default_priority is BF
    assert sp.node_shapes() == [NodeShape(8, 32.0, "A100")] * 3
    assert PROD.rank > BF.rank


@pytest.mark.parametrize(
    "data,field",
    [
        ({"namespaces": {"a": {"gpus": -1}}}, "namespaces.a.gpus"),
        ({"namespaces": {"a": {"gpu": 4}}}, "namespaces.a.gpu"),
        ({"namespaces": {}}, "namespaces"),
        ({"namespaces": {"a": {}}, "nodes": [{"shape": "huge"}]}, "nodes.0.shape"),
        ({"namespaces": {"a": {}}, "default_priority": "urgent"}, "default_priority"),
    ],
)
def test_cluster_config_errors_name_file_and_field(data, field):
    with pytest.raises(ConfigError) as e:
        parse_cluster(data, source="configs/cluster.yaml")
    assert e.value.fields["file"] == "configs/cluster.yaml"
    assert e.value.fields["field"] == field
    assert "configs/cluster.yaml" in e.value.message


def test_missing_cluster_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_cluster(tmp_path / "nope.yaml")


# --- placement ----------------------------------------------------------------------------
def test_four_gpu_job_strict_packs_on_the_tightest_node():
    plan = place(req("j", "1x4"), nodes(8, 6, 4))
    assert plan.strategy is Strategy.STRICT_PACK
    assert plan.gpus_by_node() == {"n2": 4}  # fills the node with exactly 4 free
    assert plan.ray_bundles() == [{"CPU": 1.0, "GPU": 4.0}]
    assert plan.label_selectors() == [{"ray.io/node-id": "n2"}]


def test_two_gpu_workers_pack_on_one_node_and_keep_empty_nodes_whole():
    plan = place(req("j", "4x2"), nodes(8, 8, 8))
    assert plan.strategy is Strategy.STRICT_PACK
    assert plan.gpus_by_node() == {"n0": 8}
    # with one node partly used, the 2x2 job goes there, not onto an empty node
    plan = place(req("k", "2x2"), nodes(8, 6, 8))
    assert plan.gpus_by_node() == {"n1": 4}


def test_best_fit_vs_first_fit():
    n = nodes(8, 2)
    assert place(req("j", "1x2"), n, Packing.BEST_FIT).gpus_by_node() == {"n1": 2}
    assert place(req("j", "1x2"), n, Packing.FIRST_FIT).gpus_by_node() == {"n0": 2}


def test_bundles_split_across_nodes_when_no_single_node_holds_them():
    plan = place(req("j", "2x4"), nodes(4, 4, 2))
    assert plan.strategy is Strategy.PACK
    assert plan.gpus_by_node() == {"n0": 4, "n1": 4}


def test_per_node_fit_not_cluster_sum():
    # 9 GPUs free in total, but no node has 4
    assert place(req("j", "1x4"), nodes(3, 3, 3)) is None


def test_reshape_only_when_allowed():
    n = nodes(4, 4)
    assert place(req("j", "1x8"), n) is None
    plan = place(req("j", "1x8", allow_reshape=True), n)
    assert str(plan.shape) == "2x4" and str(plan.reshaped_from) == "1x8"


def test_spread_uses_distinct_nodes():
    plan = place(req("j", "3x2", spread=True), nodes(8, 8, 8))
    assert plan.strategy is Strategy.SPREAD
    assert len(plan.gpus_by_node()) == 3


def test_accelerator_must_match():
    mixed = (*nodes(8), NodeState("h", NodeShape(8, 16, "H100"), 8, 16))
    assert place(req("j", "1x8xH100"), mixed).gpus_by_node() == {"h": 8}


@pytest.mark.parametrize(
    "shape,allow,fits,text",
    [
        ("1x16", False, False, "exceeds the largest node"),
        ("1x16", True, True, ""),
        ("4x8", False, False, "cannot hold"),
        ("1x8xH100", False, False, "accelerator 'H100'"),
        ("3x8", False, True, ""),
    ],
)
def test_never_fits_is_decided_up_front(shape, allow, fits, text):
    why = never_fits(req("j", shape, allow_reshape=allow), [A100] * 3)
    assert (why is None) is fits
    if not fits:
        assert text in why


# --- admission ----------------------------------------------------------------------------
def test_admitted_within_quota_and_placed():
    a = admit(req("p1", "1x8", "prod", PROD), Snapshot(spec(), nodes(8, 8, 8)))
    assert a.outcome is AdmissionOutcome.ADMITTED and a.reason is Reason.FITS
    assert not a.borrowed and a.placement.strategy is Strategy.STRICT_PACK


@pytest.mark.parametrize(
    "shape,ns,reason",
    [
        ("1x16", "bf", Reason.NEVER_FITS),
        ("1x4", "nope", Reason.UNKNOWN_NAMESPACE),
        ("1x8", "small", Reason.EXCEEDS_QUOTA),
    ],
)
def test_rejected_at_plan_time(shape, ns, reason):
    sp = ClusterSpec(
        namespaces={
            "bf": NamespaceQuota(gpus=8, cpus=8),
            "small": NamespaceQuota(gpus=4, cpus=8, can_borrow=False),
        }
    )
    a = admit(req("j", shape, ns), Snapshot(sp, nodes(8, 8, 8)))
    assert a.outcome is AdmissionOutcome.REJECTED and a.reason is reason
    assert a.detail


def test_no_borrowing_queues_at_quota():
    sp = ClusterSpec(namespaces={"bf": NamespaceQuota(gpus=8, cpus=8, can_borrow=False)})
    snap = running_snapshot(sp, nodes(8, 8, 8), [(req("b1", "1x4"), 0), (req("b2", "1x4"), 1)])
    a = admit(req("b3", "1x2"), snap)
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.QUOTA_EXHAUSTED


def test_borrowing_is_flagged_and_limited():
    sp = ClusterSpec(
        namespaces={"bf": NamespaceQuota(gpus=8, cpus=8, can_borrow=True, borrowing_limit_gpus=4)}
    )
    snap = running_snapshot(sp, nodes(8, 8, 8), [(req("b1", "1x8"), 0)])
    a = admit(req("b2", "1x4"), snap)
    assert a.outcome is AdmissionOutcome.ADMITTED and a.borrowed and a.reason is Reason.BORROWING
    a = admit(req("b3", "1x8"), snap)
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.BORROWING_LIMIT


def test_concurrency_limit():
    sp = ClusterSpec(namespaces={"bf": NamespaceQuota(gpus=24, cpus=24, max_concurrent_units=2)})
    snap = running_snapshot(sp, nodes(8, 8, 8), [(req("b1", "1x2"), 0), (req("b2", "1x2"), 0)])
    a = admit(req("b3", "1x2"), snap)
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.CONCURRENCY_LIMIT


def test_production_reclaims_borrowed_backfill_capacity():
    sp = spec()
    # backfill fills all 24 GPUs: 8 within its quota, 16 borrowed
    snap = running_snapshot(sp, nodes(8, 8, 8), [(req(f"b{i}", "1x8"), float(i)) for i in range(3)])
    assert snap.borrowed_ids() == {"b1", "b2"}
    a = admit(req("p1", "1x8", "prod", PROD), snap)
    assert a.outcome is AdmissionOutcome.PREEMPT and a.reason is Reason.PREEMPTING
    assert a.victims == ("b2",)  # one borrowed unit, the latest started (least work lost)
    # while b2 yields, nothing else is preempted for the same request
    yielding = replace(
        snap,
        running=tuple(replace(w, yielding=w.workload_id == "b2") for w in snap.running),
        _borrowed=None,
    )
    a = admit(req("p1", "1x8", "prod", PROD), yielding)
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.WAITING_FOR_YIELD
    # once b2 released, p1 is admitted on the freed node
    a = admit(req("p1", "1x8", "prod", PROD), snap.without(["b2"]))
    assert a.outcome is AdmissionOutcome.ADMITTED and a.placement.gpus_by_node() == {"n2": 8}


def test_work_inside_its_nominal_quota_is_never_preempted_by_another_namespace():
    sp = spec()
    snap = running_snapshot(
        sp,
        nodes(8, 8, 8),
        [
            (req("p1", "1x8", "prod", PROD), 0),
            (req("p2", "1x8", "prod", PROD), 0),
            (req("b1", "1x8"), 0),
        ],
    )  # b1 is inside bf's nominal 8 GPUs
    a = admit(req("p3", "1x8", "prod", PROD), snap)
    assert a.outcome is AdmissionOutcome.QUEUED and a.reason is Reason.NO_CAPACITY


def test_same_namespace_lower_priority_yields():
    sp = ClusterSpec(namespaces={"risk": NamespaceQuota(gpus=8, cpus=8)})
    snap = running_snapshot(
        sp, nodes(8), [(req("b1", "1x4", "risk"), 0), (req("b2", "1x4", "risk"), 5)]
    )
    a = admit(req("p", "1x4", "risk", PROD), snap)
    assert a.outcome is AdmissionOutcome.PREEMPT and a.victims == ("b2",)
    # equal priority never preempts inside the namespace
    assert admit(req("b3", "1x4", "risk"), snap).outcome is AdmissionOutcome.QUEUED


def test_baseline_policies_ignore_quota_and_never_preempt():
    sp = spec()
    snap = running_snapshot(sp, nodes(8, 8, 8), [(req(f"b{i}", "1x8"), float(i)) for i in range(3)])
    for policy in (FIRST_FIT, FIFO_NO_QUOTA):
        a = admit(req("p1", "1x8", "prod", PROD), snap, policy)
        assert a.outcome is AdmissionOutcome.QUEUED
    a = admit(req("x", "1x4", "unknown-ns"), Snapshot(sp, nodes(8)), FIRST_FIT)
    assert a.outcome is AdmissionOutcome.ADMITTED


# --- cycles and the quota invariant --------------------------------------------------------
def test_cycle_orders_by_priority_and_applies_decisions_in_turn():
    pending = [
        req("b1", "1x8", submitted_at=0.0),
        req("p1", "1x8", "prod", PROD, submitted_at=5.0),
        req("b2", "1x8", submitted_at=1.0),
    ]
    res = schedule(pending, Snapshot(spec(), nodes(8, 8)))
    got = {d.workload_id: d.outcome for d in res.decisions}
    assert got == {
        "p1": AdmissionOutcome.ADMITTED,
        "b1": AdmissionOutcome.ADMITTED,
        "b2": AdmissionOutcome.QUEUED,
    }
    assert sum(n.free_gpus for n in res.snapshot.nodes) == 0


def test_fifo_blocks_behind_head():
    pending = [req("big", "1x8", submitted_at=0.0), req("small", "1x2", submitted_at=1.0)]
    res = schedule(pending, Snapshot(spec(), nodes(4)), FIFO_NO_QUOTA)
    assert [d.reason for d in res.decisions] == [Reason.NO_CAPACITY, Reason.BLOCKED_BEHIND_HEAD]
    res = schedule(pending, Snapshot(spec(), nodes(4)), FIRST_FIT)
    assert res.decisions[1].outcome is AdmissionOutcome.ADMITTED


@pytest.mark.parametrize("seed", range(5))
def test_quota_invariant_under_random_traffic(seed):
    """No namespace exceeds its nominal quota unless it may borrow; production reclaims."""
    rng = random.Random(seed)
    sp = ClusterSpec(
        namespaces={
            "prod": NamespaceQuota(gpus=16, cpus=64, max_concurrent_units=8, can_borrow=False),
            "bf": NamespaceQuota(gpus=8, cpus=64, max_concurrent_units=16, can_borrow=True),
            "fixed": NamespaceQuota(gpus=4, cpus=64, max_concurrent_units=4, can_borrow=False),
        }
    )
    snap = Snapshot(sp, nodes(8, 8, 8))
    pending: list[Request] = []
    for step in range(60):
        ns = rng.choice(["prod", "bf", "bf", "fixed"])
        pending.append(
            req(
                f"{ns}{step}",
                rng.choice(["1x2", "1x4", "2x2", "1x8"]),
                ns,
                PROD if ns == "prod" else BF,
                submitted_at=float(step),
            )
        )
        res = schedule(pending, replace(snap, now=float(step)))
        snap = res.snapshot
        done = {
            d.workload_id
            for d in res.decisions
            if d.outcome in (AdmissionOutcome.ADMITTED, AdmissionOutcome.REJECTED)
        }
        pending = [p for p in pending if p.workload_id not in done]
        # yielding work releases; some running work finishes
        gone = [w.workload_id for w in snap.running if w.yielding or rng.random() < 0.15]
        snap = snap.without(gone)
        for name, q in sp.namespaces.items():
            g, _, n = snap.usage(name)
            assert n <= q.max_concurrent_units
            if not q.can_borrow:
                assert g <= q.gpus, (name, g)
        assert all(n.free_gpus >= 0 for n in snap.nodes)
        # borrowed capacity goes back to its owner: production inside its quota stays queued
        # for capacity only if even reclaiming every borrowed GPU would not make room
        for p in pending:
            if not p.workload_id.startswith("prod"):
                continue
            a = admit(p, snap)
            if a.reason is Reason.NO_CAPACITY and snap.usage("prod")[0] + p.shape.total_gpus <= 16:
                lent = [w for w in snap.borrowed_ids() if not w.startswith("prod")]
                assert place(p, snap.without(lent).nodes) is None, (p, lent)
            if a.outcome is AdmissionOutcome.PREEMPT:
                # in-quota work of another namespace is only ever *moved*: it must fit again,
                # as it is, next to the nominated placement
                moved = [
                    w
                    for w in snap.running
                    if w.workload_id in a.victims and w.workload_id not in snap.borrowed_ids()
                ]
                assert (a.reason is Reason.DEFRAGMENTING) == bool(moved)
                free = apply_placement(snap.without(a.victims).nodes, a.placement)
                for w in sorted(moved, key=lambda w: -w.gpus):
                    plan = place(req("m", str(w.placement.shape), w.namespace), free)
                    assert plan is not None, (a, w)
                    free = apply_placement(free, plan)


# --- fragmentation ------------------------------------------------------------------------
def test_stranded_gpus_per_node():
    n = nodes(3, 8, 1)
    assert stranded_gpus(n, [JobShape(1, 2), JobShape(1, 4)]) == {"n0": 1, "n1": 0, "n2": 1}
    assert stranded_gpus(n, [JobShape(1, 8)]) == {"n0": 3, "n1": 0, "n2": 1}
    assert stranded_gpus(n, []) == {"n0": 0, "n1": 0, "n2": 0}


def test_reshape_suggestion_and_report():
    sp = spec()
    snap = running_snapshot(
        sp, nodes(8, 8), [(req("a", "1x4"), 0), (req("b", "1x4"), 0), (req("c", "1x4"), 0)]
    )
    assert sorted(n.free_gpus for n in snap.nodes) == [0, 4]
    queued = [req("big", "1x8", "prod", PROD)]
    snap = snap.without(["a"])  # now 4 + 4 free on two nodes
    sug = reshape_suggestions(queued, snap.nodes)
    assert [(s.workload_id, str(s.fits_as)) for s in sug] == [("big", "2x4")]
    rep = fragmentation_report(snap, queued)
    assert rep["free_gpus"] == 8 and rep["stranded_gpus"] == 8
    assert rep["queued_shapes"] == {"1x8": 1}
    assert "could run now as 2x4" in rep["suggestions"][0]["text"]
    assert {n["node_id"]: n["used_gpus"] for n in rep["nodes"]} == {"n0": 4, "n1": 4}


# --- estimate -----------------------------------------------------------------------------
def test_estimate_gpu_hours_and_duration_under_quota():
    units = [UnitCost(4, 1, 3600)] * 6  # 24 GPU-hours
    q = NamespaceQuota(gpus=8, cpus=8, max_concurrent_units=16, can_borrow=True)
    e = estimate(units, q, cluster_gpus=24, cluster_cpus=24)
    assert e.gpu_hours == pytest.approx(24)
    assert e.duration_s == pytest.approx(3 * 3600)  # 2 at a time
    assert e.duration_borrowing_s == pytest.approx(3600)  # all 6 at once
    e = estimate(units, replace_quota(q, max_concurrent_units=1))
    assert e.duration_s == pytest.approx(6 * 3600)
    e = estimate([UnitCost(16, 1, 60)], replace_quota(q, can_borrow=False))
    assert e.duration_s is None and "borrowing" in e.note


def replace_quota(q: NamespaceQuota, **kw) -> NamespaceQuota:
    return q.model_copy(update=kw)


def test_unit_costs_from_plan_units(fraud_spec):
    from rayorch.backfill.plan import plan_backfill

    plan = plan_backfill(fraud_spec, "2026-01-01", "2026-01-03")
    costs = unit_costs(plan.units, {"features": 60, "train": 600})
    assert len(costs) == len(plan.units)
    assert sum(c.duration_s for c in costs) == 60 * len(plan.by_step(plan.steps[0])) + 600 * 3
    with pytest.raises(KeyError, match="train"):
        unit_costs(plan.units, {"features": 60})


# --- workload and simulator ---------------------------------------------------------------
def test_workload_config_errors_name_field():
    with pytest.raises(ConfigError) as e:
        parse_workload(
            {
                "name": "w",
                "days": 1,
                "production": [{"name": "p", "shape": "1x", "duration_hours": 1}],
            },
            source="w.yaml",
        )
    assert e.value.fields["field"] == "production.0.shape"


def test_simulator_rayorch_vs_baselines_on_repo_workload():
    sp = load_cluster(CONFIGS / "cluster.yaml")
    wl = load_workload(CONFIGS / "workloads" / "fraud-90d.yaml")
    jobs = expand(wl)
    assert len([j for j in jobs if j.priority is BF]) == 270
    res = {
        p.name: simulate(sp, sp.node_shapes(), jobs, p, wl.yield_latency_s, wl.resume_overhead_s)
        for p in (RAYORCH, FIRST_FIT, FIFO_NO_QUOTA)
    }
    r = res["rayorch"]
    assert r.deadline_misses == 0
    assert r.util_while_queued >= 0.95
    assert r.preemptions > 0 and not r.rejected
    assert r.production_wait_max_min <= 5
    assert res["fifo"].deadline_misses > 0
    assert res["first-fit"].production_wait_max_min > r.production_wait_max_min
    # every job finished under every policy: preempted work resumed, nothing lost
    assert all(x.backfill_done_h is not None for x in res.values())


def test_simulator_preempted_work_resumes_not_restarts():
    sp = spec()
    from rayorch.scheduling.workload import SimJob

    jobs = [SimJob(f"b{i}", "bf", BF, JobShape(1, 8), 0.0, 3600.0) for i in range(3)]
    jobs.append(SimJob("p", "prod", PROD, JobShape(1, 8), 1800.0, 600.0, 1800.0 + 900.0))
    r = simulate(sp, [A100] * 3, jobs, RAYORCH, yield_latency_s=60, resume_overhead_s=30)
    assert r.preemptions == 1 and r.deadline_misses == 0
    # the victim ran 1860 s, then resumed with 1740 s + 30 s restore once p finished
    # (p ends at 1860 + 600 = 2460) -> 2460 + 1770 = 4230 s; a restart would end at 6060 s
    assert r.backfill_done_h * 3600 == pytest.approx(4230)


def test_errors_pickle():
    import pickle

    e = ConfigError("x", field="shape", value="2x")
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, RayorchError) and e2.fields == {"field": "shape", "value": "2x"}


# --- controller bookkeeping (in-process, no Ray: static nodes, no placement groups) --------
def test_controller_preempt_release_readmit_cycle():
    from rayorch.errors import NotFoundError
    from rayorch.scheduling.controller import SchedulerController

    c = SchedulerController(spec(), nodes=nodes(8, 8), create_placement_groups=False)
    assert c.submit(req("b0", "1x8")).outcome is AdmissionOutcome.ADMITTED
    a = c.submit(req("b1", "1x8"))
    assert a.outcome is AdmissionOutcome.ADMITTED and a.borrowed
    assert c.submit(req("b2", "1x8")).outcome is AdmissionOutcome.QUEUED
    a = c.submit(req("p", "1x8", "prod", PROD))
    assert a.outcome is AdmissionOutcome.PREEMPT and a.victims == ("b1",)
    assert c.yield_requested("b1") and not c.yield_requested("b0")
    # polling again does not pick a second victim while b1 yields: its nomination is held
    held = c.poll("p")
    assert held.reason is Reason.RESERVED and held.victims == ("b1",)
    assert c.status()["reservations"][0]["draining"] == ["b1"]
    assert not c.yield_requested("b0")
    before = c.cycles()
    back = c.release("b1", requeue=True)
    assert c.cycles() == before + 1
    assert c.poll("p").outcome is AdmissionOutcome.ADMITTED
    assert back.outcome is AdmissionOutcome.QUEUED and not c.yield_requested("b1")
    st = c.status()
    assert [q["workload_id"] for q in st["queue"]] == ["b1", "b2"]  # b1 keeps its place
    assert st["namespaces"]["prod"]["gpus_used"] == 8
    c.release("p")
    assert c.poll("b1").outcome is AdmissionOutcome.ADMITTED
    assert c.placement("b1").shape.total_gpus == 8
    with pytest.raises(NotFoundError):
        c.poll("never")
    # submitting again is a no-op for running work
    assert c.submit(req("b1", "1x8")).outcome is AdmissionOutcome.ADMITTED
    assert len(c.status()["running"]) == 2
