"""Shared fixtures: one local Ray per test session, a fresh RAYORCH_HOME per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from s3 import s3_server, s3_storage  # noqa: F401 - the S3 API fixtures (tests/s3.py)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)  # never attach to someone's `ray start` cluster
# Ray Train's controller polls its workers every 2 s by default, so each training run waits up
# to 2 s after its workers finish (measured: 4.7 s from the last worker step to fit() returning,
# 0.7 s at 0.25 s). Tests train dozens of times; Ray workers, CLI and scenario subprocesses
# inherit this. Production keeps Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray with more logical CPUs than workers (Train + Data on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An isolated RAYORCH_HOME with SQLite ledger and MLflow."""
    h = tmp_path / "home"
    monkeypatch.setenv("RAYORCH_HOME", str(h))
    monkeypatch.delenv("RAYORCH_DB_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


@pytest.fixture()
def settings(home):
    from rayorch.settings import load_settings

    return load_settings()


@pytest.fixture()
def fraud_spec():
    from rayorch.spec import load_pipeline

    return load_pipeline(CONFIGS / "fraud.yaml")


def pg_url() -> str | None:
    return os.environ.get("RAYORCH_TEST_PG_URL")


@pytest.fixture()
def pg_ledger_url():
    """A fresh PostgreSQL schema-less database per test (tables dropped before use)."""
    url = pg_url()
    if not url:
        if os.environ.get("CI") == "true":  # in CI a missing service is a failure
            pytest.fail("CI=true but RAYORCH_TEST_PG_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("RAYORCH_TEST_PG_URL not set: PostgreSQL tests need a server (CI sets it)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from rayorch.ledger.schema import metadata

    eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        metadata.drop_all(eng)
        with eng.begin() as c:  # pyiceberg's SqlCatalog tables live in the same database
            c.execute(text("DROP TABLE IF EXISTS iceberg_tables, iceberg_namespace_properties"))
    except OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL at {url} is unreachable: {e.orig}")
        pytest.skip(f"PostgreSQL at {url} is unreachable: {e.orig}")
    finally:
        eng.dispose()
    return url


sys.path.insert(0, str(REPO))
