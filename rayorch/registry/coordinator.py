"""The promotion coordinator: one named, detached Ray actor per registry.

Every rayorch promotion of a registry passes through the actor named
``rayorch-promotions-<hash of the tracking URI>`` in namespace ``rayorch``; any driver or
notebook reaches the same one (``get_if_exists``). The actor takes calls concurrently
(``ACTOR_CONCURRENCY`` threads), but promotions of one model never interleave: concurrent ones
are carried out as one batch by one thread (``combining``), under the model's lock. A batch is,
per alias: settle orphans, read rayorch's row and MLflow's alias once, decide each promotion
(pure), write the audit rows, move the alias at most once, finish. The actor keeps no state
that is not in the ledger or MLflow: killed and restarted (``max_restarts=-1``), it first
settles what it left ``STARTED`` and then answers as before.

Crash-ordering invariant: the audit row is committed ``STARTED``, together with the claim of
rayorch's alias row (the compare-and-set, ``alias_rows``), before the alias is set in MLflow;
a ``STARTED`` row is settled only under the per-model lock, so no live promotion is ever
settled. Settling reads the real alias: at the target -> ``FINISHED`` (the move happened; the
row keeps it); elsewhere -> ``ROLLED_BACK`` (it did not; the row is put back). rayorch never
re-applies a move its caller saw fail; a caller that retries gets ``ALREADY_TARGET`` or a fresh
decision. An alias moved outside rayorch (MLflow's alias differs from the row) is reported,
never overwritten, see ``decisions.alias_drift``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayorch.errors import InfrastructureError, RayorchError
from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import Attempt, AuditLog, Phase, PromotionRecord, who_am_i
from rayorch.registry.combining import Combiner
from rayorch.registry.decisions import (
    PromotionDecision,
    PromotionOutcome,
    PromotionRequest,
    decide_promotion,
    rollback_plan,
)
from rayorch.registry.errors import (
    CoordinatorMismatchError,
    NothingToRollBackError,
    PromotionInterruptedError,
)
from rayorch.registry.mlflow_view import RegistryView
from rayorch.settings import Settings, load_settings
from rayorch.spec import GatesSpec

NAMESPACE = "rayorch"
CRASH_POINTS = ("after_started", "after_alias")
CRASH_MODES = ("exit", "hang")  # die at once (restarted by Ray), or block until killed


Job = tuple[PromotionRequest, GatesSpec]
NOT_RUN = InfrastructureError("the promotion was not carried out")  # replaced for every job
#: under contention a batch waits this long for the callers of the batch before it to come back
#: (group commit, ``combining``): a batch through a tracking server takes ~30-60 ms here
BATCH_LINGER_S = 0.01
#: calls the actor takes at once: concurrent promotions of a model are batched (``combining``)
ACTOR_CONCURRENCY = 32


def actor_name(tracking_uri: str) -> str:
    return "rayorch-promotions-" + hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PromotionResult:
    decision: PromotionDecision
    model: str
    alias: str
    audit_id: int
    phase: Phase

    @property
    def outcome(self) -> PromotionOutcome:
        return self.decision.outcome

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.decision.to_dict(),
            "model": self.model,
            "alias": self.alias,
            "audit_id": self.audit_id,
            "phase": self.phase.value,
        }


class Coordinator:
    """The promotion steps; the Ray actor is this class with serialized calls."""

    def __init__(self, tracking_uri: str, db_url: str) -> None:
        self.registry = tracking_uri
        self.db_url = db_url
        self.view = RegistryView(tracking_uri)
        self.audit = AuditLog(db_url)
        self._combiner: Combiner[str, Job, PromotionResult] = Combiner(
            self._promote_batch, linger_s=BATCH_LINGER_S
        )
        self._crash_at: str | None = None  # test hook; deliberately lost on restart
        self._crash_mode = "exit"
        self.settled_on_start = [r.to_dict() for r in self.reconcile()]

    def current(self, model: str, alias: str) -> str | None:
        return self.view.current(model, alias)

    def recovered(self) -> list[dict[str, Any]]:
        """The attempts this incarnation settled when it started."""
        return self.settled_on_start

    def identity(self) -> dict[str, Any]:
        return {"registry": self.registry, "db_url": self.db_url, "pid": os.getpid()}

    # -- recovery ---------------------------------------------------------------------------
    def reconcile(self) -> list[PromotionRecord]:
        """Settle every STARTED attempt of this registry (run on start)."""
        settled = []
        for model in sorted({r.model for r in self.audit.started(self.registry)}):
            with self.audit.lock(self.registry, model):
                settled += self._settle_model(model)
        return settled

    def _settle_model(self, model: str) -> list[PromotionRecord]:
        # Under the model's lock: a STARTED row here has no live writer.
        return [self._settle(r) for r in self.audit.started(self.registry, model)]

    def _settle(self, rec: PromotionRecord, note: str = "settled on recovery") -> PromotionRecord:
        """Finish or roll back a STARTED attempt by what MLflow's alias actually says."""
        actual = self.view.current(rec.model, rec.alias)
        key = AliasKey(self.registry, rec.model, rec.alias)
        if actual == rec.to_version:
            self.audit.transition(rec.id, Phase.FINISHED, f"{note}: the alias was moved", key)
        else:
            why = f"{note}: the alias names {actual or 'none'}, not moved"
            self.audit.transition(rec.id, Phase.ROLLED_BACK, why, key)
        return self.audit.get(rec.id)

    # -- promotions -------------------------------------------------------------------------
    def promote(self, request: PromotionRequest, gates: GatesSpec) -> PromotionResult:
        """One promotion; concurrent calls for the same model run as one batch (see
        ``combining`` and ``_promote_batch``)."""
        return self._combiner.submit(request.model, (request, gates))

    def batches(self) -> dict[str, int]:
        """How many batches carried how many promotions in this incarnation (benchmarks)."""
        return {"batches": self._combiner.batches, "promotions": self._combiner.items}

    def rollback(
        self, model: str, alias: str, gates: GatesSpec, who: dict[str, Any]
    ) -> PromotionResult:
        """Promote the alias's previous version (per the audit log) through the same CAS."""
        with self._combiner.exclusive(model), self.audit.lock(self.registry, model):
            self._settle_model(model)
            expected, target = rollback_plan(self.audit.applied_steps(self.registry, model, alias))
            if target is None:
                raise NothingToRollBackError(
                    f"the audit log holds no earlier version of {model!r} alias {alias!r} to "
                    f"roll back to; promote one explicitly with `rayorch registry promote`",
                    model=model,
                    alias=alias,
                )
            req = PromotionRequest(model, target, alias, expected, kind="rollback", who=who)
            out = self._promote_alias(req.model, req.alias, [(req, gates)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _promote_batch(self, model: str, jobs: Sequence[Job]) -> list[PromotionResult | Exception]:
        """Carry out concurrent promotions of one model under its lock: per alias, one read of
        rayorch's row and of MLflow's alias, one write-ahead transaction, at most one move."""
        out: list[PromotionResult | Exception] = [NOT_RUN] * len(jobs)
        by_alias: dict[str, list[int]] = {}
        for i, (req, _) in enumerate(jobs):
            by_alias.setdefault(req.alias, []).append(i)
        with self.audit.lock(self.registry, model):
            for alias, idx in by_alias.items():
                results = self._promote_alias(model, alias, [jobs[i] for i in idx])
                for i, r in zip(idx, results, strict=True):
                    out[i] = r
        return out

    def _promote_alias(
        self, model: str, alias: str, jobs: Sequence[Job]
    ) -> list[PromotionResult | Exception]:
        """Decide every job against one read of the alias, in arrival order.

        Jobs whose decision moves nothing (CONFLICT, ALREADY_TARGET, REJECTED) are answered as
        of that read. Of those that would move the alias (APPLIED: they all expect the version
        read), the first moves it; the others are decided again against the alias it set
        (``followers``: CONFLICT, or ALREADY_TARGET when they wanted the same version), as if
        they had come right after it, which is the order their audit rows record. Should the
        move fail, they are decided afresh in another round. An error (the ledger or MLflow
        unreachable) is the answer of every job not answered yet.
        """
        out: list[PromotionResult | Exception] = [NOT_RUN] * len(jobs)
        try:
            self._promote_rounds(model, alias, jobs, out)
        except Exception as e:
            out = [e if r is NOT_RUN else r for r in out]
        return out

    def _promote_rounds(
        self, model: str, alias: str, jobs: Sequence[Job], out: list[PromotionResult | Exception]
    ) -> None:
        todo = list(range(len(jobs)))
        key = AliasKey(self.registry, model, alias)
        while todo:
            seen = self.audit.recorded(key)
            if seen is not None and seen.pending:  # a dead coordinator's claim: settle it first
                self._settle(self.audit.get(seen.audit_id))
                seen = self.audit.recorded(key)
            current = self.view.current(model, alias)
            recorded = seen.version if seen is not None else None
            attempts = [self._decide(jobs[i], current, recorded) for i in todo]
            movers = [k for k, a in enumerate(attempts) if a.applied]
            winner = movers[0] if movers else None
            # ids in the order of the linearization: those answered as of the read, the winner,
            # (after its move) the followers
            written = [k for k in range(len(todo)) if k not in movers] + movers[:1]
            # Write-ahead: the attempts and the winner's claim of the alias row are durable
            # before MLflow is touched. The same transaction returns attempts of this model a
            # dead coordinator left STARTED (other aliases, or from before alias rows);
            # settling them reads the alias and never moves it, so the decisions stay valid.
            batch = [attempts[k] for k in written]
            ids, orphans = self.audit.begin_batch(self.registry, batch, seen)
            for rec in orphans:
                self._settle(rec)
            for k, audit_id in zip(written, ids, strict=True):
                if k != winner:
                    out[todo[k]] = self._result(attempts[k], audit_id, Phase.FINISHED)
            if winner is None:
                return
            audit_id = ids[written.index(winner)]
            win = attempts[winner]
            rest = [todo[k] for k in movers[1:]]
            try:
                phase, followers = self._move(win, audit_id, key, [jobs[i] for i in rest])
            except PromotionInterruptedError as e:
                out[todo[winner]] = e
                todo = rest  # the alias did not move: decide them afresh
                continue
            out[todo[winner]] = self._result(win, audit_id, phase)
            for i, (a, fid) in zip(rest, followers, strict=True):
                out[i] = self._result(a, fid, Phase.FINISHED)
            return

    def _decide(self, job: Job, current: str | None, recorded: str | None) -> Attempt:
        req, gates = job
        facts = self.view.facts(req.model, req.version)
        decision = decide_promotion(req, current, facts, gates, recorded=recorded)
        return Attempt(req, decision, gates, facts.artifact_digest)

    def _move(
        self, win: Attempt, audit_id: int, key: AliasKey, rest: Sequence[Job]
    ) -> tuple[Phase, list[tuple[Attempt, int]]]:
        """Set the alias for the STARTED ``win`` and finish it, with the jobs decided after it
        written in the same transaction; PromotionInterruptedError if the alias did not move."""
        req = win.request
        self._maybe_crash("after_started")
        try:
            self.view.set_alias(req.model, req.alias, req.version)
        except Exception as e:
            rec = self._settle(self.audit.get(audit_id), f"MLflow failed: {e}")
            if rec.phase is not Phase.FINISHED:
                raise PromotionInterruptedError(
                    f"MLflow failed while moving {req.alias} of {req.model!r}: {e}; "
                    f"the alias did not move (audit {audit_id} ROLLED_BACK). Retry.",
                    audit_id=audit_id,
                ) from e
            followers = [self._decide(j, req.version, req.version) for j in rest]
            ids = self.audit.begin_batch(self.registry, followers)[0] if followers else []
            return rec.phase, list(zip(followers, ids, strict=True))
        self._maybe_crash("after_alias")
        # rayorch's row and MLflow's alias now both name the target: the followers' state
        followers = [self._decide(j, req.version, req.version) for j in rest]
        ids = self.audit.transition(
            audit_id, Phase.FINISHED, key=key, followers=followers, registry=self.registry
        )
        return Phase.FINISHED, list(zip(followers, ids, strict=True))

    def _result(self, a: Attempt, audit_id: int, phase: Phase) -> PromotionResult:
        return PromotionResult(a.decision, a.request.model, a.request.alias, audit_id, phase)

    # -- test hook: die at a named point (real process death, not an exception) --------------
    def arm_crash(self, point: str | None, mode: str = "exit") -> None:
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; one of {CRASH_POINTS}")
        if mode not in CRASH_MODES:
            raise ValueError(f"unknown crash mode {mode!r}; one of {CRASH_MODES}")
        self._crash_at = point
        self._crash_mode = mode

    def _maybe_crash(self, point: str) -> None:
        if self._crash_at != point:
            return
        if self._crash_mode == "exit":
            os._exit(17)
        while True:  # "hang": hold the promotion half-done until the test kills the process
            time.sleep(0.05)


# --- the actor and its client ----------------------------------------------------------------
_handles: dict[tuple[str, str], Any] = {}


def _actor_class() -> Any:
    import ray

    return ray.remote(Coordinator)


def get_coordinator(settings: Settings | None = None) -> Any:
    """The registry's coordinator actor, created on first use (needs ``ray.init`` done)."""
    import ray

    s = settings or load_settings()
    name = actor_name(s.mlflow_uri)
    key = (name, ray.get_runtime_context().gcs_address)
    handle = _handles.get(key)
    if handle is not None:
        return handle
    handle = _acquire(name, s)
    _handles[key] = handle
    return handle


def _acquire(name: str, s: Settings, attempts: int = 40) -> Any:
    """Get-if-exists the named actor and check it answers; a handle to an actor that died for
    good (``ray.kill`` without restart) is dropped and the name resolved again."""
    import ray
    from ray.exceptions import RayActorError

    for i in range(attempts):
        handle = _create_or_get(name, s)
        try:
            ident = _call(lambda h=handle: ray.get(h.identity.remote()), attempts=1)
        except (RayActorError, InfrastructureError):
            if i == attempts - 1:
                raise
            time.sleep(0.25)  # the dead actor's name is released shortly
            continue
        if ident["db_url"] != s.db_url:
            raise CoordinatorMismatchError(
                f"the promotion coordinator of {s.mlflow_uri} writes its audit log to "
                f"{ident['db_url']}, not {s.db_url}; set RAYORCH_DB_URL to the same database",
                registry=s.mlflow_uri,
                actor_db_url=ident["db_url"],
                db_url=s.db_url,
            )
        return handle
    raise AssertionError("unreachable")


def _create_or_get(name: str, s: Settings) -> Any:
    return (
        _actor_class()
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_concurrency=ACTOR_CONCURRENCY,
            num_cpus=0,
        )
        .remote(s.mlflow_uri, s.db_url)
    )


def _call(fn: Any, attempts: int = 20, backoff_s: float = 0.25) -> Any:
    """Run ``fn``; while the actor is restarting, wait and retry (answers are idempotent).

    A rayorch error raised in the actor is re-raised as itself, not wrapped by Ray.
    """
    from ray.exceptions import RayActorError, RayTaskError

    for i in range(attempts):
        try:
            return fn()
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, RayorchError):
                raise cause from None
            raise
        except RayActorError as e:
            if i == attempts - 1:
                raise InfrastructureError(
                    f"the promotion coordinator did not come back: {e}. Check the Ray cluster "
                    "(RAY_ADDRESS) and the actor's logs.",
                ) from e
            time.sleep(backoff_s)
    raise AssertionError("unreachable")


def _on_actor(settings: Settings | None, fn: Any, attempts: int = 20) -> Any:
    """``fn(handle)`` on the coordinator. While it restarts, wait and retry; if it died for
    good, drop the cached handle and get-if-exists again (a new one settles what the old one
    left STARTED before it answers). Retrying is safe: the answers are idempotent."""
    from ray.exceptions import RayActorError

    s = settings or load_settings()
    name = actor_name(s.mlflow_uri)
    for i in range(attempts):
        try:
            return _call(lambda: fn(get_coordinator(s)), attempts=1)
        except InfrastructureError as e:
            if not isinstance(e.__cause__, RayActorError) or i == attempts - 1:
                raise
            for key in [k for k in _handles if k[0] == name]:
                del _handles[key]
            time.sleep(0.25)
    raise AssertionError("unreachable")


def promote(
    model: str,
    version: str | int,
    alias: str,
    expected_current: str | int | None,
    *,
    gates: GatesSpec | None = None,
    settings: Settings | None = None,
    via: str = "api",
) -> PromotionResult:
    """Compare-and-set ``alias`` of ``model`` to ``version`` through the coordinator.

    ``expected_current`` is the version the caller believes the alias names now (None: unset).
    """
    import ray

    req = PromotionRequest(
        model=model,
        version=str(version),
        alias=alias,
        expected_current=None if expected_current is None else str(expected_current),
        who=dict(who_am_i(via)),
    )
    g = gates or GatesSpec()
    return _on_actor(settings, lambda h: ray.get(h.promote.remote(req, g)))


def rollback(
    model: str,
    alias: str,
    *,
    gates: GatesSpec | None = None,
    settings: Settings | None = None,
    via: str = "api",
) -> PromotionResult:
    import ray

    who, g = dict(who_am_i(via)), gates or GatesSpec()
    return _on_actor(settings, lambda h: ray.get(h.rollback.remote(model, alias, g, who)))


def current_version(model: str, alias: str, settings: Settings | None = None) -> str | None:
    """The version ``alias`` names now, as the coordinator reads it from MLflow."""
    import ray

    return _on_actor(settings, lambda h: ray.get(h.current.remote(model, alias)))


def shutdown_coordinator(settings: Settings | None = None) -> bool:
    """Kill the registry's detached coordinator for good (tests, teardown). True if one ran."""
    import ray

    s = settings or load_settings()
    name = actor_name(s.mlflow_uri)
    for key in [k for k in _handles if k[0] == name]:
        del _handles[key]
    try:
        handle = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(handle, no_restart=True)
    return True
