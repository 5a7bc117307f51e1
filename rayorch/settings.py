"""Embedded defaults and their environment overrides.

Everything runs on one machine with no configuration: state lives under ``RAYORCH_HOME``
(default ``./.rayorch``). ``RAYORCH_DB_URL``, ``MLFLOW_TRACKING_URI`` and ``RAY_ADDRESS``
move the ledger, tracking and compute elsewhere without code changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    db_url: str
    mlflow_uri: str
    ray_address: str | None
    log_level: str = "WARNING"  # RAYORCH_LOG_LEVEL; logs go to stderr

    def resolve(self, path: str) -> str:
        """Resolve a config path: URIs and absolute paths as is, relative under home."""
        if "://" in path or os.path.isabs(path):
            return path
        return str(self.home / path)


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
    )
