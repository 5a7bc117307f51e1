"""Orphan files: unpublished attempts and files only expired snapshots had are deleted;
retained, model-pinned and young in-flight files stay; every table still reads exactly its
rows -- on local disk and on a real S3 API (moto). Plus ``rayorch tables expire`` as a
process, with a real MLflow registered model version pinning a snapshot."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from rayorch.data import outputs, storage
from rayorch.data.reader import pin_window, scan_window
from rayorch.data.table_orphans import Keep, StoredFile, keep_reason, plan_orphans
from rayorch.data.tables import StepTable, expire_snapshots, remove_orphan_files
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings
from tests.table_fixtures import feature_table, stage  # noqa: F401 (the `table` fixture)

KEY = PartitionKey.of(city="SF", date="2026-10-01")
OTHER = KEY.with_(city="LA")


@pytest.mark.parametrize(
    ("path", "modified", "why"),
    [
        ("a", 10, Keep.REFERENCED),  # referenced, however old
        ("b", 10, None),  # unreferenced and old: deleted
        ("b", 100, Keep.YOUNG),  # at the cut-off: still young
        ("b", 150, Keep.YOUNG),
    ],
)
def test_keep_reason(path, modified, why):
    assert keep_reason(StoredFile(path, 1, modified), {"a"}, 100) is why


def test_plan_orphans_sorts_and_counts():
    files = [StoredFile(p, 10, m) for p, m in [("z", 1), ("a", 1), ("r", 1), ("y", 500)]]
    plan = plan_orphans(files, {"r"}, cutoff_ms=100)
    assert [f.path for f in plan.delete] == ["a", "z"] and plan.bytes == 20
    assert [f.path for f in plan.kept_young] == ["y"] and plan.referenced == 1


def publish(table: StepTable, staged: dict) -> int:
    table.publish_many([outputs.publish_item(staged)])
    return table.require().current_snapshot().snapshot_id


def path_of(staged: dict) -> str:
    return staged["files"][0]["path"]


def exists(table: StepTable, uri: str) -> bool:
    fs, p = storage.filesystem_for(uri, table.settings)
    return storage.exists(fs, p)


def rows(table: StepTable, snapshot_id: int | None = None) -> list[tuple[str, str, float]]:
    t = table.require().scan(snapshot_id=snapshot_id).to_pandas()
    return sorted(zip(t["city"], t["id"], t["v"], strict=True))


def test_sweep_deletes_orphans_and_keeps_retained_pinned_and_young(table):
    s1 = stage(table, KEY, 1, ["a", "b"])
    sid1 = publish(table, s1)
    s2 = stage(table, KEY, 2, ["c"])
    sid2 = publish(table, s2)  # a registered model version read this one
    other = stage(table, OTHER, 1, ["o"])
    publish(table, other)
    s3 = stage(table, KEY, 3, ["d", "e"])
    sid3 = publish(table, s3)
    failed = stage(table, KEY, 4, ["never"])  # an attempt whose commit never came
    zombie = stage(table, OTHER, 0, ["stale"])  # a stale attempt, refused at publish
    [r] = table.publish_many([outputs.publish_item(zombie)])
    assert r.outcome.name == "STALE"
    time.sleep(1.2)  # S3 modification times have 1 s resolution
    cutoff = int(time.time() * 1000)
    time.sleep(1.2)
    in_flight = stage(table, KEY, 5, ["running"])  # staged after the cut-off: young

    plan = expire_snapshots(table, {sid2}, older_than_ms=2**62, retain_last=1)
    assert sid1 in plan.expire and sid2 not in plan.expire and plan.kept_for_models == (sid2,)

    dry = remove_orphan_files(table, cutoff_ms=cutoff, dry_run=True)
    assert dry.deleted == () and all(exists(table, f.path) for f in dry.plan.delete)
    sweep = remove_orphan_files(table, cutoff_ms=cutoff)
    assert sweep.plan == dry.plan
    deleted = set(sweep.deleted)
    # unpublished attempts, and the version only the expired snapshot had
    assert {path_of(failed), path_of(zombie), path_of(s1)} <= deleted
    assert not any(exists(table, p) for p in deleted)
    assert all(p.startswith(table.location + "/") for p in deleted)  # only the table's own
    # retained (current and model-pinned) files and the young in-flight file stay
    for keep in (s2, s3, other, in_flight):
        assert exists(table, path_of(keep)) and path_of(keep) not in deleted
    assert path_of(in_flight) in {f.path for f in sweep.plan.kept_young}
    # metadata of the expired snapshot went too; every retained snapshot still reads
    assert any(p.endswith(".avro") for p in deleted)
    assert rows(table) == [("LA", "o", 1.0), ("SF", "d", 3.0), ("SF", "e", 3.0)]
    assert rows(table, sid2) == [("SF", "c", 2.0)]
    assert scan_window(table, pin_window(table, [KEY], sid2))["id"].to_pylist() == ["c"]
    assert rows(table, sid3) == rows(table)
    again = remove_orphan_files(table, cutoff_ms=cutoff)
    assert again.deleted == ()  # nothing left to sweep
    # the young file publishes normally afterwards
    publish(table, in_flight)
    assert [r[1] for r in rows(table) if r[0] == "SF"] == ["running"]


def test_cli_expire_dry_run_then_sweep_keeps_a_registered_models_snapshot(home, fraud_spec):
    from rayorch.lineage.tracking import TAG_SNAPSHOT, mlflow_client
    from tests.helpers import json_out, run_cli

    st = load_settings()
    t = StepTable.for_spec(fraud_spec, st)
    key = PartitionKey.of({d: "x" for d in t.dims})
    sids = []
    for tok in (1, 2, 3):
        data = pa.table({k: [f"{k}{tok}"] for k in fraud_spec.features.unique_key})
        s = outputs.stage(
            t, key, data, run_key="r", token=tok, unique_key=fraud_spec.features.unique_key
        )
        sids.append(publish(t, s))
        if tok == 1:
            first = path_of(s)
        if tok == 2:
            pinned = path_of(s)
    orphan = path_of(
        outputs.stage(
            t,
            key,
            pa.table({k: ["lost"] for k in fraud_spec.features.unique_key}),
            run_key="r",
            token=9,
            unique_key=fraud_spec.features.unique_key,
        )
    )
    client = mlflow_client(st.mlflow_uri, registry=True)
    exp = client.create_experiment("gc")
    run = client.create_run(exp, tags={TAG_SNAPSHOT: str(sids[1])})
    client.create_registered_model(fraud_spec.registry.model_name)
    client.create_model_version(fraud_spec.registry.model_name, "file:///nowhere", run.info.run_id)
    env = {"RAYORCH_HOME": str(home)}
    args = ["tables", "expire", "-c", "configs/fraud.yaml", "--older-than-days", "0"]
    args += ["--retain-last", "1", "--grace-hours", "0", "--json"]
    dry = run_cli(*args, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    doc = json_out(dry)
    assert doc["dry_run"] and doc["expired"] == [sids[0]] and doc["kept_for_models"] == [sids[1]]
    planned = {f["path"] for f in doc["orphans"]["delete"]}
    assert {first, orphan} <= planned and pinned not in planned
    assert len(t.require().snapshots()) == 3 and all(exists(t, p) for p in planned)
    real = run_cli(*args, env=env)
    assert real.returncode == 0, real.stderr
    got = json_out(real)
    assert got["expired"] == [sids[0]] and {f["path"] for f in got["orphans"]["deleted"]} == planned
    assert not exists(t, first) and not exists(t, orphan) and exists(t, pinned)
    table = t.require()
    assert [s.snapshot_id for s in table.snapshots()] == sids[1:]
    col = fraud_spec.features.unique_key[0]
    assert table.scan(snapshot_id=sids[1]).to_pandas()[col].tolist() == [f"{col}2"]
    assert table.scan().to_pandas()[col].tolist() == [f"{col}3"]
    human = run_cli("tables", "expire", "-c", "configs/fraud.yaml", env=env)
    assert human.returncode == 0 and "deleted 0 unreferenced file(s)" in human.stdout
