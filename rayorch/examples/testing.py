"""A feature function with injectable misbehaviour, for fault-injection tests and drills.

Driven by ``features.params`` in the pipeline config: ``sleep_s`` (per unit),
``fail_partitions`` (partitions that raise), ``fail_times`` (how many attempts fail before it
succeeds; default always), ``duplicate_output`` (emit some rows twice), ``print_line`` (print
it to stdout, as chatty user code does).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from rayorch.examples.fraud import build_features


def flaky_features(ctx: Any, raw: pa.Table) -> pa.Table:
    params = ctx.params
    if params.get("print_line"):  # user code that prints (to check --json stays clean)
        print(params["print_line"], flush=True)
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


def ft_train_loop(config: dict[str, Any]) -> None:
    """The fraud MLP with injectable training faults, driven by ``train.params``:

    ``sleep_per_step_s`` (every worker, every step: makes a run slow enough to interrupt),
    ``straggler_rank`` + ``straggler_sleep_s`` (one slow worker), ``kill_rank`` +
    ``kill_at_step`` (that worker SIGKILLs itself once at that global step, once rank 0 has
    recorded the newest checkpoint; ``kill_marker`` is a file that records that it happened,
    so the restarted group does not die again).
    """
    import os
    import signal
    from pathlib import Path

    from rayorch.train.loops import binary_auc, torch_model_loop
    from rayorch.train.session import TrainSession

    session = TrainSession(config)
    p = session.params

    def before_step(s: TrainSession) -> None:
        if p.get("sleep_per_step_s"):
            time.sleep(float(p["sleep_per_step_s"]))
        if p.get("straggler_rank") == s.rank and p.get("straggler_sleep_s"):
            time.sleep(float(p["straggler_sleep_s"]))
        if p.get("kill_rank") == s.rank and s.global_step + 1 == int(p.get("kill_at_step", -1)):
            marker = Path(str(p["kill_marker"]))
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                _await_checkpoint_pointer(s)
                os.kill(os.getpid(), signal.SIGKILL)

    torch_model_loop(session, task="binary", metric_fn=binary_auc, before_step=before_step)


def _await_checkpoint_pointer(s: Any, timeout_s: float = 30.0) -> None:
    """Before an injected kill: wait (bounded) until rank 0 has recorded the newest checkpoint
    both workers took, so the kill tests the resume from it, not rank 0's race to record it
    against Ray Train stopping the group."""
    deadline = time.time() + timeout_s
    while s.last_checkpoint_step > 0 and s.files is not None and time.time() < deadline:
        last = ((s.files.read_progress() or {}).get("last_checkpoint")) or {}
        if int(last.get("step", -1)) >= s.last_checkpoint_step:
            return
        time.sleep(0.02)
