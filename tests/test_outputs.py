"""Staged outputs: unique keys enforced, atomic publish, higher token wins, debris never read."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from rayorch.data.layout import MANIFEST_NAME, read_committed_manifest
from rayorch.data.outputs import publish, read_manifests, read_table, stage
from rayorch.errors import DuplicateKeysError
from rayorch.partitions import PartitionKey

KEY = PartitionKey.of(city="SF", date="2026-10-01")


def _t(ids):
    return pa.table({"id": ids, "v": [float(i) for i in range(len(ids))]})


def test_duplicate_keys_refused_with_keys_named(tmp_path):
    with pytest.raises(DuplicateKeysError) as ei:
        stage(tmp_path, KEY, _t(["a", "b", "a", "c", "c"]), run_key="k", token=1, unique_key=["id"])
    assert ei.value.fields["duplicate_count"] == 2
    assert set(ei.value.fields["duplicate_keys"]) == {"a", "c"}
    assert read_committed_manifest(tmp_path, KEY) is None


def test_publish_replaces_whole_and_higher_token_wins(tmp_path):
    m1 = stage(tmp_path, KEY, _t(["a", "b"]), run_key="k", token=1, unique_key=["id"])
    m3 = stage(tmp_path, KEY, _t(["x", "y", "z"]), run_key="k", token=3, unique_key=["id"])
    assert read_committed_manifest(tmp_path, KEY) is None  # staged only: nothing is live
    assert publish(tmp_path, KEY, m3)
    assert not publish(tmp_path, KEY, m1)  # a zombie's lower token cannot go back in time
    live, missing = read_manifests(tmp_path, [KEY, KEY.with_(city="LA")])
    assert missing == ["city=LA/date=2026-10-01"]
    assert live[0].token == 3 and read_table(live).column("id").to_pylist() == ["x", "y", "z"]
    # the replaced version's files were collected; re-publishing is idempotent
    assert not any(p.exists() for p in map(lambda f: __import__("pathlib").Path(f.path), m1.files))
    assert publish(tmp_path, KEY, m3)
    manifest = json.loads((tmp_path / KEY.path() / MANIFEST_NAME).read_text())
    assert manifest["rows"] == 3 and manifest["token"] == 3


def test_directory_glob_readers_never_see_staging(tmp_path):
    m = stage(tmp_path, KEY, _t(["a", "b"]), run_key="k", token=1, unique_key=["id"])
    stage(tmp_path, KEY, _t(["zombie"]), run_key="k", token=2, unique_key=["id"])  # never committed
    publish(tmp_path, KEY, m)
    # pyarrow's discovery skips '_'-prefixed paths: a glob reader sees no staged versions
    ds = pads.dataset(str(tmp_path / KEY.path()), format="parquet")
    assert ds.to_table().num_rows == 0
    assert read_table(read_manifests(tmp_path, [KEY])[0]).num_rows == 2
