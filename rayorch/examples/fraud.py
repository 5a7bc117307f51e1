"""The example fraud pipeline: raw transactions -> features -> a tiny torch classifier."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURE_COLUMNS = ["amount_log", "merchant_risk", "hour_sin", "hour_cos", "is_foreign"]

_CITY_RISK = {"SF": 0.2, "NYC": 0.35, "LA": 0.3}


def generate_hour(
    key: dict[str, str], day: dt.date, hour: int, n: int, rng: np.random.Generator
) -> pa.Table:
    """One hour of raw transactions; fraud is more likely for risky merchants abroad at night."""
    city = key.get("city", "X")
    amount = rng.lognormal(3.5, 1.0, n)
    merchant_risk = rng.beta(2, 5, n)
    is_foreign = (rng.random(n) < 0.1 + _CITY_RISK.get(city, 0.25) * 0.2).astype(np.int64)
    night = 1.0 if hour < 6 else 0.0
    logit = -3.0 + 4.0 * merchant_risk + 1.5 * is_foreign + 0.8 * night + 0.3 * np.log1p(amount)
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    base = dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)
    seconds = np.sort(rng.integers(0, 3600, n))
    return pa.table(
        {
            "transaction_id": [f"{city}-{day:%Y%m%d}-{hour:02d}-{i:05d}" for i in range(n)],
            "ts": pa.array(
                [base + dt.timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", "UTC")
            ),
            "city": pa.array([city] * n, pa.string()),
            "amount": pa.array(amount, pa.float64()),
            "merchant_risk": pa.array(merchant_risk, pa.float64()),
            "is_foreign": pa.array(is_foreign, pa.int64()),
            "label": pa.array(label, pa.int64()),
        }
    )


def build_features(ctx: Any, raw: pa.Table) -> pa.Table:
    """Row-level features; one output row per raw transaction (unique transaction_id)."""
    hours = pc.hour(raw.column("ts")).to_numpy(zero_copy_only=False).astype(np.float64)
    angle = 2 * np.pi * hours / 24.0
    amount = raw.column("amount").to_numpy(zero_copy_only=False)
    return pa.table(
        {
            "transaction_id": raw.column("transaction_id"),
            "city": raw.column("city"),
            "date": pa.array([ctx.partition["date"]] * raw.num_rows, pa.string()),
            "amount_log": pa.array(np.log1p(amount), pa.float32()),
            "merchant_risk": raw.column("merchant_risk").cast(pa.float32()),
            "hour_sin": pa.array(np.sin(angle), pa.float32()),
            "hour_cos": pa.array(np.cos(angle), pa.float32()),
            "is_foreign": raw.column("is_foreign").cast(pa.float32()),
            "label": raw.column("label").cast(pa.float32()),
        }
    )


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train per-worker loop: a small MLP trained with BCE, validated with AUC."""
    from rayorch.train.loops import binary_auc, torch_model_loop
    from rayorch.train.session import TrainSession

    session = TrainSession(config)
    torch_model_loop(session, task="binary", metric_fn=binary_auc)
