"""The driver's hold on its backfill: heartbeats and cancel checks from the driver loop.

Beats run from the loop (not a thread), so tests drive them with an injected clock. A failed
beat is logged with its error; once no beat has succeeded for a whole lease, the lease is lost
and the driver stops claiming and committing. Another driver's takeover (a higher owner
epoch) is noticed on the next beat.
"""

from __future__ import annotations

import logging

from rayorch.backfill.machine import Stop, StopReason
from rayorch.errors import OwnershipLostError
from rayorch.ledger.rows import Ownership
from rayorch.ledger.store import Ledger
from rayorch.results import ErrorInfo

log = logging.getLogger(__name__)


class DriverLease:
    """Heartbeats from the driver loop (deterministic with an injected clock). A failed beat
    is logged with its error; past the lease without one, the lease is lost."""

    def __init__(
        self, ledger: Ledger, own: Ownership, lease_s: float, now: float, cancel_poll_s: float
    ) -> None:
        self.ledger, self.own, self.lease_s = ledger, own, lease_s
        self.cancel_poll_s = cancel_poll_s
        self.last_ok = now
        self.next_at = now + lease_s / 3
        self.next_cancel_check = now + cancel_poll_s
        self.cancelled = False
        self.lost: Stop | None = None

    def maybe_beat(self, now: float) -> None:
        if self.lost is not None:
            return
        if now >= self.next_cancel_check and now < self.next_at:
            # `rayorch backfill cancel` takes effect within seconds, not a third of a lease.
            self.next_cancel_check = now + self.cancel_poll_s
            try:
                self.cancelled = self.ledger.cancel_requested(self.own) or self.cancelled
            except Exception as e:  # the heartbeat below reports database trouble
                log.debug("cancel check failed: %s", e)
        if now < self.next_at:
            return
        self.next_at = now + min(self.lease_s / 3, 5.0)
        try:
            self.cancelled = self.ledger.heartbeat(self.own) or self.cancelled
            self.last_ok = now
            self.next_at = now + self.lease_s / 3
        except OwnershipLostError as e:
            self.lost = Stop(StopReason.OWNERSHIP_LOST, e.message)
        except Exception as e:
            info = ErrorInfo.of(e)
            log.warning(
                "backfill %s: heartbeat failed (%s); %.0fs of the %.0fs lease left",
                self.own.backfill_id,
                info.describe(),
                self.lease_s - (now - self.last_ok),
                self.lease_s,
            )
            if now - self.last_ok > self.lease_s:
                self.lost = Stop(
                    StopReason.LEASE_LOST,
                    f"no heartbeat succeeded for {now - self.last_ok:.0f}s (lease "
                    f"{self.lease_s:.0f}s); last error: {info.describe()}",
                )
