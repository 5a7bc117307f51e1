"""The example pricing pipeline: listing snapshots by city x date -> a tiny price regressor."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa

FEATURE_COLUMNS = ["bedrooms", "distance_km", "occupancy", "weekend"]


def generate_hour(
    key: dict[str, str], day: dt.date, hour: int, n: int, rng: np.random.Generator
) -> pa.Table:
    """One hour of listing price observations; (listing_id, ts) is unique."""
    city = key.get("city", "X")
    bedrooms = rng.integers(0, 5, n)
    distance = rng.gamma(2.0, 3.0, n)
    occupancy = rng.random(n)
    weekend = 1 if day.weekday() >= 5 else 0
    price = 80 + 45 * bedrooms - 3.0 * distance + 60 * occupancy + 20 * weekend
    price = price + rng.normal(0, 10, n)
    base = dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.timezone.utc)
    return pa.table(
        {
            "listing_id": [f"{city}-L{i:05d}" for i in range(n)],
            "ts": pa.array([base] * n, pa.timestamp("us", "UTC")),
            "city": pa.array([city] * n, pa.string()),
            "bedrooms": pa.array(bedrooms, pa.int64()),
            "distance_km": pa.array(distance, pa.float64()),
            "occupancy": pa.array(occupancy, pa.float64()),
            "weekend": pa.array([weekend] * n, pa.int64()),
            "price": pa.array(price, pa.float64()),
        }
    )


def build_features(ctx: Any, raw: pa.Table) -> pa.Table:
    """Scaled numeric features; one row per (listing_id, ts)."""

    def col(name: str) -> pa.Array:
        return raw.column(name).cast(pa.float32())

    return pa.table(
        {
            "listing_id": raw.column("listing_id"),
            "ts": raw.column("ts"),
            "bedrooms": col("bedrooms"),
            "distance_km": col("distance_km"),
            "occupancy": col("occupancy"),
            "weekend": col("weekend"),
            "label": pa.array(
                raw.column("price").to_numpy(zero_copy_only=False) / 100.0, pa.float32()
            ),
        }
    )


def train_loop(config: dict[str, Any]) -> None:
    from rayorch.train.loops import torch_model_loop
    from rayorch.train.session import TrainSession

    torch_model_loop(TrainSession(config), task="regression")
