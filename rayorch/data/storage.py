"""Every location rayorch reads or writes, local or ``s3://``, through one filesystem interface.

A location is a URI (``s3://bucket/prefix/x``, ``file:///abs``) or a local path. Callers never
branch on the scheme: they get a pyarrow ``FileSystem`` and a path inside it from
:func:`filesystem_for`, and list, stat, read and write through it — the raw hive layout is
listed the same way on disk and in a bucket. Credentials and the endpoint come from
:class:`rayorch.settings.Settings` (``AWS_*`` variables), read nowhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayorch.errors import ConfigError
from rayorch.settings import S3Settings, Settings, load_settings

_SCHEMES = ("s3", "s3a", "file", "")
_CURRENT: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "rayorch_storage_settings", default=None
)


@contextlib.contextmanager
def using(settings: Settings) -> Iterator[None]:
    """Resolve locations with ``settings`` inside this block (a Ray task gets the driver's
    settings as an argument; its own process environment may lack the AWS variables)."""
    token = _CURRENT.set(settings)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def is_remote(uri: str) -> bool:
    """True for object-store locations (no local directory behind them)."""
    return urlparse(str(uri)).scheme in ("s3", "s3a")


def join(uri: str, *parts: str) -> str:
    """``uri/part/part`` without doubling slashes; works for paths and URIs alike."""
    out = str(uri).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def filesystem_for(uri: str, settings: Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it.

    ``s3://bucket/key`` -> (S3FileSystem with the settings' credentials/endpoint, ``bucket/key``);
    a local path or ``file://`` URI -> (LocalFileSystem, absolute path).
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "s3a"):
        st = settings or _CURRENT.get() or load_settings()
        return _s3(st.s3), f"{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "file":
        return _local(), parsed.path
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        raise ConfigError(
            f"location {text!r}: scheme {parsed.scheme!r} is not supported; use a local path, "
            "file:// or s3:// (RAYORCH_STORAGE_URL, source.path, features.output)",
            location=text,
        )
    return _local(), text


@functools.lru_cache(maxsize=1)
def _local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


@functools.lru_cache(maxsize=8)
def _s3(s3: S3Settings) -> pafs.S3FileSystem:
    kw: dict[str, object] = {"region": s3.region or "us-east-1"}
    if s3.access_key and s3.secret_key:
        kw.update(access_key=s3.access_key, secret_key=s3.secret_key)
        if s3.session_token:
            kw["session_token"] = s3.session_token
    if s3.endpoint_url:
        ep = urlparse(s3.endpoint_url)
        kw["endpoint_override"] = ep.netloc or s3.endpoint_url
        if ep.scheme:
            kw["scheme"] = ep.scheme
    return pafs.S3FileSystem(**kw)


def iceberg_io_properties(settings: Settings) -> dict[str, str]:
    """The same S3 settings as pyiceberg FileIO properties (its own names for them)."""
    s3 = settings.s3
    props = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
    if s3.endpoint_url:
        props["s3.endpoint"] = s3.endpoint_url
    if s3.access_key and s3.secret_key:
        props["s3.access-key-id"] = s3.access_key
        props["s3.secret-access-key"] = s3.secret_key
        if s3.session_token:
            props["s3.session-token"] = s3.session_token
    props["s3.region"] = s3.region or "us-east-1"
    return props


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed child: its name, full path inside the filesystem, and whether a directory."""

    name: str
    path: str
    is_dir: bool
    size: int | None


def list_dir(fs: pafs.FileSystem, path: str) -> Iterator[Entry]:
    """The children of ``path`` (nothing when it does not exist): one LIST, no recursion."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except (FileNotFoundError, NotADirectoryError):
        return
    for info in infos:
        yield Entry(
            info.base_name,
            info.path,
            info.type == pafs.FileType.Directory,
            info.size if info.type == pafs.FileType.File else None,
        )


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole small file (markers, samples); parents are created as needed."""
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def open_output(fs: pafs.FileSystem, path: str) -> pa.NativeFile:
    """A new file to write. Parent directories are made only where the filesystem has them
    (local disk); an object store needs none, so writing costs one PUT and no marker calls."""
    if isinstance(fs, pafs.LocalFileSystem):
        parent = path.rsplit("/", 1)[0]
        if parent and parent != path:
            fs.create_dir(parent, recursive=True)
    return fs.open_output_stream(path)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The URI form of a path inside ``fs`` (``s3://`` for S3, the plain path locally)."""
    if isinstance(fs, pafs.S3FileSystem):
        return f"s3://{path}"
    return path


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One parquet file, wherever it is (a named file: never a directory listing)."""
    fs, path = filesystem_for(uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def read_parquet_files(uris: list[str], columns: list[str] | None = None) -> pa.Table:
    """Exactly the named files, concatenated (schemas unified permissively)."""
    if not uris:
        return pa.table({})
    return pa.concat_tables(
        [read_parquet(u, columns=columns) for u in uris], promote_options="permissive"
    )
