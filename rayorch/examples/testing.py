"""A feature function with injectable misbehaviour, for fault-injection tests and drills.

Driven by ``features.params`` in the pipeline config: ``sleep_s`` (per unit),
``fail_partitions`` (partitions that raise), ``fail_times`` (how many attempts fail before it
succeeds; default always), ``duplicate_output`` (emit some rows twice).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from rayorch.examples.fraud import build_features


def flaky_features(ctx: Any, raw: pa.Table) -> pa.Table:
    params = ctx.params
    if params.get("sleep_s"):
        time.sleep(float(params["sleep_s"]))
    part = "/".join(f"{k}={v}" for k, v in sorted(ctx.partition.items()))
    # tokens grow by one per attempt: fail the first `fail_times` attempts
    if part in params.get("fail_partitions", []) and ctx.token <= int(
        params.get("fail_times", 10**9)
    ):
        raise RuntimeError(f"injected failure for {part} (token {ctx.token})")
    out = build_features(ctx, raw)
    if params.get("duplicate_output"):
        out = pa.concat_tables([out, out.slice(0, 3)])
    return out
