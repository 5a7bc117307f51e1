"""Ledger tables (SQLAlchemy Core). Times are UTC epoch seconds; JSON is stored as text."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: 2: owner epoch, owner process identity and lease length on backfills; producing versions
#: on units. A version-1 ledger is migrated in place (columns added), see ``MIGRATIONS``.
LEDGER_SCHEMA_VERSION = 2

metadata = MetaData()

meta_table = Table(
    "rayorch_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

backfills = Table(
    "backfills",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pipeline", String(200), nullable=False),
    Column("params_hash", String(64), nullable=False),
    Column("params", Text, nullable=False),  # JSON: config path, window, keys, steps, options
    Column("config_fingerprint", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("owner", String(200), nullable=False),  # host:pid of the driver holding it
    # Every write by a driver checks this epoch; a takeover increments it (one owner).
    Column("owner_epoch", Integer, nullable=False, default=0),
    Column("owner_info", Text, nullable=True),  # JSON OwnerInfo: host, pid, start time, job
    Column("lease_s", Float, nullable=False, default=60.0),  # judged by the database clock
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("summary", Text, nullable=True),  # JSON, written when it ends
    Index("ix_backfills_pipeline_params", "pipeline", "params_hash"),
)

units = Table(
    "units",
    metadata,
    Column("run_key", String(400), primary_key=True),
    Column("pipeline", String(200), nullable=False),
    Column("step", String(32), nullable=False),
    Column("partition", String(300), nullable=False),
    Column("state", String(16), nullable=False),
    Column("token", Integer, nullable=False, default=0),  # fencing token; only grows
    Column("holder", String(64), nullable=True),  # backfill id holding the claim
    Column("lease_until", Float, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("committed_token", Integer, nullable=True),
    Column("committed_at", Float, nullable=True),
    Column("committed_by", String(64), nullable=True),
    Column("output", Text, nullable=True),  # JSON manifest / result of the last commit
    Column("progress", Text, nullable=True),  # JSON, e.g. training epoch, waits
    Column("version", Text, nullable=True),  # JSON: what produced the commit (config/code/env)
    Column("updated_at", Float, nullable=False),
    Index("ix_units_holder", "holder"),
    Index("ix_units_pipeline_step", "pipeline", "step"),
)

backfill_units = Table(
    "backfill_units",
    metadata,
    Column("backfill_id", String(64), primary_key=True),
    Column("run_key", String(400), primary_key=True),
    Column("position", Integer, nullable=False),
)

unit_events = Table(
    "unit_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_key", String(400), nullable=False),
    Column("backfill_id", String(64), nullable=True),
    Column("event", String(16), nullable=False),  # CLAIM, COMMIT, FAIL, RELEASE, RETRY
    Column("token", Integer, nullable=True),
    Column("at", Float, nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_unit_events_run_key", "run_key"),
)


#: In-place upgrades: from version N, the DDL that brings a ledger to N + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE backfills ADD COLUMN owner_epoch INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE backfills ADD COLUMN owner_info TEXT",
        "ALTER TABLE backfills ADD COLUMN lease_s FLOAT NOT NULL DEFAULT 60.0",
        "ALTER TABLE units ADD COLUMN version TEXT",
    ),
}
