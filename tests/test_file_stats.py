"""A data file's Iceberg description, gathered by its writer: equal to pyiceberg's own
statistics for every column type and metrics mode it handles, pyiceberg's path for the rest."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import compute_statistics_plan, parquet_path_to_id_mapping

from rayorch.data import file_stats as tf

UTC = dt.timezone.utc
TOP = "\U0010ffff"  # no code point follows it: an upper bound cut there does not exist


def every_type(rows_per_group: int) -> tuple[pa.Table, pa.FileMetaData]:
    n = 7
    t = pa.table(
        {
            "i32": pa.array([3, None, -7, 12, 0, 5, 1], pa.int32()),
            "i64": pa.array([2**40, -(2**41), 0, 1, 2, 3, None], pa.int64()),
            "f32": pa.array([0.5, float("nan"), -1.25, 3.0, None, 2.0, 1.0], pa.float32()),
            "f64": pa.array([1e300, -1e-300, 0.0, float("nan"), 2.5, None, 7.0], pa.float64()),
            "flag": pa.array([True, False, None, True, True, False, True]),
            "text": pa.array(
                ["b" * 20, "a", "ü" * 17 + "z", None, "zz" + "é" * 30, "short", TOP * 17]
            ),
            "blob": pa.array([b"\xff" * 20, b"\x00", b"abc" * 9, None, b"", b"q", b"z" * 16]),
            "day": pa.array([dt.date(2026, 1, d) for d in range(1, n + 1)], pa.date32()),
            "ts": pa.array([dt.datetime(2026, 1, 1, h) for h in range(n)], pa.timestamp("us")),
            "tstz": pa.array(
                [dt.datetime(2026, 1, 2, h, tzinfo=UTC) for h in range(n)],
                pa.timestamp("us", "UTC"),
            ),
            "empty": pa.array([None] * n, pa.string()),
        }
    )
    collected: list[pa.FileMetaData] = []
    pq.write_table(t, io.BytesIO(), row_group_size=rows_per_group, metadata_collector=collected)
    return t, collected[0]


@pytest.mark.parametrize("rows_per_group", [100, 3, 1])
@pytest.mark.parametrize(
    "properties",
    [
        tf.TABLE_PROPERTIES,
        {"write.metadata.metrics.default": "full"},
        {"write.metadata.metrics.default": "truncate(2)"},
        {"write.metadata.metrics.default": "counts", "write.metadata.metrics.column.i32": "full"},
        {"write.metadata.metrics.default": "none", "write.metadata.metrics.column.text": "counts"},
    ],
)
def test_quick_statistics_equal_pyiceberg_own(rows_per_group, properties):
    table, md = every_type(rows_per_group)
    schema = tf.iceberg_schema(table.schema)
    stats = compute_statistics_plan(schema, properties)
    mapping = parquet_path_to_id_mapping(schema)
    columns = tf._columns(stats, mapping)
    assert columns is not None, "every column here is of a type the quick path handles"
    plan = tf._StatsPlan("fp", stats, mapping, columns)
    quick = tf._quick_stats(md, columns)
    assert quick is not None
    assert quick == tf._pyiceberg_stats(md, plan)
    if properties is tf.TABLE_PROPERTIES:  # the table's own settings: bounds are truncated
        text = str(mapping["text"])
        assert text not in quick["upper_bounds"]  # its max is 17 x U+10FFFF: no cut bound
        assert len(bytes.fromhex(quick["lower_bounds"][text]).decode()) <= 16
        assert str(mapping["empty"]) not in quick["lower_bounds"]  # all null: no bounds


def test_a_column_of_another_type_takes_pyiceberg_path():
    t = pa.table(
        {"id": ["a", "b"], "price": pa.array([Decimal("1.50"), None], pa.decimal128(9, 2))}
    )
    collected: list[pa.FileMetaData] = []
    pq.write_table(t, io.BytesIO(), metadata_collector=collected)
    plan = tf._stats_plan(t.schema)
    assert plan is not None and plan.columns is None  # decimals: pyiceberg's own path
    got = tf.describe(collected[0], t)
    assert got == {"schema": plan.fingerprint, **tf._pyiceberg_stats(collected[0], plan)}
    assert got["lower_bounds"]  # and it does describe the file


def test_a_file_not_as_planned_is_left_to_pyiceberg():
    """A chunk whose physical type is not the planned one (here: an int32 column written
    where the plan says int64) is not described quickly; pyiceberg's path decides."""
    table, md = every_type(100)
    schema = tf.iceberg_schema(table.schema)
    columns = tf._columns(compute_statistics_plan(schema, {}), parquet_path_to_id_mapping(schema))
    assert columns is not None
    wrong = dict(columns)
    wrong["i32"] = tf._Column(**{**_fields(columns["i32"]), "physical": "INT64"})
    assert tf._quick_stats(md, wrong) is None
    del wrong["i32"]
    assert tf._quick_stats(md, wrong) is None  # a column the plan does not know


def _fields(c: tf._Column) -> dict:
    return {name: getattr(c, name) for name in c.__slots__}
