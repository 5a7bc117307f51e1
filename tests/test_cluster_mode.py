"""Cluster-mode refusal rules: pure, table-driven (values in, a typed decision out)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from rayorch.clustermode import (
    ClusterFacts,
    ClusterVerdict,
    StateKind,
    attached,
    enforce,
    judge_cluster_state,
    judge_for,
    storage_locations,
)
from rayorch.errors import ConfigError, LocalStateError
from rayorch.settings import Settings

V = ClusterVerdict
PG = "postgresql://rayorch@db:5432/rayorch"
HTTP = "http://mlflow:5000"
S3 = (("RAYORCH_STORAGE_URL", "s3://bucket/rayorch"),)
SQLITE = "sqlite:////home/me/.rayorch/ledger.db"
MLF_SQLITE = "sqlite:////home/me/.rayorch/mlflow.db"
LOCAL = (("RAYORCH_STORAGE_URL", "/home/me/.rayorch"),)
RAY = "ray://head:10001"


def facts(addr=RAY, nodes=3, db=PG, mlf=HTTP, storage=S3, allow=False) -> ClusterFacts:
    return ClusterFacts(addr, nodes, db, mlf, storage, allow)


@pytest.mark.parametrize(
    ("f", "verdict", "settings"),
    [
        # not attached: a private local Ray, anything goes
        (facts(addr=None, db=SQLITE, mlf=MLF_SQLITE, storage=LOCAL), V.EMBEDDED, []),
        (facts(addr="local", db=SQLITE, mlf=MLF_SQLITE, storage=LOCAL), V.EMBEDDED, []),
        # attached, everything shared
        (facts(), V.SHARED, []),
        (facts(nodes=1), V.SHARED, []),
        (facts(mlf="postgresql://u@db/mlflow"), V.SHARED, []),  # a DB store is shared too
        (facts(mlf="https://mlflow.example.com"), V.SHARED, []),
        # attached to several nodes: each local piece is refused, by its setting
        (facts(db=SQLITE), V.REFUSED, ["RAYORCH_DB_URL"]),
        (facts(mlf=MLF_SQLITE), V.REFUSED, ["MLFLOW_TRACKING_URI"]),
        (facts(mlf="file:///home/me/mlruns"), V.REFUSED, ["MLFLOW_TRACKING_URI"]),
        (facts(mlf="./mlruns"), V.REFUSED, ["MLFLOW_TRACKING_URI"]),
        (facts(storage=LOCAL), V.REFUSED, ["RAYORCH_STORAGE_URL"]),
        (
            facts(storage=(("RAYORCH_STORAGE_URL", "file:///data"),)),
            V.REFUSED,
            ["RAYORCH_STORAGE_URL"],
        ),
        (facts(storage=(*S3, ("source.path", "/mnt/raw"))), V.REFUSED, ["source.path"]),
        (
            facts(db=SQLITE, mlf=MLF_SQLITE, storage=LOCAL),
            V.REFUSED,
            ["RAYORCH_DB_URL", "MLFLOW_TRACKING_URI", "RAYORCH_STORAGE_URL"],
        ),
        # --allow-local-state covers one node only
        (facts(db=SQLITE, allow=True), V.REFUSED, ["RAYORCH_DB_URL"]),
        (facts(nodes=1, db=SQLITE), V.REFUSED, ["RAYORCH_DB_URL"]),
        (
            facts(nodes=1, db=SQLITE, mlf=MLF_SQLITE, storage=LOCAL, allow=True),
            V.LOCAL_ALLOWED,
            ["RAYORCH_DB_URL", "MLFLOW_TRACKING_URI", "RAYORCH_STORAGE_URL"],
        ),
        # other object stores count as shared
        (facts(storage=(("RAYORCH_STORAGE_URL", "gs://b/p"),)), V.SHARED, []),
    ],
)
def test_judge_cluster_state_table(f, verdict, settings):
    d = judge_cluster_state(f)
    assert d.verdict is verdict, d
    assert [s.setting for s in d.local_state] == settings
    assert d.verdict.may_run is (verdict is not V.REFUSED)


@pytest.mark.parametrize(
    ("address", "is_attached"),
    [
        (None, False),
        ("", False),
        ("local", False),
        ("LOCAL", False),
        ("auto", True),
        ("127.0.0.1:6379", True),
        ("ray://head:10001", True),
    ],
)
def test_attached_table(address, is_attached):
    assert attached(address) is is_attached


def test_refusal_names_each_setting_and_what_to_set():
    d = judge_cluster_state(facts(db=SQLITE, mlf=MLF_SQLITE, storage=LOCAL))
    with pytest.raises(LocalStateError) as e:
        enforce(d)
    msg = str(e.value)
    assert "3 nodes" in msg and "--allow-local-state only covers a single node" in msg
    assert f"RAYORCH_DB_URL={SQLITE}" in msg and "postgresql://" in msg
    assert "MLFLOW_TRACKING_URI" in msg and "tracking server" in msg
    assert "RAYORCH_STORAGE_URL" in msg and "s3://" in msg
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
    assert e.value.fields["settings"] == ["RAYORCH_DB_URL", "MLFLOW_TRACKING_URI",
                                          "RAYORCH_STORAGE_URL"]  # fmt: skip
    again = pickle.loads(pickle.dumps(e.value))
    assert again.fields == e.value.fields and str(again) == msg
    with pytest.raises(LocalStateError, match="pass --allow-local-state"):
        enforce(judge_cluster_state(facts(nodes=1, db=SQLITE)))
    assert enforce(judge_cluster_state(facts())).verdict is V.SHARED
    assert [s.kind for s in d.local_state] == [StateKind.LEDGER, StateKind.MLFLOW,
                                                StateKind.STORAGE]  # fmt: skip


@pytest.mark.parametrize(
    ("storage_url", "paths", "expected"),
    [
        (None, [], [("RAYORCH_STORAGE_URL", "/h")]),  # unset: the home directory
        ("s3://b/p", [("source.path", "raw")], [("RAYORCH_STORAGE_URL", "s3://b/p")]),
        (
            "s3://b/p",
            [("source.path", "/mnt/raw"), ("features.output", "s3://o/f")],
            [
                ("RAYORCH_STORAGE_URL", "s3://b/p"),
                ("source.path", "/mnt/raw"),
                ("features.output", "s3://o/f"),
            ],
        ),
    ],
)
def test_storage_locations_table(storage_url, paths, expected):
    assert list(storage_locations(storage_url, "/h", paths)) == expected


def test_judge_for_reads_a_real_pipeline_and_settings(fraud_spec, tmp_path: Path):
    local = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path}/l.db",
                     mlflow_uri=f"sqlite:///{tmp_path}/m.db", ray_address="127.0.0.1:6379")  # fmt: skip
    d = judge_for(local, fraud_spec, alive_nodes=3, allow_local_state=False)
    assert d.verdict is V.REFUSED
    assert [s.setting for s in d.local_state] == [
        "RAYORCH_DB_URL",
        "MLFLOW_TRACKING_URI",
        "RAYORCH_STORAGE_URL",
    ]  # fmt: skip (the fraud example's paths are relative: under the storage root)
    shared = Settings(home=tmp_path, db_url=PG, mlflow_uri=HTTP, ray_address="127.0.0.1:6379",
                      storage_url="s3://bucket/rayorch")  # fmt: skip
    assert judge_for(shared, fraud_spec, 3, False).verdict is V.SHARED
    embedded = Settings(home=tmp_path, db_url=local.db_url, mlflow_uri=local.mlflow_uri,
                        ray_address=None)  # fmt: skip
    assert judge_for(embedded, fraud_spec, 1, False).verdict is V.EMBEDDED
