"""Named crash points for crash-recovery tests (like Dagster's backfill recovery tests).

Set ``RAYORCH_CRASH_AT=<point>`` (or ``<point>:<n>`` for the n-th time it is reached) and the
process SIGKILLs itself there: no cleanup, no finally blocks, exactly like a lost node.
Points: after_claim, after_stage, after_commit, after_publish.
"""

from __future__ import annotations

import os
import signal

from rayorch.settings import crash_at

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = crash_at()
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
