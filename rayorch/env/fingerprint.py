"""The environment fingerprint, captured inside the Ray worker that ran a unit.

A fingerprint holds what decides how code behaves: image, Python, the full installed package
set, selected env vars and the lockfile hash. Its ``digest`` covers exactly those, so two
workers with the same digest run the same environment; host, pid and time are recorded but
kept out of it. The git commit of the pipeline code is recorded but is not part of the
environment digest (code changes are reported separately by diff and reproduce).

Reading the installed package set costs tens of milliseconds once; it is cached per process
and per ``sys.path``, so a worker that runs many units pays it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rayorch.settings import env_values, load_settings

FINGERPRINT_VERSION = 1
KEY_PACKAGES = ("ray", "torch", "pyarrow", "mlflow")
_NAME_RE = re.compile(r"[-_.]+")


def normalize_name(name: str) -> str:
    """PEP 503 normalized distribution name (``Foo_Bar`` and ``foo-bar`` are one package)."""
    return _NAME_RE.sub("-", name).lower()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    python: str
    implementation: str
    platform: str
    image: str | None
    image_source: str  # "observed" (a node/pod env var), "declared" (the config) or "none"
    packages: dict[str, str]
    env_vars: dict[str, str | None]
    lockfile: str | None = None
    lockfile_sha256: str | None = None
    git_commit: str | None = None
    # Recorded, not part of the digest:
    worker: str = ""
    host: str = ""
    pid: int = 0
    captured_at: float = 0.0
    capture_ms: float = 0.0
    version: int = FINGERPRINT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def digest_payload(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "implementation": self.implementation,
            "platform": self.platform,
            "image": self.image,
            "packages": dict(sorted(self.packages.items())),
            "env_vars": dict(sorted(self.env_vars.items())),
            "lockfile_sha256": self.lockfile_sha256,
        }

    @property
    def digest(self) -> str:
        blob = json.dumps(self.digest_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def key_versions(self) -> dict[str, str | None]:
        return {n: self.packages.get(n) for n in KEY_PACKAGES}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["digest"] = self.digest
        d["key_versions"] = self.key_versions()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """What a result dict or a ledger row carries (the full set lives in the artifact)."""
        return {
            "digest": self.digest,
            "image": self.image,
            "python": self.python,
            "packages": len(self.packages),
            "worker": self.worker,
            "host": self.host,
            "pid": self.pid,
            "capture_ms": round(self.capture_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class EnvContext:
    """What the driver hands every worker of a unit: the declared environment and the guard."""

    pipeline: str
    image: str | None = None
    lockfile: str | None = None
    lockfile_sha256: str | None = None
    record_env: tuple[str, ...] = ()
    git_commit: str | None = None
    db_url: str | None = None  # where per-unit digests go (None: not stored, no guard)
    guard: bool = True  # compare with the backfill's reference environment

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["record_env"] = list(self.record_env)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvContext:
        return cls(**{**d, "record_env": tuple(d.get("record_env", ()))})

    def without_guard(self) -> EnvContext:
        return replace(self, guard=False)


_PACKAGES_CACHE: dict[tuple[str, ...], dict[str, str]] = {}


def installed_packages() -> dict[str, str]:
    """Normalized name -> version of every distribution importable from ``sys.path``.

    The first one found on ``sys.path`` wins, as it does for ``import``. Read from the
    ``*.dist-info`` directory names (``name-version.dist-info``, a listing per path entry)
    rather than by parsing each METADATA file, which is ten times slower; ``*.egg-info`` falls
    back to its PKG-INFO. Cached per process and ``sys.path``.
    """
    key = tuple(sys.path)
    cached = _PACKAGES_CACHE.get(key)
    if cached is not None:
        return cached
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for n in names:
            got = _dist_from_dirname(entry or ".", n)
            if got is not None:
                found.setdefault(normalize_name(got[0]), got[1])
    _PACKAGES_CACHE.clear()
    _PACKAGES_CACHE[key] = dict(sorted(found.items()))
    return _PACKAGES_CACHE[key]


def _dist_from_dirname(entry: str, n: str) -> tuple[str, str] | None:
    if n.endswith(".dist-info"):
        stem = n[: -len(".dist-info")]
        name, sep, version = stem.partition("-")
        if sep and version:
            return name, version
        return _from_metadata(os.path.join(entry, n, "METADATA"))
    if n.endswith(".egg-info"):
        path = os.path.join(entry, n)
        return _from_metadata(os.path.join(path, "PKG-INFO") if os.path.isdir(path) else path)
    return None


def _from_metadata(path: str) -> tuple[str, str] | None:
    name = version = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line[5:].strip()
                elif line.startswith("Version:"):
                    version = line[8:].strip()
                if (name and version) or not line.strip():
                    break
    except OSError:
        return None
    return (name, version) if name and version else None


def observed_image() -> str | None:
    """The image this node or pod runs, as its launcher announces it (the first of
    ``rayorch.settings.IMAGE_ENV_VARS`` that is set)."""
    return load_settings().image


def capture(ctx: EnvContext | None = None, *, worker: str = "") -> Fingerprint:
    """Fingerprint this process (call it inside the Ray worker that runs the unit)."""
    t0 = time.perf_counter()
    ctx = ctx or EnvContext(pipeline="")
    seen = observed_image()
    image, source = (seen, "observed") if seen else (ctx.image, "declared" if ctx.image else "none")
    fp = Fingerprint(
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=f"{sys.platform}-{platform.machine()}",
        image=image,
        image_source=source,
        packages=installed_packages(),
        env_vars=env_values(ctx.record_env),
        lockfile=ctx.lockfile,
        lockfile_sha256=ctx.lockfile_sha256,
        git_commit=ctx.git_commit,
        worker=worker,
        host=socket.gethostname(),
        pid=os.getpid(),
        captured_at=time.time(),
    )
    return replace(fp, capture_ms=(time.perf_counter() - t0) * 1000)


# --- driver side: what goes into the EnvContext ------------------------------------------------
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(start: str | Path | None = None) -> str | None:
    """HEAD commit of the git work tree containing ``start`` (cwd), read from files; or None."""
    env = load_settings().git_commit  # RAYORCH_GIT_COMMIT pins it
    if env:
        return env
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        git = d / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            if text.startswith("gitdir:"):
                git = (d / text.split(":", 1)[1].strip()).resolve()
        if git.is_dir():
            return _read_head(git)
    return None


def _read_head(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.split(":", 1)[1].strip()
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for base in (git, common):
        p = base / ref
        if p.is_file():
            return p.read_text().strip() or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    return None


def resolve_lockfile(path: str | None, cwd: str | Path | None = None) -> str | None:
    """A relative lockfile path is relative to the current working directory (documented)."""
    if path is None:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else Path(cwd or os.getcwd()) / p)


def env_context(spec: Any, db_url: str | None, *, guard: bool = True) -> EnvContext:
    """Build the EnvContext of a pipeline on the driver (reads the lockfile and git HEAD)."""
    from rayorch.errors import ConfigError

    env = getattr(spec, "environment", None)
    lockfile = resolve_lockfile(env.lockfile if env else None)
    sha = None
    if lockfile is not None:
        try:
            sha = file_sha256(lockfile)
        except OSError as e:
            raise ConfigError(
                f"environment.lockfile {env.lockfile!r} (resolved against the current "
                f"directory to {lockfile}) cannot be read: {e.strerror}",
                field="environment.lockfile",
                path=lockfile,
            ) from None
    return EnvContext(
        pipeline=spec.name,
        image=env.image if env else None,
        lockfile=env.lockfile if env else None,
        lockfile_sha256=sha,
        record_env=tuple(env.env_vars_to_record) if env else (),
        git_commit=git_commit(),
        db_url=db_url,
        guard=guard,
    )
