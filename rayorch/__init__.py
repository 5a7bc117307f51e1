"""rayorch: a training orchestrator on Ray.

Everything the CLI does is a function here, for notebooks and jobs::

    import rayorch
    spec = rayorch.load_pipeline("configs/fraud.yaml")
    plan = rayorch.plan_backfill(spec, "2026-10-01", "2026-10-02")
    summary = rayorch.run_backfill(spec, "2026-10-01", "2026-10-02")
"""

from rayorch.api import generate_data, open_ledger, plan_with_status, run_backfill
from rayorch.backfill.plan import BackfillPlan, Step, plan_backfill
from rayorch.data.tables import open_table
from rayorch.errors import RayorchError
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings
from rayorch.spec import PipelineSpec, load_pipeline

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
