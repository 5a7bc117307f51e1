"""What a training loop sees inside a Ray Train worker.

``TrainSession`` resumes from the newest registered checkpoint, hands out the validated dataset
shards, and ``report`` writes a complete checkpoint before it is published (Ray Train registers
it only after the directory is uploaded) and only then logs the epoch's metrics to the unit's
MLflow run, so a resumed run neither re-runs nor re-logs an epoch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import ray.train
import torch
from torch import nn

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


class TrainSession:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.ro: dict[str, Any] = config["rayorch"]
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.state: dict[str, Any] | None = None
        self._client: Any = None
        self.start_epoch = 0
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                self.state = torch.load(os.path.join(d, STATE_FILE), weights_only=False)
            self.start_epoch = int(self.state["epoch"]) + 1
            if self.rank == 0:
                # The epoch may have been checkpointed but not logged before a crash.
                self._log_metrics(int(self.state["epoch"]), self.state.get("metrics", {}))

    @property
    def epochs(self) -> int:
        return int(self.ro["epochs"])

    def shard(self, name: str) -> Any:
        return ray.train.get_dataset_shard(name)

    def report(
        self,
        epoch: int,
        metrics: dict[str, float],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        full = {**metrics, "epoch": epoch}
        every = int(self.ro.get("checkpoint_every", 1))
        last = epoch == self.epochs - 1
        if self.rank == 0 and (last or (epoch + 1) % every == 0):
            with tempfile.TemporaryDirectory() as tmp:
                bare = model.module if hasattr(model, "module") else model
                state = {
                    "epoch": epoch,
                    "metrics": metrics,
                    "model_state": bare.state_dict(),
                    "optimizer_state": optimizer.state_dict() if optimizer else None,
                }
                torch.save(state, os.path.join(tmp, STATE_FILE))
                torch.save(bare, os.path.join(tmp, MODEL_FILE))
                ray.train.report(full, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(full)
        if self.rank == 0:
            self._log_metrics(epoch, metrics)

    def _log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics at step=epoch, unless that step is already logged."""
        run_id = self.ro.get("mlflow_run_id")
        if not run_id or not metrics:
            return
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.ro["mlflow_uri"])
        history = self._client.get_metric_history(run_id, next(iter(sorted(metrics))))
        if any(m.step == epoch for m in history):
            return
        now = int(time.time() * 1000)
        self._client.log_batch(
            run_id, metrics=[Metric(k, v, now, epoch) for k, v in sorted(metrics.items())]
        )


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """ROC AUC by the rank statistic (ties averaged); 0.5 when one class is absent."""
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"val_auc": 0.5}
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    auc = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {"val_auc": float(auc)}


def _gather(values: np.ndarray) -> np.ndarray:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return values
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, values)
    return np.concatenate(out)


def _batches(shard: Any, columns: list[str], label: str, batch_size: int) -> Any:
    for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.float32):
        x = torch.stack([batch[c] for c in columns], dim=1)
        yield x, batch[label]


def torch_model_loop(
    session: TrainSession,
    task: str = "binary",
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
    hidden: int = 16,
) -> None:
    """A complete loop for a small MLP on tabular features (binary or regression)."""
    ro = session.ro
    columns: list[str] = ro["feature_columns"]
    torch.manual_seed(int(ro.get("seed", 0)))
    model = nn.Sequential(nn.Linear(len(columns), hidden), nn.ReLU(), nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(ro["learning_rate"]))
    if session.state is not None:
        model.load_state_dict(session.state["model_state"])
        if session.state.get("optimizer_state"):
            optimizer.load_state_dict(session.state["optimizer_state"])
    model = ray.train.torch.prepare_model(model)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "binary" else nn.MSELoss()
    train_shard, val_shard = session.shard("train"), session.shard("val")
    for epoch in range(session.start_epoch, session.epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in _batches(train_shard, columns, ro["label"], int(ro["batch_size"])):
            optimizer.zero_grad()
            loss = loss_fn(model(x).squeeze(-1), y)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(y)
            count += len(y)
        model.eval()
        preds, labels, vtotal, vcount = [], [], 0.0, 0
        with torch.no_grad():
            for x, y in _batches(val_shard, columns, ro["label"], int(ro["batch_size"])):
                out = model(x).squeeze(-1)
                vtotal += float(loss_fn(out, y)) * len(y)
                vcount += len(y)
                preds.append(out.numpy())
                labels.append(y.numpy())
        sums = torch.tensor([total, count, vtotal, vcount], dtype=torch.float64)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        metrics = {
            "train_loss": float(sums[0] / max(sums[1], 1)),
            "val_loss": float(sums[2] / max(sums[3], 1)),
        }
        if metric_fn is not None:
            p = _gather(np.concatenate(preds) if preds else np.zeros(0))
            t = _gather(np.concatenate(labels) if labels else np.zeros(0))
            metrics.update(metric_fn(t, p))
        session.report(epoch, metrics, model, optimizer)
