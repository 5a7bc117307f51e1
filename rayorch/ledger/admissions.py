"""The scheduler's durable state in the ledger database: admissions, queued requests, leases.

One row per request the scheduler knows (``state`` QUEUED or ADMITTED) with its holder (the
driver renewing its lease) and ``lease_until``; one ``scheduler_state`` row per key for the
cluster config in force and the Ray cluster it belongs to. The scheduler actor writes here
after every change and rebuilds itself from here when Ray restarts it; a holder whose lease
runs out (a SIGKILLed driver) loses what it held. Tables live on the ledger's ``metadata`` and
are created with the ledger's own engine factory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, Index, String, Table, Text, delete, select, update
from sqlalchemy.engine import Engine

from rayorch.ledger.engine import _make_engine
from rayorch.ledger.schema import metadata

scheduler_admissions = Table(
    "scheduler_admissions",
    metadata,
    Column("workload_id", String(400), primary_key=True),
    Column("state", String(16), nullable=False),  # QUEUED | ADMITTED
    Column("request", Text, nullable=False),  # JSON: Request.to_dict()
    Column("placement", Text, nullable=True),  # JSON: PlacementPlan.to_dict() when admitted
    Column("reservation", Text, nullable=True),  # JSON: Reservation.to_dict() while preempting
    Column("preempted_at", Text, nullable=False, default="[]"),  # JSON list of epoch seconds
    Column("yield_requested_at", Float, nullable=True),
    Column("holder", String(200), nullable=False, default=""),
    Column("lease_until", Float, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("ix_scheduler_admissions_holder", "holder"),
)

scheduler_state = Table(
    "scheduler_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class AdmissionRow:
    workload_id: str
    state: str
    request: dict[str, Any]
    placement: dict[str, Any] | None
    reservation: dict[str, Any] | None
    preempted_at: tuple[float, ...]
    yield_requested_at: float | None
    holder: str
    lease_until: float | None
    started_at: float | None

    def values(self, now: float) -> dict[str, Any]:
        return {
            "workload_id": self.workload_id,
            "state": self.state,
            "request": json.dumps(self.request),
            "placement": json.dumps(self.placement) if self.placement else None,
            "reservation": json.dumps(self.reservation) if self.reservation else None,
            "preempted_at": json.dumps(list(self.preempted_at)),
            "yield_requested_at": self.yield_requested_at,
            "holder": self.holder,
            "lease_until": self.lease_until,
            "started_at": self.started_at,
            "updated_at": now,
        }


class AdmissionStore:
    """Narrow store the scheduler actor uses; every call is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url)
        metadata.create_all(
            self.engine, tables=[scheduler_admissions, scheduler_state], checkfirst=True
        )

    def close(self) -> None:
        self.engine.dispose()

    def rows(self) -> list[AdmissionRow]:
        with self.engine.begin() as c:
            found = c.execute(select(scheduler_admissions)).mappings().all()
        return [
            AdmissionRow(
                r["workload_id"],
                r["state"],
                json.loads(r["request"]),
                json.loads(r["placement"]) if r["placement"] else None,
                json.loads(r["reservation"]) if r["reservation"] else None,
                tuple(json.loads(r["preempted_at"] or "[]")),
                r["yield_requested_at"],
                r["holder"],
                r["lease_until"],
                r["started_at"],
            )
            for r in found
        ]

    def write(self, upserts: Iterable[AdmissionRow], deletes: Iterable[str], now: float) -> None:
        """Replace the given rows and delete others, in one transaction."""
        ups, dels = list(upserts), sorted(set(deletes))
        if not ups and not dels:
            return
        with self.engine.begin() as c:
            ids = dels + [r.workload_id for r in ups]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                c.execute(
                    delete(scheduler_admissions).where(
                        scheduler_admissions.c.workload_id.in_(chunk)
                    )
                )
            if ups:
                c.execute(scheduler_admissions.insert(), [r.values(now) for r in ups])

    def renew(self, holder: str, lease_until: float) -> int:
        with self.engine.begin() as c:
            return c.execute(
                update(scheduler_admissions)
                .where(scheduler_admissions.c.holder == holder)
                .values(lease_until=lease_until)
            ).rowcount

    def get_state(self, key: str) -> str | None:
        with self.engine.begin() as c:
            return c.execute(
                select(scheduler_state.c.value).where(scheduler_state.c.key == key)
            ).scalar()

    def set_state(self, key: str, value: str, now: float) -> None:
        with self.engine.begin() as c:
            c.execute(delete(scheduler_state).where(scheduler_state.c.key == key))
            c.execute(scheduler_state.insert().values(key=key, value=value, updated_at=now))

    def clear(self) -> int:
        """Forget every admission (state from a Ray cluster that no longer exists)."""
        with self.engine.begin() as c:
            return c.execute(delete(scheduler_admissions)).rowcount
