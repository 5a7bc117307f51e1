"""Ready-made training loops on top of ``TrainSession`` (the examples use these)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from rayorch.train.session import TrainSession


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
    # "auto" would move batches to the worker's Ray-assigned GPU; a torch without CUDA (a
    # fake-GPU test cluster) keeps them on the CPU, like the model (see prepare_model).
    device = "auto" if torch.cuda.is_available() else "cpu"
    for batch in shard.iter_torch_batches(
        batch_size=batch_size, dtypes=torch.float32, device=device
    ):
        x = torch.stack([batch[c] for c in columns], dim=1)
        yield x, batch[label]


def torch_model_loop(
    session: TrainSession,
    task: str = "binary",
    metric_fn: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = None,
    hidden: int = 16,
    before_step: Callable[[TrainSession], None] | None = None,
) -> None:
    """A complete loop for a small MLP on tabular features (binary or regression).

    ``before_step`` runs at the start of every training step (tests inject slow workers and
    crashes through it).
    """
    ro = session.ro
    columns: list[str] = ro["feature_columns"]
    torch.manual_seed(int(ro.get("seed", 0)))
    model: nn.Module = nn.Sequential(
        nn.Linear(len(columns), hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=float(ro["learning_rate"]))
    if session.state is not None:
        model.load_state_dict(session.state["model_state"])
        if session.state.get("optimizer_state"):
            optimizer.load_state_dict(session.state["optimizer_state"])
    model = session.prepare_model(model)
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "binary" else nn.MSELoss()
    train_shard, val_shard = session.shard("train"), session.shard("val")
    batch_size = int(ro["batch_size"])
    for epoch in session.epoch_range():
        model.train()
        total, count = 0.0, 0
        for x, y in session.batches(_batches(train_shard, columns, ro["label"], batch_size)):
            if before_step is not None:
                before_step(session)
            optimizer.zero_grad()
            loss = loss_fn(model(x).squeeze(-1), y)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(y)
            count += len(y)
            session.step(model, optimizer, loss=float(loss))
        model.eval()
        preds, labels, vtotal, vcount = [], [], 0.0, 0
        with torch.no_grad():
            for x, y in _batches(val_shard, columns, ro["label"], batch_size):
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
