"""Locations through one filesystem interface: local paths and s3:// on a real S3 API."""

from rayorch.data import storage
from rayorch.settings import load_settings


def test_s3_roundtrip(s3_storage):
    st = load_settings()
    assert st.storage_root == s3_storage
    fs, p = storage.filesystem_for(st.resolve("raw/x/_SUCCESS"), st)
    storage.write_bytes(fs, p, b"")
    parent = p.rsplit("/", 1)[0]
    names = [e.name for e in storage.list_dir(fs, parent)]
    assert names == ["_SUCCESS"]
    assert list(storage.list_dir(fs, parent + "/nope")) == []


def test_local_and_relative_resolution(tmp_path, home):
    st = load_settings()
    assert st.storage_root == str(home.resolve())
    assert st.resolve("data/x") == f"{home.resolve()}/data/x"
    assert st.resolve("s3://b/k") == "s3://b/k"
    fs, p = storage.filesystem_for(str(tmp_path / "a" / "f"), st)
    storage.write_bytes(fs, p, b"hi")
    assert [e.name for e in storage.list_dir(fs, str(tmp_path / "a"))] == ["f"]
    assert storage.to_uri(fs, p) == p


def test_unknown_scheme_is_refused(home):
    import pytest

    from rayorch.errors import ConfigError

    with pytest.raises(ConfigError, match="gs"):
        storage.filesystem_for("gs://bucket/x", load_settings())
