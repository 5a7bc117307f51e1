"""rayorch: a training orchestrator on Ray.

Everything the CLI does is a function here, for notebooks and jobs::

    import rayorch
    spec = rayorch.load_pipeline("configs/fraud.yaml")
    plan = rayorch.plan_backfill(spec, "2026-10-01", "2026-10-02")
    summary = rayorch.run_backfill(spec, "2026-10-01", "2026-10-02")

The names are imported on first use: a Ray worker that imports one submodule (a feature
task, a Train worker) does not pay for the driver, the ledger and SQLAlchemy (~0.8 s each
process on two cores).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayorch.api import generate_data, open_ledger, plan_with_status, run_backfill
    from rayorch.backfill.plan import BackfillPlan, Step, plan_backfill
    from rayorch.data.tables import open_table
    from rayorch.errors import RayorchError
    from rayorch.partitions import PartitionKey
    from rayorch.settings import load_settings
    from rayorch.spec import PipelineSpec, load_pipeline

_WHERE = {
    "BackfillPlan": "rayorch.backfill.plan",
    "PartitionKey": "rayorch.partitions",
    "PipelineSpec": "rayorch.spec",
    "RayorchError": "rayorch.errors",
    "Step": "rayorch.backfill.plan",
    "generate_data": "rayorch.api",
    "load_pipeline": "rayorch.spec",
    "load_settings": "rayorch.settings",
    "open_ledger": "rayorch.api",
    "open_table": "rayorch.data.tables",
    "plan_backfill": "rayorch.backfill.plan",
    "plan_with_status": "rayorch.api",
    "run_backfill": "rayorch.api",
}
__all__ = [
    "BackfillPlan",
    "PartitionKey",
    "PipelineSpec",
    "RayorchError",
    "Step",
    "generate_data",
    "load_pipeline",
    "load_settings",
    "open_ledger",
    "open_table",
    "plan_backfill",
    "plan_with_status",
    "run_backfill",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rayorch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
