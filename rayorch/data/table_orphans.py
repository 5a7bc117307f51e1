"""Which stored table files may be deleted: a pure decision (no catalog, no filesystem).

A file under a table's ``data/`` or ``metadata/`` is an orphan when no retained snapshot
refers to it (nor the current or a logged metadata file): an attempt that never published
(stale, failed, crashed), a partition version only expired snapshots had, old metadata. It
is deleted only when it is also older than the grace period: a unit that is still running,
or whose ledger commit is not yet published, wrote its file moments ago and publishes it
soon (or is rolled forward on resume). Snapshots a registered model version was trained on
are never expired (:mod:`rayorch.data.retention`), so their files stay referenced.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One listed file: its URI (as table metadata spells it), size and modification time."""

    path: str
    size: int
    modified_ms: int


class Keep(str, enum.Enum):
    """Why a listed file stays."""

    REFERENCED = "a retained snapshot or metadata file refers to it"
    YOUNG = "unreferenced but younger than the grace period: an attempt may still publish it"


@dataclass(frozen=True, slots=True)
class OrphanPlan:
    delete: tuple[StoredFile, ...]
    kept_young: tuple[StoredFile, ...]
    referenced: int  # listed files a retained snapshot needs

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.delete)


def keep_reason(f: StoredFile, referenced: set[str], cutoff_ms: int) -> Keep | None:
    """None: delete ``f``. ``cutoff_ms``: files modified at or after it are young."""
    if f.path in referenced:
        return Keep.REFERENCED
    if f.modified_ms >= cutoff_ms:
        return Keep.YOUNG
    return None


def plan_orphans(
    stored: Sequence[StoredFile], referenced: Iterable[str], *, cutoff_ms: int
) -> OrphanPlan:
    refs = set(referenced)
    delete, young, kept = [], [], 0
    for f in sorted(stored, key=lambda f: f.path):
        why = keep_reason(f, refs, cutoff_ms)
        if why is None:
            delete.append(f)
        elif why is Keep.YOUNG:
            young.append(f)
        else:
            kept += 1
    return OrphanPlan(tuple(delete), tuple(young), kept)
