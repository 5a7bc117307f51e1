"""Embedded defaults and their environment overrides.

Everything runs on one machine with no configuration: state lives under ``RAYORCH_HOME``
(default ``./.rayorch``). ``RAYORCH_DB_URL``, ``MLFLOW_TRACKING_URI`` and ``RAY_ADDRESS``
move the ledger, tracking and compute elsewhere without code changes. ``RAYORCH_STORAGE_URL``
(``s3://bucket/prefix`` or a directory) moves every relative location at once: raw sources,
feature tables, checkpoints and MLflow artifacts. S3 credentials come from the usual
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_REGION``, an
S3-compatible store's endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.

This module is the only place that reads the environment: every other module takes a
:class:`Settings` (or calls :func:`load_settings`, which reads it afresh on each call, so a
changed variable, a test's ``monkeypatch.setenv`` included, is seen at once). The variables
that describe the process rather than configure it (the image a node runs, a crash point, the
env vars a pipeline asks to record) are read here too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# The image a node or pod runs, as its launcher announces it (first one set wins).
IMAGE_ENV_VARS = ("RAYORCH_IMAGE", "RAY_IMAGE", "KUBERAY_IMAGE")
GIT_COMMIT_ENV = "RAYORCH_GIT_COMMIT"  # pins the recorded code commit (else read from .git)
CLUSTER_CONFIG_ENV = "RAYORCH_CLUSTER_CONFIG"  # the cluster config (namespaces, quotas)
CRASH_AT_ENV = "RAYORCH_CRASH_AT"  # a named crash point for crash tests (rayorch.faults)


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How rayorch reaches S3 (or an S3-compatible store). None: the library's own default."""

    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    db_url: str
    mlflow_uri: str
    ray_address: str | None
    log_level: str = "WARNING"  # RAYORCH_LOG_LEVEL; logs go to stderr
    storage_url: str | None = None  # RAYORCH_STORAGE_URL: root of every relative location
    s3: S3Settings = field(default_factory=S3Settings)
    cluster_config: str | None = None  # RAYORCH_CLUSTER_CONFIG
    git_commit: str | None = None  # RAYORCH_GIT_COMMIT
    image: str | None = None  # RAYORCH_IMAGE / RAY_IMAGE / KUBERAY_IMAGE: the image observed
    # RAY_AUTH_MODE as found (None: unset, so a private local Ray gets "disabled")
    ray_auth_mode: str | None = None

    @property
    def storage_root(self) -> str:
        """Where relative locations live: RAYORCH_STORAGE_URL, else RAYORCH_HOME."""
        return (self.storage_url or str(self.home)).rstrip("/")

    def resolve(self, path: str) -> str:
        """Resolve a config path: URIs and absolute paths as is, relative under the storage
        root (``RAYORCH_STORAGE_URL`` when set, else home)."""
        if "://" in path or os.path.isabs(path):
            return path
        return f"{self.storage_root}/{path}"

    @property
    def artifact_root(self) -> str:
        """MLflow artifacts of runs rayorch creates (follows the storage root)."""
        return self.resolve("mlartifacts")


def load_settings(home: str | Path | None = None) -> Settings:
    root = Path(home or os.environ.get("RAYORCH_HOME", ".rayorch")).expanduser().resolve()
    db_url = os.environ.get("RAYORCH_DB_URL") or f"sqlite:///{root / 'ledger.db'}"
    mlflow_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    return Settings(
        home=root,
        db_url=db_url,
        mlflow_uri=mlflow_uri,
        ray_address=os.environ.get("RAY_ADDRESS") or None,
        log_level=os.environ.get("RAYORCH_LOG_LEVEL", "WARNING").upper(),
        storage_url=_storage_url(os.environ.get("RAYORCH_STORAGE_URL")),
        s3=S3Settings(
            access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None,
        ),
        cluster_config=os.environ.get(CLUSTER_CONFIG_ENV) or None,
        git_commit=os.environ.get(GIT_COMMIT_ENV) or None,
        image=next((v for v in map(os.environ.get, IMAGE_ENV_VARS) if v), None),
        ray_auth_mode=os.environ.get("RAY_AUTH_MODE"),
    )


def crash_at() -> str | None:
    """``RAYORCH_CRASH_AT`` (``<point>`` or ``<point>:<n>``), read on each call.

    Not a field of :class:`Settings`: the driver passes a crash point four times per unit, and
    one env lookup costs a microsecond where :func:`load_settings` costs tens.
    """
    return os.environ.get(CRASH_AT_ENV) or None


def env_values(names: Iterable[str]) -> dict[str, str | None]:
    """The values of the named env vars in this process (None: unset), for the fingerprint's
    ``environment.env_vars_to_record``: what a worker saw, not a setting of rayorch."""
    return {k: os.environ.get(k) for k in names}


def _storage_url(value: str | None) -> str | None:
    """A URL as is; a plain directory made absolute (relative to the working directory)."""
    if not value:
        return None
    if "://" in value:
        return value.rstrip("/")
    return str(Path(value).expanduser().resolve())
