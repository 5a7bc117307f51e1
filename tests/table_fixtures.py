"""A fresh feature table (local disk or the S3 server) and staging into it, shared by the
table tests (tests/test_tables.py, tests/test_table_gc.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rayorch.data import outputs
from rayorch.data.tables import StepTable
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings


@pytest.fixture(name="table", params=["local", "s3"])
def feature_table(request, home):
    """A fresh feature table on local disk, or under RAYORCH_STORAGE_URL on the S3 server."""
    if request.param == "s3":
        request.getfixturevalue("s3_storage")
    st = load_settings()
    return StepTable(st, "pricing", st.resolve("data/features/pricing"), ["city", "date"], "f")


def stage(table: StepTable, key: PartitionKey, token: int, ids: list[str]) -> dict:
    data = pa.table({"id": ids, "v": [float(token)] * len(ids)})
    return outputs.stage(table, key, data, run_key=f"f/{key}", token=token, unique_key=["id"])
