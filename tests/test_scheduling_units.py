"""Backfill units as scheduler requests, the plan-time check, and the controller's driver API
(batched submit, batched yield checks, the event log, per-request reservation). No Ray."""

from __future__ import annotations

import pytest
import yaml

from rayorch.backfill.plan import Step, plan_backfill
from rayorch.errors import ConfigError
from rayorch.scheduling.admission import AdmissionOutcome
from rayorch.scheduling.controller import SchedulerController
from rayorch.scheduling.model import NodeState, Request
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass, parse_cluster
from rayorch.scheduling.shapes import JobShape, NodeShape, parse_job_shape
from rayorch.scheduling.units import check_plan, unit_request, unit_shape
from rayorch.spec import load_pipeline
from tests.helpers import small_config

DAY = "2026-10-01"
A100 = NodeShape(8, 16.0, "A100")


def _spec(tmp_path, gpus_per_worker: float = 2, workers: int = 2):
    path = small_config(tmp_path, train=True)
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["scaling"] = {
        "num_workers": workers,
        "cpus_per_worker": 2,
        "gpus_per_worker": gpus_per_worker,
    }
    path.write_text(yaml.safe_dump(cfg))
    return load_pipeline(path)


def _cluster(**ns: NamespaceQuota) -> ClusterSpec:
    return parse_cluster(
        {
            "namespaces": ns
            or {
                "backfill": {"gpus": 8, "cpus": 16, "can_borrow": True, "max_concurrent_units": 4},
                "fixed": {"gpus": 2, "cpus": 4, "can_borrow": False},
            },
            "nodes": [{"shape": "A100:8", "count": 3, "cpus": 16}],
        }
    )


def test_unit_shapes_from_the_pipeline_config(tmp_path):
    plan = plan_backfill(_spec(tmp_path), DAY, DAY)
    [train] = plan.by_step(Step.TRAIN)
    assert unit_shape(train) == JobShape(2, 2, 2.0)  # num_workers x (gpus, cpus) per worker
    feat = plan.by_step(Step.FEATURES)[0]
    assert unit_shape(feat) == JobShape(1, 0, 1.0)  # one CPU bundle, no GPU
    r = unit_request(train, "backfill")
    assert r.workload_id == train.run_key and r.priority is PriorityClass.BACKFILL
    assert r.reserve is False  # Ray Train reserves its own placement group from the plan
    assert unit_request(feat, "backfill", PriorityClass.PRODUCTION).reserve is True


def test_fractional_gpus_per_worker_is_a_config_error(tmp_path):
    plan = plan_backfill(_spec(tmp_path, gpus_per_worker=0.5), DAY, DAY)
    [train] = plan.by_step(Step.TRAIN)
    with pytest.raises(ConfigError) as e:
        unit_shape(train)
    assert e.value.fields["field"] == "train.scaling.gpus_per_worker"


def test_plan_check_rejects_a_shape_that_never_fits(tmp_path):
    plan = plan_backfill(_spec(tmp_path, gpus_per_worker=16, workers=1), DAY, DAY)
    chk = check_plan(plan.units, _cluster(), "backfill", durations_s={"train": 3600})
    [bad] = chk.rejected
    assert bad.step == "train" and bad.reason == "NEVER_FITS"
    assert "exceeds the largest node (8 GPUs)" in bad.detail
    # the estimate covers the runnable feature units only
    assert chk.estimate is not None and chk.estimate.gpu_hours == 0
    assert chk.estimate.units == len(plan.by_step(Step.FEATURES))
    assert chk.to_dict()["rejected"] == 1


def test_plan_check_quota_rejections(tmp_path):
    plan = plan_backfill(_spec(tmp_path, gpus_per_worker=2, workers=2), DAY, DAY)
    over = check_plan(plan.by_step(Step.TRAIN), _cluster(), "fixed")
    assert [c.reason for c in over.rejected] == ["EXCEEDS_QUOTA"]  # 4 GPUs > 2, no borrowing
    unknown = check_plan(plan.units, _cluster(), "nope")
    assert {c.reason for c in unknown.rejected} == {"UNKNOWN_NAMESPACE"}


def test_plan_check_gpu_hours_and_duration_under_quota(tmp_path):
    plan = plan_backfill(_spec(tmp_path), "2026-10-01", "2026-10-04", steps="train")
    chk = check_plan(
        plan.units,
        _cluster(),
        "backfill",
        durations_s={"train": 3600},
        duration_source={"train": "measured"},
    )
    assert not chk.rejected
    e = chk.estimate
    assert e is not None
    assert e.gpu_hours == pytest.approx(4 * 4)  # 4 units x 4 GPUs x 1 h
    # quota 8 GPUs: two 4-GPU units at a time -> 2 h; borrowing 24 GPUs (max 4 units) -> 1 h
    assert e.duration_s == pytest.approx(2 * 3600)
    assert e.duration_borrowing_s == pytest.approx(3600)
    assert chk.duration_source["train"] == "measured"
    assert chk.duration_source["features"] == "default"


# --- controller driver API (in-process, static nodes) --------------------------------------
def _controller() -> SchedulerController:
    cs = ClusterSpec(
        namespaces={
            "prod": NamespaceQuota(gpus=16, cpus=32),
            "bf": NamespaceQuota(gpus=0, cpus=16, can_borrow=True),
        },
        yield_grace_s=0.01,
    )
    nodes = (NodeState.empty("n0", A100), NodeState.empty("n1", A100))
    return SchedulerController(cs, nodes=nodes, create_placement_groups=False)


def test_submit_many_yields_requested_and_event_log():
    import time

    c = _controller()
    train = Request("bf/train", "bf", parse_job_shape("1x8"), reserve=False)
    feat = Request("bf/feat", "bf", JobShape(1, 0, 1.0))
    answers = c.submit_many([train, feat])
    assert [a.outcome for a, _ in answers] == [AdmissionOutcome.ADMITTED] * 2
    assert answers[0][0].borrowed and answers[1][1] is None  # no placement groups here
    assert c.submit_many([train])[0][0].outcome is AdmissionOutcome.ADMITTED  # idempotent
    p = c.submit(Request("prod", "prod", parse_job_shape("2x8"), PriorityClass.PRODUCTION))
    assert p.outcome is AdmissionOutcome.PREEMPT and p.victims == ("bf/train",)
    assert c.yields_requested(["bf/train", "bf/feat", "other"]) == ["bf/train"]
    # reserve=False work is never forced out by the grace timer (its driver stops it)
    time.sleep(0.05)
    c.cycle()
    assert c.yields_requested(["bf/train"]) == ["bf/train"]
    c.release("bf/train", requeue=True)
    ev = [(e["event"], e["workload_id"], e["cycle"]) for e in c.events()]
    requeued = next(x for x in ev if x[0] == "requeued")
    admitted = next(x for x in ev if x[0] == "admitted" and x[1] == "prod")
    assert admitted[2] == requeued[2] + 1  # admitted by the cycle the release ran
    assert ("preempt", "bf/train") in [(e, w) for e, w, _ in ev]
    assert c.events(since=c.events()[-1]["seq"]) == c.events()[-1:]


def test_plan_cli_shows_rejected_shapes_and_cost(tmp_path, home):
    from typer.testing import CliRunner

    from rayorch.cli.app import app
    from tests.conftest import CONFIGS

    cfg = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    cfg["train"]["scaling"] = {"num_workers": 2, "cpus_per_worker": 2, "gpus_per_worker": 16}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["plan", "-c", str(path), "--start", DAY, "--end", "2026-10-03"]
    args += ["--cluster", str(CONFIGS / "cluster.yaml"), "--durations", "train=3600", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.stdout  # a shape that can never run fails the plan
    import json

    d = json.loads(res.stdout)["scheduling"]
    assert d["namespace"] == "risk" and d["rejected"] == 1
    [train] = [s for s in d["shapes"] if s["step"] == "train"]
    assert train["outcome"] == "REJECTED" and train["reason"] == "NEVER_FITS"
    assert train["shape"] == "2x16" and train["units"] == 3
    assert d["duration_source"] == {"features": "default", "train": "configured"}
    assert d["estimate"]["units"] == 12  # the feature units that can run


def test_gate_arguments_checked_before_ray_starts(tmp_path):
    from rayorch.backfill.scheduled import gate_args

    spec = _spec(tmp_path)
    units = plan_backfill(spec, DAY, DAY).units
    cs, ns, prio = gate_args(_cluster(), "backfill", "production", spec, units)
    assert ns == "backfill" and prio is PriorityClass.PRODUCTION and cs.quota("backfill")
    assert gate_args(_cluster(), "backfill", None, spec, units)[2] is None  # cluster default
    bad = [
        ("nope", None, spec),  # namespace not in the cluster config
        ("backfill", "urgent", spec),  # not a priority class
        ("backfill", None, _spec(tmp_path, gpus_per_worker=0.5)),  # fractional GPUs
    ]
    for ns_, prio_, sp in bad:
        with pytest.raises(ConfigError):
            gate_args(_cluster(), ns_, prio_, sp, plan_backfill(sp, DAY, DAY).units)
