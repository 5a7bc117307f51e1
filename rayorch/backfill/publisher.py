"""The driver's table side: publishing committed units, and rolling them forward.

Ledger commit, THEN table commit (the ledger decides who may write; see
:mod:`rayorch.backfill.driver` for the whole order). A :class:`Publisher` carries out the
core's ``Publish`` actions: one executor ``publish_many`` for every unit of the action (one
Iceberg commit for the feature partitions, skipping any token older than the live one), then
ONE ledger transaction recording what it produced (snapshot id, model version). By default it
runs on a background thread, one publish at a time (the core keeps at most one in flight), so
staging, claims and ledger commits go on while pyiceberg writes metadata; its ``Published``
event enters the loop through :meth:`Publisher.events`, and the driver neither ends nor
publishes on the way out before the one in flight is done (:meth:`Publisher.join`).

On resume, :meth:`Publisher.reconcile` compares every DONE unit with its table: a commit the
table lacks (the driver died between the two commits, or before its grouped publish) is
rolled forward from the ledger; one whose files are gone is invalidated and re-run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

from rayorch.backfill.executor import Reconciled, UnitExecutor
from rayorch.backfill.machine import Event, Publish, Published
from rayorch.backfill.plan import Unit
from rayorch.backfill.publishing import Flush
from rayorch.ledger.rows import Ownership
from rayorch.ledger.store import Ledger
from rayorch.results import ErrorInfo

if TYPE_CHECKING:
    from rayorch.backfill.core import BackfillCore

log = logging.getLogger(__name__)

#: How often the loop looks for a background publish's end while work results come in.
PUBLISH_POLL_S = 0.05

Progress = Callable[[str, Unit | None, dict[str, Any]], None]


class Publisher:
    def __init__(
        self,
        ledger: Ledger,
        executor: UnitExecutor,
        outputs: dict[str, dict[str, Any]],
        progress: Progress,
        crash: Callable[[str], None],
        *,
        background: bool = True,
    ) -> None:
        self.ledger, self.executor = ledger, executor
        self.outputs = outputs  # the driver's: what each unit produced, amended here
        self.progress, self.crash = progress, crash
        self.background = background
        self.done_at_start: set[str] = set()  # DONE when this run began, reconciled then
        self.invalidated: list[str] = []
        self._pool: futures.ThreadPoolExecutor | None = None
        self._in_flight: tuple[futures.Future[list[Event]], Publish] | None = None

    @property
    def busy(self) -> bool:
        """A background publish is in flight."""
        return self._in_flight is not None

    def wait(self, timeout: float) -> None:
        """Block until the publish in flight is done, at most ``timeout`` seconds."""
        if self._in_flight is not None:
            futures.wait([self._in_flight[0]], timeout=timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def start(self, own: Ownership, a: Publish) -> list[Event]:
        """Publish ``a``: on the background thread (its event comes from :meth:`events`), or
        at once."""
        if not self.background:
            return self.publish(own, a)
        assert self._in_flight is None, "the core keeps one publish in flight"
        if self._pool is None:
            self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="rayorch-publish")
        self._in_flight = (self._pool.submit(self.publish, own, a), a)
        return []

    def events(self) -> list[Event]:
        """The Published event of the background publish once it is done (its error, if it
        failed, raised here: the loop's error handling is the same as for a foreground one)."""
        if self._in_flight is None or not self._in_flight[0].done():
            return []
        fut, _ = self._in_flight
        self._in_flight = None
        return fut.result()

    def join(self) -> frozenset[str]:
        """Wait for a background publish on the way out; the run keys it published (none if
        it failed: its error is logged, the one ending the loop is what is raised)."""
        if self._in_flight is None:
            return frozenset()
        fut, a = self._in_flight
        self._in_flight = None
        try:
            fut.result()
        except BaseException as e:
            log.warning("a background publish failed: %s", ErrorInfo.of(e).describe())
            return frozenset()
        return frozenset(u.run_key for u, _, _ in a.items)

    def publish(self, own: Ownership, a: Publish) -> list[Event]:
        """Ledger commit, THEN table commit: the units of ``a`` are committed (fenced) in the
        ledger; one publish for all of them (one Iceberg commit for every feature partition,
        skipping any token older than the live one), then ONE ledger transaction records
        what it produced per unit (snapshot id, model version)."""
        items = list(a.items)
        amends: list[tuple[str, int, dict[str, Any]]] = []
        known: dict[str, dict[str, Any]] = {}  # amended outputs of this driver's own commits
        extras = self.executor.publish_many(items) if items else []
        for (unit, token, _), extra in zip(items, extras, strict=True):
            if extra:
                amends.append((unit.run_key, token, extra))
                base = self.outputs.get(unit.run_key)
                self.outputs[unit.run_key] = merged = {**(base or {}), **extra}
                if base is not None:
                    known[unit.run_key] = merged
        missing = self._verify(own, a.verify, amends)
        if amends:
            self.ledger.amend_outputs(own, amends, known)
        self.crash("after_publish")
        keys = (*(u.run_key for u, _, _ in items), *(u.run_key for u in a.verify))
        self.progress(
            "published",
            None,
            {"units": len(items), "verified": len(a.verify), "why": a.reason.name},
        )
        return [Published(keys, tuple(missing))]

    def _verify(
        self, own: Ownership, units: tuple[Unit, ...], amends: list[tuple[str, int, dict[str, Any]]]
    ) -> list[str]:
        """Units found ALREADY_DONE during this run that a ready dependent reads: another
        driver committed them and may not have published yet (it groups its publishes too).
        The ledger has their committed output: roll it forward if the table lacks it (token
        checked, idempotent), so the dependent's snapshot has them. Returns those gone."""
        todo = [u for u in units if u.run_key not in self.done_at_start]
        if not todo:
            return []
        rows = self.ledger.get_units(u.run_key for u in todo)
        done = [
            (u, rows[u.run_key].committed_token or 0, rows[u.run_key].output)
            for u in todo
            if u.run_key in rows and rows[u.run_key].committed_token
        ]
        missing = []
        for (u, token, _), got in zip(done, self.executor.reconcile_many(done), strict=True):
            if got.outcome is Reconciled.Outcome.ROLLED_FORWARD and got.extra:
                amends.append((u.run_key, token, got.extra))
            elif got.outcome is Reconciled.Outcome.MISSING:
                self._invalidate(own, u, got.why)
                self.invalidated.append(u.run_key)
                missing.append(u.run_key)
        return missing

    def publish_waiting(
        self, own: Ownership, core: BackfillCore, done: frozenset[str] = frozenset()
    ) -> None:
        """A failing driver that still owns its backfill publishes what it committed and did
        not publish yet (``done``: what its last background publish did; best effort: what it
        cannot publish, resume rolls forward)."""
        items = [it for it in core.waiting_publish() if it[0].run_key not in done]
        if not items:
            return
        try:
            self.publish(own, Publish(tuple(items), (), Flush.ENDING))  # type: ignore[arg-type]
        except Exception as e:
            log.warning(
                "could not publish %d committed unit(s) on the way out (resume rolls them "
                "forward): %s",
                len(items),
                ErrorInfo.of(e).describe(),
            )

    def reconcile(
        self, own: Ownership, units: Sequence[Unit], rows: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Roll forward publishes a crash interrupted; re-run committed units whose output is
        gone (a resume never wedges on them)."""
        reconciled, invalidated = [], []
        done = []
        for u in units:
            row = rows.get(u.run_key)
            if row is not None and row.state.value == "DONE":
                done.append((u, row.committed_token or 0, row.output))
        amends = []
        for (u, token, _), got in zip(done, self.executor.reconcile_many(done), strict=True):
            if got.outcome is Reconciled.Outcome.ROLLED_FORWARD:
                reconciled.append(u.run_key)
                if got.extra:
                    amends.append((u.run_key, token, got.extra))
            elif got.outcome is Reconciled.Outcome.MISSING:
                self._invalidate(own, u, got.why)
                invalidated.append(u.run_key)
        if amends:
            self.ledger.amend_outputs(own, amends)  # one transaction for every roll-forward
        self.done_at_start = {
            k for k, r in rows.items() if r.state.value == "DONE" and k not in invalidated
        }
        self.invalidated = list(invalidated)
        return reconciled, invalidated

    def _invalidate(self, own: Ownership, unit: Unit, why: str) -> None:
        """A committed unit whose output is gone: re-run it (a resume never wedges on it)."""
        self.ledger.invalidate(own, unit.run_key, f"committed output missing: {why}")
        self.progress("invalidated", unit, {"detail": why})
