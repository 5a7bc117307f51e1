"""A unit's MLflow run as the UI shows it: metric histories and a link (effectful, read-only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayorch.errors import InfrastructureError, NotFoundError


@dataclass(frozen=True, slots=True)
class RunCurves:
    run_id: str
    experiment_id: str
    status: str
    params: dict[str, str]
    metrics: dict[str, list[tuple[float, float]]]  # name -> [(step, value)] in step order

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "status": self.status,
            "params": self.params,
            "metrics": {k: [list(p) for p in v] for k, v in self.metrics.items()},
        }


def read_run(tracking_uri: str, run_id: str) -> RunCurves:
    """Every metric's full history (one request per metric, through MLflow's public client)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        metrics = {
            name: sorted(
                (float(m.step), float(m.value)) for m in client.get_metric_history(run_id, name)
            )
            for name in sorted(run.data.metrics)
        }
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(
                f"no MLflow run {run_id!r} at {tracking_uri}", run_id=run_id
            ) from None
        raise InfrastructureError(
            f"cannot read MLflow run {run_id} from {tracking_uri}: {e.message}; check "
            "MLFLOW_TRACKING_URI",
            run_id=run_id,
        ) from None
    return RunCurves(
        run_id, run.info.experiment_id, run.info.status, dict(run.data.params), metrics
    )


def run_link(mlflow_url: str | None, curves: RunCurves | None, run_id: str) -> str | None:
    """The run's page in an MLflow UI (``rayorch ui --mlflow-url``), when one is named."""
    if not mlflow_url:
        return None
    base = mlflow_url.rstrip("/")
    if curves is None:
        return f"{base}/#/runs/{run_id}"
    return f"{base}/#/experiments/{curves.experiment_id}/runs/{run_id}"


def split_curves(
    metrics: dict[str, list[tuple[float, float]]],
) -> list[tuple[str, dict[str, list[tuple[float, float]]]]]:
    """Group metrics into charts: losses together, every other metric together."""
    losses = {k: v for k, v in metrics.items() if "loss" in k}
    others = {k: v for k, v in metrics.items() if "loss" not in k and len(v) > 1}
    out = []
    if losses:
        out.append(("loss", losses))
    if others:
        out.append(("metrics", others))
    return out
