"""Feature functions with injectable misbehaviour, for fault-injection tests and drills.

Controlled by environment variables so that a pipeline config can point at them unchanged:
``RAYORCH_TEST_FEATURE_SLEEP`` (seconds per unit), ``RAYORCH_TEST_FAIL_PARTITIONS``
(comma list of partitions that raise), ``RAYORCH_TEST_DUPLICATE_OUTPUT`` (emit every row twice).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa

from rayorch.examples.fraud import build_features


def flaky_features(ctx: Any, raw: pa.Table) -> pa.Table:
    delay = float(os.environ.get("RAYORCH_TEST_FEATURE_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)
    part = "/".join(f"{k}={v}" for k, v in sorted(ctx.partition.items()))
    failing = [p for p in os.environ.get("RAYORCH_TEST_FAIL_PARTITIONS", "").split(",") if p]
    if part in failing:
        raise RuntimeError(f"injected failure for {part}")
    out = build_features(ctx, raw)
    if os.environ.get("RAYORCH_TEST_DUPLICATE_OUTPUT"):
        out = pa.concat_tables([out, out.slice(0, 3)])
    return out
