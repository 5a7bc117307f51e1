"""Configs and partition keys: validation at load time, errors naming file and field."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from pydantic import ValidationError

from rayorch.errors import ConfigError, PartitionKeyError, RayorchError
from rayorch.partitions import PartitionKey, date_range, parse_key_selection, validate_segment
from rayorch.spec import load_pipeline
from tests.conftest import CONFIGS
from tests.helpers import run_cli


def _write(tmp_path, mutate):
    data = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    mutate(data)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_example_configs_load():
    fraud = load_pipeline(CONFIGS / "fraud.yaml")
    pricing = load_pipeline(CONFIGS / "pricing.yaml")
    assert fraud.key_dims == ["city"] and pricing.key_dims == ["city"]
    assert fraud.time_dim == "date"
    assert fraud.fingerprint() == load_pipeline(CONFIGS / "fraud.yaml").fingerprint()
    assert fraud.fingerprint() != pricing.fingerprint()
    with pytest.raises(ValidationError, match="frozen"):
        fraud.name = "other"


@pytest.mark.parametrize(
    ("mutate", "field", "needle"),
    [
        (lambda d: d["features"].update(unknwon=1), "features.unknwon", "Extra inputs"),
        (
            lambda d: d["train"]["scaling"].update(num_workers=0),
            "train.scaling.num_workers",
            "greater than or equal to 1",
        ),
        (
            lambda d: d["features"].update(entrypoint="no_colon"),
            "features.entrypoint",
            "package.module:function",
        ),
        (
            lambda d: d["partitions"]["keys"].update(city=["SF", "a/b"]),
            "partitions.keys",
            "reserved character",
        ),
        (lambda d: d["partitions"]["keys"].update(city=["SF", ".."]), "partitions.keys", ".."),
        (lambda d: d.update(schema_version=9), "schema_version", "unsupported schema_version"),
        (lambda d: d.pop("features"), "features", "Field required"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, mutate, field, needle):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as ei:
        load_pipeline(path)
    err = ei.value
    assert err.fields["file"] == str(path)
    assert err.fields["field"] == field
    assert str(path) in err.message and field in err.message and needle in err.message


def test_bad_config_cli_exit_code_and_message(tmp_path):
    path = _write(tmp_path, lambda d: d["train"].update(window_days="three"))
    proc = run_cli("plan", "--config", str(path), "--start", "2026-10-01", "--end", "2026-10-01")
    assert proc.returncode == 2
    assert "train.window_days" in proc.stderr and str(path) in proc.stderr


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_partition_key_canonical_and_roundtrip():
    a = PartitionKey.of(date="2026-10-01", city="SF")
    b = PartitionKey.parse("date=2026-10-01/city=SF")
    assert a == b and str(a) == "city=SF/date=2026-10-01"
    assert PartitionKey.parse(str(a)) == a
    assert a["city"] == "SF" and a.without("city") == PartitionKey.of(date="2026-10-01")
    assert hash(a) == hash(b)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x..y", "a=b", "nul\x00", " padded", "a,b"])
def test_unsafe_segments_rejected(bad):
    with pytest.raises(PartitionKeyError):
        validate_segment(bad)


@pytest.mark.parametrize("bad", ["city", "city=SF/city=LA", "City=SF", "city=a/b=c=d"])
def test_bad_key_strings(bad):
    with pytest.raises(PartitionKeyError):
        PartitionKey.parse(bad)


def test_date_range():
    days = date_range("2026-10-30", "2026-11-02")
    assert days[0] == dt.date(2026, 10, 30) and days[-1] == dt.date(2026, 11, 2) and len(days) == 4
    with pytest.raises(PartitionKeyError, match="before start"):
        date_range("2026-10-02", "2026-10-01")
    with pytest.raises(PartitionKeyError, match="ISO date"):
        date_range("2026-13-01", "2026-10-01")


def test_key_selection():
    assert parse_key_selection("city=SF,NYC") == {"city": ["SF", "NYC"]}
    assert parse_key_selection("city=SF;region=west") == {"city": ["SF"], "region": ["west"]}
    with pytest.raises(PartitionKeyError):
        parse_key_selection("city")
    with pytest.raises(PartitionKeyError):
        parse_key_selection("city=a/b")


def test_errors_pickle_with_fields():
    import pickle

    from rayorch.errors import StaleTokenError

    e = StaleTokenError("refused", run_key="k", token=1, current_token=2)
    e2 = pickle.loads(pickle.dumps(e))
    assert isinstance(e2, RayorchError) and e2.fields == {
        "run_key": "k",
        "token": 1,
        "current_token": 2,
    }
    assert e2.message == "refused"
