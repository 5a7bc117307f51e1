"""Ready-made training loops on top of ``TrainSession`` (the examples use these).

Device rule: the model (``prepare_model``), the batches and the loss live on the worker's
training device (its Ray-assigned GPU when torch has CUDA, else the CPU). Anything leaving
torch for numpy goes through :func:`to_host` (detached, copied to the CPU: ``.numpy()`` on a
CUDA tensor raises), and the epoch's sums are all-reduced on the device the process group's
backend reduces on (:func:`reduce_device`: NCCL only reduces CUDA tensors, gloo CPU ones).
"""

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


def training_device() -> torch.device:
    """This worker's device: its Ray-assigned GPU when torch has CUDA (``get_device`` gives
    the CPU to a worker with no GPU), else the CPU, like the model (see ``prepare_model``); a
    torch without CUDA on a fake-GPU test cluster trains on the CPU."""
    if torch.cuda.is_available():
        import ray.train.torch

        return torch.device(ray.train.torch.get_device())
    return torch.device("cpu")


def reduce_device(device: torch.device) -> torch.device:
    """Where a collective must run: ``device`` under NCCL (CUDA tensors only), else the CPU
    (gloo, or no process group)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return device
    return torch.device("cpu")


def to_host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array, from any device (detached from the graph, on the CPU)."""
    return t.detach().cpu().numpy()


def epoch_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker totals over all workers (one all-reduce), back on the host."""
    sums = torch.tensor(values, dtype=torch.float64, device=reduce_device(device))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    return [float(v) for v in to_host(sums)]


def _batches(
    shard: Any, columns: list[str], label: str, batch_size: int, device: torch.device
) -> Any:
    for batch in shard.iter_torch_batches(
        batch_size=batch_size, dtypes=torch.float32, device=str(device)
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
    device = training_device()
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "binary" else nn.MSELoss()
    train_shard, val_shard = session.shard("train"), session.shard("val")
    batch_size = int(ro["batch_size"])
    for epoch in session.epoch_range():
        model.train()
        total, count = 0.0, 0
        for x, y in session.batches(
            _batches(train_shard, columns, ro["label"], batch_size, device)
        ):
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
            for x, y in _batches(val_shard, columns, ro["label"], batch_size, device):
                out = model(x).squeeze(-1)
                vtotal += float(loss_fn(out, y)) * len(y)
                vcount += len(y)
                preds.append(to_host(out))
                labels.append(to_host(y))
        t_sum, t_n, v_sum, v_n = epoch_sums([total, count, vtotal, vcount], device)
        metrics = {"train_loss": t_sum / max(t_n, 1), "val_loss": v_sum / max(v_n, 1)}
        if metric_fn is not None:
            p = _gather(np.concatenate(preds) if preds else np.zeros(0))
            t = _gather(np.concatenate(labels) if labels else np.zeros(0))
            metrics.update(metric_fn(t, p))
        session.report(epoch, metrics, model, optimizer)
