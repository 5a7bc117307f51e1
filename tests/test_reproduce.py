"""Pure tests of what `rayorch reproduce` compares: partitions (metadata) and metrics."""

from __future__ import annotations

import pytest

from rayorch.env.diff import diff_fingerprints
from rayorch.env.fingerprint import Fingerprint
from rayorch.lineage.compare import (
    CurrentPartition,
    PartitionStatus,
    ReproduceCheck,
    compare_metrics,
    compare_partitions,
)

REC = [
    {"partition": "city=SF/date=2026-10-02", "content_hash": "b" * 64, "rows": 20},
    {"partition": "city=SF/date=2026-10-01", "content_hash": "a" * 64, "rows": 10},
]


@pytest.mark.parametrize(
    ("current", "want"),
    [
        (
            {
                "city=SF/date=2026-10-01": CurrentPartition("a" * 64, 10),
                "city=SF/date=2026-10-02": CurrentPartition("b" * 64, 20),
            },
            [],
        ),
        (
            {
                "city=SF/date=2026-10-01": CurrentPartition("c" * 64, 9),
                "city=SF/date=2026-10-02": CurrentPartition("b" * 64, 20),
            },
            [("city=SF/date=2026-10-01", PartitionStatus.CHANGED)],
        ),
        (
            {"city=SF/date=2026-10-01": CurrentPartition("a" * 64, 10)},
            [("city=SF/date=2026-10-02", PartitionStatus.MISSING)],
        ),
        (
            {
                "city=SF/date=2026-10-01": CurrentPartition("a" * 64, 10, files_ok=False),
                "city=SF/date=2026-10-02": None,
            },
            [
                ("city=SF/date=2026-10-01", PartitionStatus.FILES_ALTERED),
                ("city=SF/date=2026-10-02", PartitionStatus.MISSING),
            ],
        ),
    ],
)
def test_compare_partitions(current, want):
    got = compare_partitions(REC, current)
    assert [(c.partition, c.status) for c in got] == want
    for c in got:
        assert c.partition in c.line()
        if c.status is PartitionStatus.CHANGED:
            assert c.line() == f"{c.partition}: content aaaaaaaaaaaa → cccccccccccc (rows 10 → 9)"


@pytest.mark.parametrize(
    ("reproduced", "tol", "ok"),
    [
        ({"loss": 0.5, "auc": 0.75}, 1e-6, [True, True]),
        ({"loss": 0.5 + 1e-4, "auc": 0.75}, 1e-6, [True, False]),
        ({"loss": 0.5 + 1e-4, "auc": 0.75}, 1e-3, [True, True]),
        ({"auc": 0.75}, 1e-6, [True, False]),
    ],
)
def test_compare_metrics(reproduced, tol, ok):
    got = compare_metrics({"loss": 0.5, "auc": 0.75}, reproduced, tol)
    assert [m.name for m in got] == ["auc", "loss"]
    assert [m.match for m in got] == ok


def _fp(**kw):
    base = dict(
        python="3.11.7",
        implementation="cpython",
        platform="linux-x86_64",
        image=None,
        image_source="none",
        packages={"torch": "2.13.0"},
        env_vars={},
        git_commit="c1",
    )
    return Fingerprint(**{**base, **kw})


def test_reproduce_check_verdict():
    same = diff_fingerprints(_fp(), _fp())
    assert ReproduceCheck("r", "k", 2, (), same).same
    pkg = diff_fingerprints(_fp(), _fp(packages={"torch": "2.14.0"}))
    chk = ReproduceCheck("r", "k", 2, (), pkg)
    assert not chk.same and chk.to_dict()["packages_changed"] == ["torch 2.13.0 → 2.14.0"]
    code = diff_fingerprints(_fp(), _fp(git_commit="c2"))
    assert code.equal and not ReproduceCheck("r", "k", 2, (), code).same  # same env, new code
    data = tuple(compare_partitions(REC, {}))
    assert not ReproduceCheck("r", "k", 2, data, same).same
    assert not ReproduceCheck("r", "k", 2, (), None).same  # nothing recorded to compare with
