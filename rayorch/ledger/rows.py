"""The ledger's row types (what callers get back) and their conversions from SQL rows."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rayorch.ledger.owners import OwnerInfo
from rayorch.ledger.states import BackfillState, UnitState


class ClaimOutcome(str, enum.Enum):
    GRANTED = "GRANTED"
    ALREADY_DONE = "ALREADY_DONE"
    FAILED_BEFORE = "FAILED_BEFORE"
    HELD = "HELD"  # by another backfill whose lease is live


@dataclass(frozen=True, slots=True)
class UnitRow:
    run_key: str
    step: str
    partition: str
    state: UnitState
    token: int
    holder: str | None
    lease_until: float | None
    attempts: int
    last_error: str | None
    committed_token: int | None
    committed_at: float | None
    committed_by: str | None
    output: dict[str, Any] | None
    progress: dict[str, Any] | None
    updated_at: float
    version: dict[str, str] | None = None  # what produced the committed output

    def lease_live(self, now: float) -> bool:
        return (
            self.state is UnitState.RUNNING
            and self.lease_until is not None
            and self.lease_until > now
        )


@dataclass(frozen=True, slots=True)
class ClaimResult:
    run_key: str
    outcome: ClaimOutcome
    token: int | None = None
    unit: UnitRow | None = None


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """What the ledger needs to know about a planned unit."""

    run_key: str
    pipeline: str
    step: str
    partition: str


@dataclass(frozen=True, slots=True)
class BackfillRow:
    id: str
    pipeline: str
    params: dict[str, Any]
    params_hash: str
    config_fingerprint: str
    state: BackfillState
    owner: str
    created_at: float
    updated_at: float
    heartbeat_at: float
    cancel_requested: bool
    summary: dict[str, Any] | None
    owner_epoch: int = 0
    owner_info: OwnerInfo | None = None
    lease_s: float = 60.0

    @property
    def ownership(self) -> Ownership:
        return Ownership(self.id, self.owner_epoch)


@dataclass(frozen=True, slots=True)
class Ownership:
    """The right to write for a backfill: its id and the owner epoch this driver holds.

    Every write of a driver carries it; the ledger refuses it once another driver took the
    backfill over (a higher epoch), so a paused driver cannot keep writing."""

    backfill_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Opened:
    """What :meth:`Ledger.open_backfill` did: the row, and whose backfill was taken over."""

    backfill: BackfillRow
    resumed: bool
    took_over_from: OwnerInfo | None = None
    why: str = ""

    @property
    def ownership(self) -> Ownership:
        return self.backfill.ownership


def _row_to_unit(r: Any) -> UnitRow:
    return UnitRow(
        run_key=r.run_key,
        step=r.step,
        partition=r.partition,
        state=UnitState(r.state),
        token=r.token,
        holder=r.holder,
        lease_until=r.lease_until,
        attempts=r.attempts,
        last_error=r.last_error,
        committed_token=r.committed_token,
        committed_at=r.committed_at,
        committed_by=r.committed_by,
        output=json.loads(r.output) if r.output else None,
        progress=json.loads(r.progress) if r.progress else None,
        updated_at=r.updated_at,
        version=json.loads(r.version) if r.version else None,
    )


def _row_to_backfill(r: Any) -> BackfillRow:
    return BackfillRow(
        id=r.id,
        pipeline=r.pipeline,
        params=json.loads(r.params),
        params_hash=r.params_hash,
        config_fingerprint=r.config_fingerprint,
        state=BackfillState(r.state),
        owner=r.owner,
        created_at=r.created_at,
        updated_at=r.updated_at,
        heartbeat_at=r.heartbeat_at,
        cancel_requested=bool(r.cancel_requested),
        summary=json.loads(r.summary) if r.summary else None,
        owner_epoch=r.owner_epoch or 0,
        owner_info=OwnerInfo(**json.loads(r.owner_info)) if r.owner_info else None,
        lease_s=float(r.lease_s or 60.0),
    )


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:24]
