"""When the driver publishes committed units to their table: a pure decision.

Every loop turn the driver commits its finished units in the ledger (one fenced transaction;
the ledger stays the authority on who may write a partition). Publishing them - the Iceberg
table commit that makes the partitions live - is grouped: each pyiceberg commit copies the
whole table metadata, which grows by one snapshot per commit, so one commit per turn makes a
backfill cost O(turns^2) (docs/tables.md, "Where the time goes"). Committed units wait in the
driver and are published together when the first of these holds:

* ``ENDING``: the driver is ending (every unit terminal, or a cancel/SIGTERM stop) - nothing
  committed is left for resume to roll forward on a clean exit;
* ``DEPENDENT``: a unit that reads them (training pins its window to the table's current
  snapshot) is otherwise ready to start - a dependent never starts before its inputs are live;
* ``UNBATCHED``: a waiting unit's publish is not a table commit (a training unit registers its
  model version and ends its MLflow run): not worth delaying;
* ``FULL``: ``batch`` units wait;
* ``LINGERED``: the oldest has waited ``linger_s`` seconds.

A driver that lost its lease or was taken over publishes nothing (the core drops what waits):
the new owner's resume rolls those commits forward from the ledger. Waiting widens the window
in which the ledger is ahead of the table, but that state is exactly the one every resume
already reconciles (`BackfillDriver._reconcile`), so a crash anywhere in it loses nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_PUBLISH_BATCH = 1024
DEFAULT_PUBLISH_LINGER_S = 5.0


class Flush(str, enum.Enum):
    """Why waiting committed units are published now (ordered: the first that holds wins)."""

    ENDING = "the driver is ending"
    DEPENDENT = "a unit that reads them is ready to start"
    UNBATCHED = "a waiting publish is not a table commit (model version)"
    FULL = "publish_batch units are waiting"
    LINGERED = "the oldest has waited publish_linger_s"


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    """``batch=1, linger_s=0``: publish every turn (the behaviour before grouping)."""

    batch: int = DEFAULT_PUBLISH_BATCH
    linger_s: float = DEFAULT_PUBLISH_LINGER_S

    def due(self, oldest: float | None) -> float | None:
        """When waiting units must be published at the latest (None: nothing waits)."""
        return None if oldest is None else oldest + self.linger_s


@dataclass(frozen=True, slots=True)
class Waiting:
    """What waits to be published, as the core sees it."""

    count: int  # committed units of this driver not yet published
    oldest: float | None  # when the oldest of them was committed
    unbatched: bool = False  # one of them publishes something other than a table commit
    dependent_ready: bool = False  # a unit reading one of them (or a verify) could start
    ending: bool = False


def decide_flush(w: Waiting, now: float, policy: PublishPolicy) -> Flush | None:
    """Publish now (and why), or keep waiting (None)."""
    if w.count == 0 and not w.dependent_ready:
        return None
    if w.ending:
        return Flush.ENDING
    if w.dependent_ready:
        return Flush.DEPENDENT
    if w.unbatched:
        return Flush.UNBATCHED
    if w.count >= max(1, policy.batch):
        return Flush.FULL
    due = policy.due(w.oldest)
    if due is not None and now >= due:
        return Flush.LINGERED
    return None
