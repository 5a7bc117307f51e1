"""What a training loop sees inside a Ray Train worker.

``TrainSession`` resumes from the newest registered checkpoint (epoch *and* step within the
epoch), hands out the validated dataset shards, and at each step boundary decides - the same
way on every worker - whether to checkpoint (every N steps / T seconds / N epochs), whether to
stop because the unit was asked to yield, and which worker is a straggler.

Crash ordering: a checkpoint is complete on disk before it is reported (Ray Train registers it
only after the upload), and metrics are logged to MLflow only after the checkpoint that covers
them is registered. A restarted attempt resumes after that checkpoint, so it neither re-runs nor
re-logs a step that is already in MLflow; metrics buffered between the last checkpoint and a
crash are recomputed by the steps that re-run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray.train
import torch
from torch import nn

from rayorch.spec import CheckpointSpec, StragglerAction, StragglerSpec
from rayorch.train.control import RunFiles
from rayorch.train.policy import (
    CheckpointClock,
    CheckpointReason,
    StragglerDetector,
    StragglerFlag,
    checkpoint_due,
)

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
_YIELD_POLL_S = 0.2
log = logging.getLogger("rayorch.train")


class TrainingStopped(Exception):
    """Raised at a step boundary after the yield/restart checkpoint; the loop wrapper returns."""

    def __init__(self, reason: CheckpointReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class TrainSession:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.ro: dict[str, Any] = config["rayorch"]
        self.params: dict[str, Any] = dict(self.ro.get("params") or {})
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        from rayorch.env.worker import on_train_worker

        on_train_worker(self.ro, self.rank)  # fingerprint this worker; a drifted one fails here
        self.ckpt_spec = CheckpointSpec.model_validate(self.ro.get("checkpoint") or {})
        self.straggler_spec = StragglerSpec.model_validate(self.ro.get("stragglers") or {})
        self.files = (
            RunFiles(self.ro["storage"], self.ro["run_name"]) if "run_name" in self.ro else None
        )
        self.state: dict[str, Any] | None = None
        self._client: Any = None
        self.start_epoch = 0
        self.global_step = 0
        self.epoch = 0
        self._skip = 0  # batches of the resumed epoch already trained before the checkpoint
        self._batch_in_epoch = 0
        self._pending: list[tuple[int, dict[str, float]]] = []  # (step, metrics) not yet logged
        self._comm_s = 0.0
        self._mark = time.perf_counter()
        self._last_yield_poll = 0.0
        self._epoch_metrics: dict[str, float] = {}
        self.state = self._restore()
        if self.state is not None:
            st = self.state
            self.global_step = int(st.get("global_step", 0))
            if st.get("epoch_complete", True):
                self.start_epoch = int(st["epoch"]) + 1
            else:
                self.start_epoch, self._skip = int(st["epoch"]), int(st.get("batch_in_epoch", 0))
        self._resumed_from = self.global_step
        self._clock = CheckpointClock(self.global_step, time.time())
        self.nodes = self._gather_nodes()
        self.detector = StragglerDetector(self.straggler_spec, self.nodes)
        self.progress: dict[str, Any] = {}
        if self.rank == 0:
            self._on_start()

    # -- public API for training loops ------------------------------------------------------
    @property
    def last_checkpoint_step(self) -> int:
        """The global step of this worker's newest checkpoint (the resume point before one)."""
        return self._clock.step

    @property
    def epochs(self) -> int:
        return int(self.ro["epochs"])

    def shard(self, name: str) -> Any:
        return ray.train.get_dataset_shard(name)

    def epoch_range(self) -> Iterator[int]:
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch
            self._batch_in_epoch = 0
            yield epoch

    def batches(self, iterable: Any) -> Iterator[Any]:
        """Training batches of the current epoch; on resume, skips those already trained."""
        for batch in iterable:
            if self._skip:
                self._skip -= 1
                self._batch_in_epoch += 1
                continue
            yield batch

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``ray.train.torch.prepare_model`` plus a DDP comm hook that times collective waits,
        so straggler detection sees each worker's own work, not time spent waiting for others."""
        # Ray-assigned GPUs without CUDA in torch (fake-GPU test clusters): stay on the CPU.
        model = ray.train.torch.prepare_model(model, move_to_device=torch.cuda.is_available())
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model.register_comm_hook(self, _timed_allreduce)
        return model

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        **metrics: float,
    ) -> None:
        """Call after each optimizer step: checkpoints, yields and straggler checks happen here."""
        self.global_step += 1
        self._batch_in_epoch += 1
        busy = max(0.0, time.perf_counter() - self._mark - self._comm_s)
        due = checkpoint_due(
            self.ckpt_spec, step=self.global_step, now=time.time(), last=self._clock
        )
        want_yield = self.rank == 0 and self._poll_yield()
        rows = self._all_gather([busy, float(due is not None), float(want_yield)])
        restart = self._stragglers([r[0] for r in rows])
        if metrics and self.global_step % int(self.ro.get("log_every_steps", 10)) == 0:
            self._pending.append((self.global_step, {k: float(v) for k, v in metrics.items()}))
        reason: CheckpointReason | None = None
        if rows[0][2]:
            reason = CheckpointReason.YIELD
        elif restart:
            reason = CheckpointReason.STRAGGLER
        elif rows[0][1]:  # rank 0 decides for all, so every worker reports the same times
            reason = due or CheckpointReason.STEPS
        if reason is not None:
            self._checkpoint(model, optimizer, reason, epoch_complete=False, metrics={})
        if reason in (CheckpointReason.YIELD, CheckpointReason.STRAGGLER):
            raise TrainingStopped(reason)
        self._comm_s = 0.0
        self._mark = time.perf_counter()

    def report(
        self,
        epoch: int,
        metrics: dict[str, float],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """End of an epoch: report metrics, checkpoint when due, then log what is now durable."""
        metrics = {k: float(v) for k, v in metrics.items()}
        self._pending.append((-(epoch + 1), metrics))  # negative: an epoch entry, step=epoch
        final = epoch == self.epochs - 1
        reason = checkpoint_due(
            self.ckpt_spec,
            step=self.global_step,
            now=time.time(),
            last=self._clock,
            epoch_end=epoch,
            final=final,
        )
        if reason is not None:
            self._checkpoint(model, optimizer, reason, epoch_complete=True, metrics=metrics)
        else:
            ray.train.report({**metrics, "epoch": epoch, "global_step": self.global_step})
        self._mark = time.perf_counter()
        self._comm_s = 0.0

    # -- internals --------------------------------------------------------------------------
    def _checkpoint(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        reason: CheckpointReason,
        *,
        epoch_complete: bool,
        metrics: dict[str, float],
    ) -> None:
        full = {
            **metrics,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "checkpoint_reason": reason.value,
        }
        # The same on every worker; unique per (step, reason, attempt's resume point).
        name = f"rayorch_s{self.global_step:09d}_{reason.value}_r{self._resumed_from}"
        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                bare = model.module if hasattr(model, "module") else model
                state = {
                    "epoch": self.epoch,
                    "epoch_complete": epoch_complete,
                    "batch_in_epoch": self._batch_in_epoch,
                    "global_step": self.global_step,
                    "metrics": metrics,
                    "unlogged": list(self._pending),
                    "model_state": bare.state_dict(),
                    "optimizer_state": optimizer.state_dict() if optimizer else None,
                }
                torch.save(state, os.path.join(tmp, STATE_FILE))
                torch.save(bare, os.path.join(tmp, MODEL_FILE))
                ray.train.report(
                    full,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=name,
                )
        else:
            ray.train.report(full, checkpoint_dir_name=name)
        self._clock = CheckpointClock(self.global_step, time.time())
        if self.rank == 0:
            # The pointer first, the moment report returned (the upload is complete): another
            # worker's death makes Ray Train stop this one at any instant, and a checkpoint
            # neither registered nor pointed to is lost. The metrics it covers are logged next
            # (exactly once); killed in between, they are in the checkpoint's "unlogged" and
            # the resumed attempt logs them.
            self._update_progress(
                last_checkpoint={
                    "step": self.global_step,
                    "epoch": self.epoch,
                    "epoch_complete": epoch_complete,
                    "reason": reason.value,
                    "at": time.time(),
                    # Write the pointer only now: report returned, the upload is complete.
                    "path": f"{self.ro['storage'].rstrip('/')}/{self.ro['run_name']}/{name}",
                },
                status={
                    CheckpointReason.YIELD: "yielded",
                    CheckpointReason.STRAGGLER: "restart_without_stragglers",
                }.get(reason, "running"),
            )
            self._flush(self._pending)
            self._pending = []

    def _restore(self) -> dict[str, Any] | None:
        """The newest complete checkpoint: Ray Train's registered one, or the one rayorch's
        pointer names. Ray Train registers a reported checkpoint only when its controller
        polls the worker, so one reported just before a crash can be complete on storage but
        unknown to Ray; rayorch writes its pointer after ``report`` returned (upload done)."""
        states: list[dict[str, Any]] = []
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            states.append(_load_state(ckpt))
        # Read once here; _on_start (rank 0) continues from the same record.
        self._prev_progress = prev = (self.files.read_progress() if self.files else None) or {}
        path = (prev.get("last_checkpoint") or {}).get("path")
        registered_step = int(states[0].get("global_step", -1)) if states else -1
        if path and int(prev["last_checkpoint"].get("step", -1)) > registered_step:
            try:
                states.append(_load_state(ray.train.Checkpoint(path)))
            except (OSError, FileNotFoundError, RuntimeError) as exc:
                log.warning(
                    "rayorch: checkpoint %s named by the pointer is unreadable: %s", path, exc
                )
        if not states:
            return None
        return max(states, key=lambda st: int(st.get("global_step", 0)))

    def _on_start(self) -> None:
        prev = self._prev_progress
        starts = int(prev.get("starts", 0)) + 1
        self.progress = {
            **prev,
            "run_key": self.ro.get("run_key"),
            "starts": starts,
            "restarts": starts - 1,
            "status": "running",
            "world_size": self.world_size,
            "nodes": self.nodes,
            "resumed_from_step": self.global_step if self.state is not None else None,
            "epoch": self.start_epoch,
            "step": self.global_step,
            "epochs": self.epochs,
        }
        self.progress.setdefault("stragglers", [])
        self.progress.setdefault("history", [])
        self.progress["history"] = [
            *self.progress["history"][-50:],
            {"start": starts, "from_step": self.global_step, "at": time.time()},
        ]
        if self.files is not None:
            self.files.write_progress(self.progress)
        if self.state is not None:
            # Recover metrics a crash caught between checkpoint registration and logging.
            self._flush(self.state.get("unlogged") or [], check_history=True)
        self._log_metrics(starts - 1, {"restart_from_step": float(self.global_step)})

    def _update_progress(self, **changes: Any) -> None:
        self.progress.update(changes, epoch=self.epoch, step=self.global_step)
        if self.files is not None:
            self.files.write_progress(self.progress)

    def _poll_yield(self) -> bool:
        if self.files is None:
            return False
        now = time.monotonic()
        if now - self._last_yield_poll < _YIELD_POLL_S:
            return False
        self._last_yield_poll = now
        return self.files.yield_requested() is not None

    def _stragglers(self, busy: list[float]) -> bool:
        flags = self.detector.observe(
            self.global_step, busy, since_start=self.global_step - self._resumed_from
        )
        if flags and self.rank == 0:
            self._report_stragglers(flags)
        # Same inputs on every worker (all-gathered), so every worker decides the same.
        spec = self.straggler_spec
        return bool(
            flags
            and spec.action is StragglerAction.RESTART
            and int(self.ro.get("straggler_restarts", 0)) < spec.max_restarts
        )

    def _report_stragglers(self, flags: list[StragglerFlag]) -> None:
        for f in flags:
            log.warning("rayorch: %s (%s)", f.describe(), self.ro.get("run_key"))
            print(f"rayorch: {f.describe()}", flush=True)
        entries = [
            {"rank": f.rank, "node": f.node, "ratio": round(f.ratio, 2), "step": f.step}
            for f in flags
        ]
        self.progress["stragglers"] = [*self.progress.get("stragglers", []), *entries]
        if self.straggler_spec.action is StragglerAction.RESTART:
            self.progress["excluded_nodes"] = sorted(
                {*self.progress.get("excluded_nodes", []), *(f.node for f in flags)}
            )
        self._update_progress()
        run_id = self.ro.get("mlflow_run_id")
        if run_id:
            client = self._mlflow()
            names = ", ".join(f"rank {f.rank} on {f.node}" for f in flags)
            client.set_tag(run_id, "rayorch.straggler", names)
            for f in flags:
                client.log_metric(run_id, f"straggler_ratio_rank{f.rank}", f.ratio, step=f.step)

    def _gather_nodes(self) -> list[str]:
        me = ray.get_runtime_context().get_node_id()
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return [me]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, me)
        return [str(x) for x in out]

    def _all_gather(self, values: list[float]) -> list[list[float]]:
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return [values]
        t = torch.tensor(values, dtype=torch.float64)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t)
        return [o.tolist() for o in out]

    def _mlflow(self) -> Any:
        if self._client is None:
            from rayorch.lineage.tracking import mlflow_client

            self._client = mlflow_client(self.ro["mlflow_uri"])
        return self._client

    def _flush(
        self, entries: list[tuple[int, dict[str, float]]], check_history: bool = False
    ) -> None:
        for step, metrics in entries:
            if step < 0:
                self._log_metrics(-step - 1, metrics, check_history)
            else:
                self._log_metrics(step, metrics, check_history, prefix="step_")

    def _log_metrics(
        self, step: int, metrics: dict[str, float], check_history: bool = False, prefix: str = ""
    ) -> None:
        run_id = self.ro.get("mlflow_run_id")
        if not run_id or not metrics:
            return
        from mlflow.entities import Metric

        named = {
            f"{prefix}{k}" if prefix and not k.startswith(prefix) else k: v
            for k, v in metrics.items()
        }
        client = self._mlflow()
        if check_history:
            history = client.get_metric_history(run_id, next(iter(sorted(named))))
            if any(m.step == step for m in history):
                return
        now = int(time.time() * 1000)
        client.log_batch(
            run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(named.items())]
        )


def _load_state(ckpt: Any) -> dict[str, Any]:
    with ckpt.as_directory() as d:
        return dict(torch.load(os.path.join(d, STATE_FILE), weights_only=False))


def _timed_allreduce(session, bucket):  # type: ignore[no-untyped-def]
    # No annotations: DDP rejects a hook whose annotations are not the real GradBucket/Future
    # types, and postponed annotations (strings) never are.
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    t0 = time.perf_counter()

    def done(fut: Any) -> Any:
        session._comm_s += time.perf_counter() - t0
        return fut.value()

    return allreduce_hook(None, bucket).then(done)


def run_user_loop(config: dict[str, Any]) -> None:
    """The per-worker function handed to Ray Train: runs the user's loop; a yield or a
    straggler restart ends it cleanly after its checkpoint."""
    from rayorch.userfn import load_entrypoint

    fn: Callable[[dict[str, Any]], None] = load_entrypoint(config["rayorch"]["entrypoint"])
    try:
        fn(config)
    except TrainingStopped:
        return
