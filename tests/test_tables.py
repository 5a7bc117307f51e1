"""Feature tables: staged files invisible, fenced partition replace, stale tokens never
visible, concurrent publishers, time travel -- on local disk and on a real S3 API (moto)."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from rayorch.data import outputs, storage
from rayorch.data.reader import pin_window, scan_window
from rayorch.data.tables import SUMMARY_UNITS, Published, StepTable, token_of
from rayorch.errors import DataError, DuplicateKeysError, NotFoundError
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings
from tests.table_fixtures import feature_table, stage  # noqa: F401 (the `table` fixture)

KEY = PartitionKey.of(city="SF", date="2026-10-01")
CITIES = ["SF", "NYC", "LA"]


def rows(table: StepTable, keys=None) -> list[tuple[str, str, float]]:
    t = table.require().scan().to_arrow()
    got = sorted(zip(t["city"].to_pylist(), t["id"].to_pylist(), t["v"].to_pylist(), strict=True))
    return [r for r in got if keys is None or r[0] in keys]


def test_duplicate_keys_and_foreign_partition_columns_are_refused(home):
    st = load_settings()
    t = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    with pytest.raises(DuplicateKeysError) as ei:
        stage(t, KEY, 1, ["a", "a", "b", "c", "c"])
    assert ei.value.fields["duplicate_count"] == 2
    assert set(ei.value.fields["duplicate_keys"]) == {"a", "c"}
    bad = pa.table({"id": ["a"], "city": ["LA"]})
    with pytest.raises(DataError, match="'city'"):
        outputs.stage(t, KEY, bad, run_key="k", token=1, unique_key=["id"])
    assert t.load() is None  # nothing was ever published


def test_staged_is_invisible_publish_replaces_whole_stale_never_wins(table):
    s3 = stage(table, KEY, 3, ["x", "y", "z"])
    assert table.load() is None and token_of(s3["files"][0]["path"]) == 3
    [r] = table.publish_many([outputs.publish_item(s3)])
    assert r.outcome is Published.REPLACED and r.snapshot_id is not None
    # a zombie attempt with a lower token can never go back in time, even after staging
    s1 = stage(table, KEY, 1, ["old"])
    [stale] = table.publish_many([outputs.publish_item(s1)])
    assert stale.outcome is Published.STALE and stale.live_token == 3
    [again] = table.publish_many([outputs.publish_item(s3)])  # idempotent
    assert again.outcome is Published.ALREADY
    assert rows(table) == [("SF", i, 3.0) for i in "xyz"]
    s5 = stage(table, KEY, 5, ["p", "q"])
    table.publish_many([outputs.publish_item(s5)])
    assert rows(table) == [("SF", "p", 5.0), ("SF", "q", 5.0)]  # replaced, not appended
    snap = table.require().current_snapshot()
    assert json.loads(snap.summary[SUMMARY_UNITS]) == [[str(KEY), f"f/{KEY}", 5]]
    assert table.live()[str(KEY)].token == 5
    fresh = StepTable(table.settings, "pricing", table.location, table.dims, "f")
    assert fresh.live() == table.live()  # the publisher's advanced index = the manifests


def test_batch_commit_newest_per_partition_and_one_snapshot(table):
    keys = [KEY.with_(city=c) for c in CITIES]
    items = [outputs.publish_item(stage(table, k, 2, [f"{k}-{i}" for i in range(4)])) for k in keys]
    older = outputs.publish_item(stage(table, keys[0], 1, ["zombie"]))
    older = type(older)(older.run_key + "#old", older.token, older.partition, older.files)
    got = table.publish_many([*items, older])
    assert [g.outcome for g in got] == [Published.REPLACED] * 3 + [Published.STALE]
    assert len(table.require().snapshots()) == 1  # the whole batch is one commit
    assert len(rows(table)) == 12 and not [r for r in rows(table) if r[1] == "zombie"]


def test_plain_readers_see_exactly_the_live_version(table):
    keys = [KEY.with_(city=c) for c in CITIES]
    table.publish_many([outputs.publish_item(stage(table, k, 1, ["a", "b"])) for k in keys])
    table.publish_many([outputs.publish_item(stage(table, keys[0], 2, ["c"]))])
    window = pin_window(table, keys)
    assert window.missing == () and window.rows == 5
    # pyiceberg's own scan and a plain parquet reader over the snapshot's files agree
    assert scan_window(table, window).num_rows == 5
    fs, _ = storage.filesystem_for(window.files[0])
    paths = [storage.filesystem_for(f)[1] for f in window.files]
    assert pads.dataset(paths, filesystem=fs).to_table().num_rows == 5


def test_time_travel_reads_an_old_snapshot_after_reprocess(table):
    table.publish_many([outputs.publish_item(stage(table, KEY, 1, ["a", "b"]))])
    old = pin_window(table, [KEY])
    table.publish_many([outputs.publish_item(stage(table, KEY, 2, ["c"]))])
    assert pin_window(table, [KEY]).digest != old.digest
    again = pin_window(table, [KEY], old.snapshot_id)
    assert again.files == old.files and again.digest == old.digest
    assert sorted(scan_window(table, again)["id"].to_pylist()) == ["a", "b"]
    with pytest.raises(NotFoundError, match="expired"):
        pin_window(table, [KEY], 12345)


def test_concurrent_publishers_lose_no_partition_and_keep_the_newest(table):
    """Four threads commit overlapping batches at once: every compare-and-set conflict is
    re-planned, the highest token of each partition is what is live."""
    keys = [KEY.with_(date=f"2026-10-{d:02d}") for d in range(1, 9)]
    staged = {
        (k, tok): outputs.publish_item(stage(table, k, tok, [f"{k}-{tok}"]))
        for k in keys
        for tok in (1, 2, 3, 4)
    }
    table.publish_many([staged[(keys[0], 1)]])  # create the table first
    errors: list[BaseException] = []

    def publisher(tok: int) -> None:
        own = StepTable(table.settings, "pricing", table.location, table.dims, "f")  # a driver
        try:
            own.publish_many([staged[(k, tok)] for k in keys])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=publisher, args=(t,)) for t in (3, 1, 4, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    live = table.live(keys)
    assert {k: p.token for k, p in live.items()} == {str(k): 4 for k in keys}
    assert sorted(r[1] for r in rows(table)) == sorted(f"{k}-4" for k in keys)


def test_open_table_names_a_missing_table(home, fraud_spec):
    from rayorch import open_table

    with pytest.raises(NotFoundError, match=r"fraud\.features"):
        open_table(fraud_spec)


@pytest.mark.parametrize(
    ("protected", "retain_last", "expire", "kept"),
    [
        ((), 1, (1, 2, 3), ()),  # everything old but the current one
        ((2,), 1, (1, 3), (2,)),  # a registered model's snapshot is never expired
        ((), 3, (1, 2), ()),  # the newest three stay
        ((5,), 1, (1, 2, 3), ()),  # the current one is kept anyway
    ],
)
def test_expiry_plan_keeps_current_newest_and_model_snapshots(protected, retain_last, expire, kept):
    from rayorch.data.retention import SnapshotRef, plan_expiry

    snaps = [SnapshotRef(i, i * 1000) for i in range(1, 6)]  # 5 is current; 4 is young
    got = plan_expiry(snaps, 5, protected, older_than_ms=4000, retain_last=retain_last)
    assert (got.expire, got.kept_for_models) == (expire, kept)


def test_expire_then_time_travel_says_gone_and_model_snapshot_survives(home):
    from rayorch.data.tables import expire_snapshots

    st = load_settings()
    t = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    sids = []
    for tok in (1, 2, 3):
        t.publish_many([outputs.publish_item(stage(t, KEY, tok, [f"r{tok}"]))])
        sids.append(t.require().current_snapshot().snapshot_id)
    plan = expire_snapshots(t, {sids[1]}, older_than_ms=2**62, retain_last=1)
    assert plan.expire == (sids[0],) and plan.kept_for_models == (sids[1],)
    assert scan_window(t, pin_window(t, [KEY], sids[1]))["id"].to_pylist() == ["r2"]
    with pytest.raises(NotFoundError, match="expired"):
        pin_window(t, [KEY], sids[0])


def test_tables_list_json_and_old_layout_refused(home, tmp_path):
    from rayorch.errors import ConfigError
    from tests.helpers import json_out, run_cli

    st = load_settings()
    t = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    t.publish_many([outputs.publish_item(stage(t, KEY, 1, ["a"]))])
    proc = run_cli("tables", "list", "--json", env={"RAYORCH_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    [info] = json_out(proc)["tables"]
    assert info["identifier"] == "p.f" and info["location"].endswith("/out")
    assert info["current_snapshot"] == t.require().current_snapshot().snapshot_id
    assert info["catalog_uri"].startswith("sqlite:///") and info["warehouse"].endswith("warehouse")
    old = StepTable(st, "q", str(tmp_path / "old"), ["city", "date"], "f")
    (tmp_path / "old" / "city=SF" / "date=2026-10-01").mkdir(parents=True)
    (tmp_path / "old" / "city=SF" / "date=2026-10-01" / "_manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"old manifest layout.*mv "):
        old.refuse_old_layout()


def test_a_publisher_that_created_the_table_survives_a_conflicting_commit(home):
    st = load_settings()
    a = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    b = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    a.publish_many([outputs.publish_item(stage(a, KEY, 1, ["a"]))])  # a created the table
    b.publish_many([outputs.publish_item(stage(b, KEY.with_(city="LA"), 1, ["b"]))])
    [r] = a.publish_many([outputs.publish_item(stage(a, KEY, 2, ["c"]))])  # a's base is stale
    assert r.outcome is Published.REPLACED
    assert sorted(x[1] for x in rows(a)) == ["b", "c"]


def test_drivers_creating_the_table_at_once_both_publish(home):
    st = load_settings()
    tables = [StepTable(st, "p", st.resolve("out"), ["city", "date"], "f") for _ in range(4)]
    items = [
        outputs.publish_item(stage(t, KEY.with_(city=c), 1, [c]))
        for t, c in zip(tables, ["SF", "LA", "NYC", "SEA"], strict=True)
    ]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def go(t: StepTable, item) -> None:
        barrier.wait()
        try:
            t.publish_many([item])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go, args=ti) for ti in zip(tables, items, strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and sorted(x[1] for x in rows(tables[0])) == ["LA", "NYC", "SEA", "SF"]


def test_file_descriptions_equal_pyiceberg_own(table):
    """Files described by their writer, and files whose footer is read at publish, become
    exactly the DataFiles pyiceberg's own ``parquet_file_to_data_file`` builds."""
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    from rayorch.data.table_files import FileToAdd, data_files

    keys = [KEY.with_(city=c) for c in [*CITIES, "SEA", "ATL"]]
    staged = [stage(table, k, 1, [f"{k}-{i}" for i in range(3 + n)]) for n, k in enumerate(keys)]
    assert all(s["files"][0]["iceberg"]["schema"] for s in staged)  # described when written
    table.publish_many([outputs.publish_item(staged[0])])  # creates the table
    ice = table.require()
    fields = ("file_path", "record_count", "file_size_in_bytes", "partition", "value_counts")
    fields += ("null_value_counts", "nan_value_counts", "lower_bounds", "upper_bounds")
    fields += ("column_sizes", "split_offsets", "spec_id", "content", "file_format")
    for described in (True, False):
        files = [
            FileToAdd(
                s["files"][0]["path"],
                PartitionKey.parse(s["partition"]),
                s["files"][0]["size"],
                s["files"][0]["iceberg"] if described else None,
            )
            for s in staged
        ]
        for ours, f in zip(data_files(ice.io, ice.metadata, files), files, strict=True):
            theirs = parquet_file_to_data_file(ice.io, ice.metadata, f.path)
            theirs.spec_id = ice.metadata.default_spec_id
            assert [getattr(ours, n) for n in fields] == [getattr(theirs, n) for n in fields]


def test_a_description_for_another_schema_is_not_used(home):
    """A writer's description made against a schema that is not the table's (here: the
    columns in another order, so other field ids) is ignored: the footer is read."""
    from rayorch.data.file_stats import fingerprint
    from rayorch.data.table_files import FileToAdd, data_files

    st = load_settings()
    t = StepTable(st, "p", st.resolve("out"), ["city", "date"], "f")
    t.publish_many([outputs.publish_item(stage(t, KEY, 1, ["a"]))])
    swapped = pa.table({"v": [2.0], "id": ["b"]})
    f = outputs.stage(t, KEY, swapped, run_key="k", token=2, unique_key=["id"])["files"][0]
    ice = t.require()
    assert f["iceberg"]["schema"] != fingerprint(ice.metadata.schema(), ice.metadata.properties)
    [df] = data_files(ice.io, ice.metadata, [FileToAdd(f["path"], KEY, f["size"], f["iceberg"])])
    id_field = ice.metadata.schema().find_field("id").field_id
    assert df.lower_bounds[id_field] == b"b"  # keyed by the table's ids, not the writer's
    t.publish_many([outputs.publish_item(outputs_item(f, 2))])
    assert rows(t) == [("SF", "b", 2.0)]


def outputs_item(f: dict, token: int) -> dict:
    return {"run_key": "k", "token": token, "partition": str(KEY), "files": [f]}
