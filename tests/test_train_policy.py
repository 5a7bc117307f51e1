"""Pure training decisions (checkpoint policy, straggler detection) and the control files."""

from __future__ import annotations

import pytest

from rayorch.spec import CheckpointSpec, StragglerSpec
from rayorch.train.control import RunFiles
from rayorch.train.policy import (
    CheckpointClock,
    CheckpointReason,
    StragglerDetector,
    checkpoint_due,
)
from rayorch.train.runner import exclude_nodes_selector

LAST = CheckpointClock(step=10, at=1000.0)


@pytest.mark.parametrize(
    ("spec", "kw", "want"),
    [
        # every N epochs: epoch index is 0-based, so every 2 fires after epochs 1, 3, ...
        (CheckpointSpec(every_epochs=2), {"step": 20, "epoch_end": 0}, None),
        (CheckpointSpec(every_epochs=2), {"step": 20, "epoch_end": 1}, CheckpointReason.EPOCH),
        (CheckpointSpec(every_epochs=None), {"step": 20, "epoch_end": 1}, None),
        # every N steps since the last checkpoint
        (CheckpointSpec(every_epochs=None, every_steps=5), {"step": 14}, None),
        (CheckpointSpec(every_epochs=None, every_steps=5), {"step": 15}, CheckpointReason.STEPS),
        # every T seconds, only after at least one new step
        (CheckpointSpec(every_seconds=30), {"step": 11, "now": 1029.0}, None),
        (CheckpointSpec(every_seconds=30), {"step": 11, "now": 1030.0}, CheckpointReason.SECONDS),
        (CheckpointSpec(every_seconds=30), {"step": 10, "now": 2000.0}, None),
        # the last epoch always checkpoints (it is the model the unit returns)
        (CheckpointSpec(every_epochs=None), {"step": 12, "final": True}, CheckpointReason.FINAL),
    ],
)
def test_checkpoint_due(spec, kw, want):
    kw = {"now": 1001.0, **kw}
    assert checkpoint_due(spec, last=LAST, **kw) is want


def test_straggler_needs_m_consecutive_slow_steps_and_names_node():
    det = StragglerDetector(
        StragglerSpec(slowdown=2.0, consecutive_steps=3, min_step_s=0.0), ["n0", "n1", "n2"]
    )
    assert det.observe(1, [0.1, 0.5, 0.1]) == []
    assert det.observe(2, [0.1, 0.5, 0.1]) == []
    assert det.observe(3, [0.1, 0.1, 0.1]) == []  # a normal step resets the streak
    assert det.observe(4, [0.1, 0.5, 0.1]) == []
    assert det.observe(5, [0.1, 0.5, 0.1]) == []
    [flag] = det.observe(6, [0.1, 0.5, 0.11])
    assert (flag.rank, flag.node, flag.step, flag.consecutive) == (1, "n1", 6, 3)
    assert flag.ratio == pytest.approx(0.5 / 0.105)
    assert "rank 1 on node n1" in flag.describe()
    assert det.observe(7, [0.1, 0.5, 0.1]) == []  # flagged once per streak


def test_straggler_warmup_steps_not_judged():
    det = StragglerDetector(StragglerSpec(consecutive_steps=1, warmup_steps=2), ["a", "b"])
    assert det.observe(11, [0.1, 0.9], since_start=1) == []
    assert det.observe(12, [0.1, 0.9], since_start=2) == []
    assert [f.step for f in det.observe(13, [0.1, 0.9], since_start=3)] == [13]


@pytest.mark.parametrize(
    ("busy", "spec", "flagged"),
    [
        ([0.001, 0.004], StragglerSpec(consecutive_steps=1, min_step_s=0.005), []),  # noise
        ([0.2, 0.3], StragglerSpec(consecutive_steps=1), []),  # 1.5x < k=2
        ([0.2, 0.5], StragglerSpec(consecutive_steps=1), [1]),
        ([0.5], StragglerSpec(consecutive_steps=1), []),  # one worker: nobody to compare with
        ([0.2, 0.5], StragglerSpec(consecutive_steps=1, enabled=False), []),
    ],
)
def test_straggler_table(busy, spec, flagged):
    det = StragglerDetector(spec, [f"n{i}" for i in range(len(busy))])
    assert [f.rank for f in det.observe(1, busy)] == flagged


def test_run_files_progress_and_yield_flag(tmp_path):
    files = RunFiles(str(tmp_path / "ckpt"), "fraud-train-g0")
    assert files.read_progress() is None and files.yield_requested() is None
    files.write_progress({"step": 3, "status": "running"})
    assert files.read_progress()["step"] == 3
    files.request_yield("scheduler: production work needs the GPUs", token=7)
    assert files.yield_requested() == "scheduler: production work needs the GPUs"
    assert files.yield_requested_by() == 7
    files.clear_yield()
    assert files.yield_requested() is None
    assert not list((tmp_path / "ckpt" / "fraud-train-g0" / "rayorch").glob(".*"))  # no temps
    files.delete_all()
    assert not (tmp_path / "ckpt" / "fraud-train-g0").exists()


def test_exclude_nodes_selector():
    assert exclude_nodes_selector([]) is None
    assert exclude_nodes_selector(["b", "a"]) == {"ray.io/node-id": "!in(a,b)"}


def test_run_files_on_a_filesystem_uri(tmp_path):
    """Checkpoint storage may be any pyarrow filesystem URI; control files follow it."""
    files = RunFiles(f"file://{tmp_path}/remote", "unit-g3")
    files.write_progress({"step": 9})
    files.request_yield("SIGTERM", token=4)
    assert (tmp_path / "remote" / "unit-g3" / "rayorch" / "progress.json").exists()
    assert files.read_progress()["step"] == 9 and files.yield_requested_by() == 4
