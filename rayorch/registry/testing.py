"""Build a real local MLflow registry with model versions, for tests and benchmarks.

Versions are registered the way training registers them (``Tracker.register_model``: a logged
torch model, ``rayorch.artifact_digest`` tag) or, when many are needed quickly, as further
versions of an already-logged model with their own runs and metrics. Nothing here is a fake:
it is MLflow on SQLite with local artifacts, or a real tracking server when given its URI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rayorch.data.layout import FileEntry, PartitionManifest

GOOD = {"train_loss": 0.30, "val_loss": 0.33, "val_auc": 0.91}
GAP = {"train_loss": 0.30, "val_loss": 2.10, "val_auc": 0.90}  # the duplicate-rows model


@dataclass(frozen=True, slots=True)
class MadeVersion:
    version: str
    run_id: str
    artifact_digest: str | None
    model_uri: str | None


def tracking_uri_for(root: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(root), 'mlflow.db')}"


class RegistryBuilder:
    def __init__(
        self, root: str, experiment: str = "registry-tests", uri: str | None = None
    ) -> None:
        from rayorch.lineage.tracking import Tracker

        self.root = os.path.abspath(root)
        self.uri = uri or tracking_uri_for(root)
        self.tracker = Tracker(self.uri, artifact_root=os.path.join(self.root, "artifacts"))
        self.client = self.tracker.client
        self.experiment_id = self.tracker.experiment_id(experiment)

    def _run(self, metrics: dict[str, float], with_dataset: bool, seed: int) -> str:
        run_id = self.client.create_run(self.experiment_id).info.run_id
        for k, v in metrics.items():
            self.client.log_metric(run_id, k, v)
        if with_dataset:
            m = PartitionManifest.build(
                f"city=SF/date=2026-10-{seed % 28 + 1:02d}",
                [FileEntry("part-0.parquet", 100, 10, f"{seed:064x}")],
            )
            self.tracker.log_dataset(run_id, "features", [m], f"{seed + 1:064x}")
        return run_id

    def trained(
        self,
        model: str,
        metrics: dict[str, float] = GOOD,
        *,
        with_dataset: bool = True,
        seed: int = 0,
    ) -> MadeVersion:
        """A version registered as training registers it: a logged torch model and digests."""
        import numpy as np
        import torch

        run_id = self._run(metrics, with_dataset, seed)
        torch.manual_seed(seed)
        net = torch.nn.Linear(3, 1)
        version, digest = self.tracker.register_model(
            run_id, net, model, {}, input_example=np.zeros((1, 3), dtype=np.float32)
        )
        self.tracker.finish(run_id)
        uri = self.client.get_model_version(model, version).source
        return MadeVersion(version, run_id, digest, uri)

    def logged(
        self,
        model: str,
        metrics: dict[str, float] = GOOD,
        *,
        with_dataset: bool = True,
        seed: int = 0,
    ) -> MadeVersion:
        """A version whose artifact is a small model directory logged to its own run: fast.

        Distinct seeds give distinct artifacts (and digests); the digest is computed and tagged
        exactly as ``Tracker.register_model`` does it.
        """
        import tempfile

        run_id = self._run(metrics, with_dataset, seed)
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "model")
            os.makedirs(d)
            with open(os.path.join(d, "MLmodel"), "w") as f:
                f.write(f"artifact_path: model\nflavors: {{}}\nrun_id: {run_id}\n")
            with open(os.path.join(d, "weights.bin"), "wb") as f:
                f.write(seed.to_bytes(8, "big") * 64)
            self.client.log_artifacts(run_id, d, "model")
        source = f"runs:/{run_id}/model"
        try:
            self.client.get_registered_model(model)
        except Exception:
            self.client.create_registered_model(model)
        mv = self.client.create_model_version(model, source, run_id=run_id)
        digest = self.tracker.artifact_digest(source)
        self.client.set_model_version_tag(model, mv.version, "rayorch.artifact_digest", digest)
        self.tracker.finish(run_id)
        return MadeVersion(str(mv.version), run_id, digest, source)
