"""rayorch's own record of each alias it moves: the compare-and-set lives here, not in MLflow.

MLflow's public alias API is last-writer-wins and a tracking server offers no conditional
write, so the linearization point of a promotion is one row per (registry, model, alias) in the
ledger database, versioned by ``revision``::

    UPDATE registry_aliases SET version = :target, revision = revision + 1, pending = true, …
     WHERE registry = :r AND model = :m AND alias = :a AND revision = :seen

(an ``INSERT`` for an alias rayorch never moved, made conditional by the primary key). The
row is claimed in the same transaction that writes the attempt's ``STARTED`` audit row; only
then is the alias set through ``MlflowClient.set_registered_model_alias``; the attempt's
``FINISHED`` (or ``ROLLED_BACK``) and the row's ``pending = false`` (or its revert) commit
together. So the row always says what rayorch last set, and ``pending`` marks an attempt whose
MLflow write is unsettled (a coordinator died in between): the next promotion of that alias
settles it first, by reading the real alias.

The row is also how a move made *outside* rayorch (the MLflow UI, a script) is seen: MLflow's
alias no longer names the row's version. ``decisions.alias_drift`` turns that into a CONFLICT
(nothing is overwritten) unless the caller's ``--expect`` names the version MLflow shows, i.e.
the caller has seen the outside move and promotes from it.

Tables live on the ledger's ``metadata`` and use the ledger's engine (see ``audit.AuditLog``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from rayorch.ledger.schema import metadata

registry_aliases = Table(
    "registry_aliases",
    metadata,
    Column("registry", String(512), primary_key=True),  # MLflow tracking URI
    Column("model", String(256), primary_key=True),
    Column("alias", String(256), primary_key=True),
    Column("version", String(64), nullable=True),  # what rayorch last set; NULL: nothing yet
    Column("previous", String(64), nullable=True),  # the row's version before this revision
    Column("revision", Integer, nullable=False),  # grows by one with every change of the row
    Column("audit_id", Integer, nullable=False),  # the attempt that wrote this revision
    Column("pending", Boolean, nullable=False),  # claimed; MLflow's write not yet settled
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class AliasKey:
    registry: str
    model: str
    alias: str

    def where(self) -> Any:
        c = registry_aliases.c
        return (c.registry == self.registry) & (c.model == self.model) & (c.alias == self.alias)


@dataclass(frozen=True, slots=True)
class RecordedAlias:
    """rayorch's row for one alias, as read at the start of a promotion."""

    version: str | None
    previous: str | None
    revision: int
    audit_id: int
    pending: bool


def read(conn: Any, key: AliasKey) -> RecordedAlias | None:
    r = conn.execute(select(registry_aliases).where(key.where())).one_or_none()
    if r is None:
        return None
    return RecordedAlias(r.version, r.previous, int(r.revision), int(r.audit_id), bool(r.pending))


def claim(conn: Any, key: AliasKey, seen: RecordedAlias | None, target: str, audit_id: int) -> bool:
    """The compare-and-set: point the row at ``target`` only if it is still ``seen``.

    False when another promoter changed the row since it was read (nothing written)."""
    now = time.time()
    if seen is None:
        try:
            with conn.begin_nested():  # a savepoint: a lost insert race leaves the tx usable
                conn.execute(
                    insert(registry_aliases).values(
                        registry=key.registry, model=key.model, alias=key.alias,
                        version=target, previous=None, revision=1, audit_id=audit_id,
                        pending=True, updated_at=now,
                    )
                )  # fmt: skip
        except IntegrityError:
            return False
        return True
    c = registry_aliases.c
    done = conn.execute(
        update(registry_aliases)
        .where(key.where(), c.revision == seen.revision)
        .values(
            version=target,
            previous=seen.version,
            revision=seen.revision + 1,
            audit_id=audit_id,
            pending=True,
            updated_at=now,
        )
    ).rowcount
    return done == 1


def settle(conn: Any, key: AliasKey, audit_id: int, moved: bool) -> None:
    """End ``audit_id``'s claim: keep its version (MLflow moved) or put the previous one back.

    Conditional on the row still being that attempt's and pending, so settling twice, or an
    attempt from before the row existed, changes nothing."""
    c = registry_aliases.c
    values: dict[str, Any] = {"pending": False, "updated_at": time.time()}
    if not moved:
        values |= {"version": c.previous, "revision": c.revision + 1}
    conn.execute(
        update(registry_aliases)
        .where(key.where(), c.audit_id == audit_id, c.pending.is_(True))
        .values(**values)
    )
