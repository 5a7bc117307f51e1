"""Per-unit environment digests in the ledger database, and the backfill's reference.

Three tables beside the ledger's (same engine setup, created idempotently): full fingerprints
by digest (stored once), one row per (unit, worker) capture, and the reference digest of each
backfill. The reference is set by the first capture of the backfill with one INSERT; a
concurrent first capture loses the primary-key race and reads the winner's row, so every unit
of a backfill compares with the same reference.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from rayorch.env.diff import DriftDecision, decide_drift
from rayorch.env.fingerprint import Fingerprint
from rayorch.errors import InfrastructureError

metadata = MetaData()

env_fingerprints = Table(
    "env_fingerprints",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("fingerprint", Text, nullable=False),  # JSON, Fingerprint.to_dict()
    Column("created_at", Float, nullable=False),
)

env_unit_captures = Table(
    "env_unit_captures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_key", String(400), nullable=False),
    Column("backfill_id", String(64), nullable=True),
    Column("token", Integer, nullable=True),
    Column("worker", String(64), nullable=False),  # "task" for feature units, "rank<N>" in Train
    Column("digest", String(64), nullable=False),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_env_unit_captures_run_key", "run_key"),
    Index("ix_env_unit_captures_backfill", "backfill_id"),
)

env_backfill_reference = Table(
    "env_backfill_reference",
    metadata,
    Column("backfill_id", String(64), primary_key=True),
    Column("digest", String(64), nullable=False),
    Column("run_key", String(400), nullable=False),
    Column("at", Float, nullable=False),
)


class EnvStore:
    def __init__(self, url: str) -> None:
        from rayorch.ledger.store import _make_engine

        self.url = url
        self.engine = _make_engine(url)
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except Exception as e:
            if "already exists" not in str(e) and "UniqueViolation" not in type(e).__name__:
                raise InfrastructureError(
                    f"cannot create environment tables at {url}: {e}. Check RAYORCH_DB_URL.",
                    url=url,
                ) from e

    def close(self) -> None:
        self.engine.dispose()

    # -- writes -------------------------------------------------------------------------------
    def _put_fingerprint(self, c: Any, fp: Fingerprint) -> None:
        d = fp.digest
        if c.execute(
            select(env_fingerprints.c.digest).where(env_fingerprints.c.digest == d)
        ).first():
            return
        body = json.dumps(fp.to_dict(), sort_keys=True)
        try:
            with c.begin_nested():
                c.execute(
                    insert(env_fingerprints).values(
                        digest=d, fingerprint=body, created_at=time.time()
                    )
                )
        except IntegrityError:
            pass  # stored concurrently by another worker: same digest, same content

    def record(
        self, run_key: str, token: int | None, worker: str, fp: Fingerprint, backfill_id: str | None
    ) -> None:
        with self.engine.begin() as c:
            self._put_fingerprint(c, fp)
            c.execute(
                insert(env_unit_captures).values(
                    run_key=run_key,
                    backfill_id=backfill_id,
                    token=token,
                    worker=worker,
                    digest=fp.digest,
                    host=fp.host,
                    pid=fp.pid,
                    at=time.time(),
                )
            )

    def set_reference(
        self, backfill_id: str, run_key: str, fp: Fingerprint
    ) -> tuple[str, str, bool]:
        """Make ``fp`` the backfill's reference unless one exists.

        Returns (reference digest, its run key, whether this call set it).
        """
        try:
            with self.engine.begin() as c:
                row = c.execute(
                    select(env_backfill_reference).where(
                        env_backfill_reference.c.backfill_id == backfill_id
                    )
                ).first()
                if row is not None:
                    return row.digest, row.run_key, False
                c.execute(
                    insert(env_backfill_reference).values(
                        backfill_id=backfill_id, digest=fp.digest, run_key=run_key, at=time.time()
                    )
                )
                return fp.digest, run_key, True
        except IntegrityError:
            with self.engine.begin() as c:
                row = c.execute(
                    select(env_backfill_reference).where(
                        env_backfill_reference.c.backfill_id == backfill_id
                    )
                ).one()
                return row.digest, row.run_key, False

    # -- reads --------------------------------------------------------------------------------
    def fingerprint(self, digest: str) -> Fingerprint | None:
        with self.engine.connect() as c:
            body = c.execute(
                select(env_fingerprints.c.fingerprint).where(env_fingerprints.c.digest == digest)
            ).scalar()
        return Fingerprint.from_dict(json.loads(body)) if body else None

    def backfill_of(self, run_key: str, token: int) -> str | None:
        """The backfill holding ``run_key`` with this fencing token (None: not a live claim)."""
        from rayorch.ledger.schema import units

        with self.engine.connect() as c:
            return c.execute(
                select(units.c.holder).where(units.c.run_key == run_key, units.c.token == token)
            ).scalar()

    def captures(
        self, run_key: str | None = None, backfill_id: str | None = None
    ) -> list[dict[str, Any]]:
        q = select(env_unit_captures).order_by(env_unit_captures.c.id)
        if run_key is not None:
            q = q.where(env_unit_captures.c.run_key == run_key)
        if backfill_id is not None:
            q = q.where(env_unit_captures.c.backfill_id == backfill_id)
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    # -- the guard ----------------------------------------------------------------------------
    def guard(
        self, run_key: str, token: int | None, worker: str, fp: Fingerprint, *, check: bool = True
    ) -> tuple[DriftDecision, str | None, str | None]:
        """Record the capture and decide drift. Returns (decision, backfill id, reference run key)."""
        backfill_id = self.backfill_of(run_key, token) if token else None
        self.record(run_key, token, worker, fp, backfill_id)
        if not check or backfill_id is None:
            return decide_drift(None, fp), backfill_id, None
        ref_digest, ref_key, created = self.set_reference(backfill_id, run_key, fp)
        if ref_digest == fp.digest:
            return decide_drift(None if created else fp, fp), backfill_id, ref_key
        reference = self.fingerprint(ref_digest)
        if reference is None:  # cannot happen: stored before the reference is set
            raise InfrastructureError(
                f"reference fingerprint {ref_digest} missing", digest=ref_digest
            )
        return decide_drift(reference, fp), backfill_id, ref_key


_STORES: dict[str, EnvStore] = {}


def env_store(url: str) -> EnvStore:
    """One store (engine) per process and URL; workers reuse it across units."""
    st = _STORES.get(url)
    if st is None:
        st = _STORES[url] = EnvStore(url)
    return st
