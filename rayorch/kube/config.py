"""The ``kubernetes:`` section of ``configs/cluster.yaml``: what rendering needs beyond quotas.

Every field is optional with a default, so a cluster config without the section still loads
(and renders, as long as the pipeline names its image). Pure: pydantic only.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Label keys (optionally prefixed) and DNS-1123 names, as Kubernetes checks them.
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _labels(v: dict[str, str]) -> dict[str, str]:
    for k, x in v.items():
        if not LABEL_KEY_RE.match(k):
            raise ValueError(f"{k!r} is not a Kubernetes label key")
        if not LABEL_VALUE_RE.match(str(x)):
            raise ValueError(f"{x!r} (label {k!r}) is not a Kubernetes label value")
    return {k: str(x) for k, x in v.items()}


class Toleration(_Frozen):
    key: str = Field(description="Taint key the pods tolerate, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] = Field("Exists", description="Exists | Equal.")
    value: str | None = Field(None, description="Taint value (operator Equal only).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        "NoSchedule", description="Taint effect tolerated."
    )

    @model_validator(mode="after")
    def _value(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        return self


class AcceleratorSpec(_Frozen):
    """How pods land on nodes of one accelerator type (the shape's type, e.g. A100)."""

    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels of this accelerator's nodes: the pods' nodeSelector and the "
        "ResourceFlavor's nodeLabels, e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu")],
        description="Taints of those nodes the pods tolerate (default: nvidia.com/gpu Exists).",
    )

    @field_validator("node_labels")
    @classmethod
    def _node_labels(cls, v: dict[str, str]) -> dict[str, str]:
        return _labels(v)


class KubernetesSpec(_Frozen):
    """Image, secrets, accelerators and topology for `rayorch kube render`."""

    image: str | None = Field(
        None,
        description="Ray image when the pipeline's environment.image is not set; pinned as "
        "registry/name@sha256:<digest> where the namespace sets require_image_digest.",
    )
    ray_version: str = Field("2.60.0", description="rayClusterSpec.rayVersion (the image's Ray).")
    secret_name: str = Field(
        "rayorch-cluster",
        description="Secret holding the cluster-mode URLs; pods read it by reference only.",
    )
    secret_env: dict[str, str] = Field(
        default_factory=lambda: {
            "MLFLOW_TRACKING_URI": "mlflow-tracking-uri",
            "RAYORCH_DB_URL": "db-url",
        },
        description="Environment variable -> key in `secret_name` (never a value inline).",
    )
    head_cpus: float = Field(2.0, gt=0, description="CPUs of the Ray head pod (runs the driver).")
    cpu_pod_cpus: float = Field(4.0, gt=0, description="CPUs per pod of the CPU worker group.")
    memory_per_cpu_gib: float = Field(
        4.0, gt=0, description="Memory per CPU of every pod and of the ClusterQueue quota."
    )
    backoff_limit: int = Field(
        3, ge=0, description="RayJob retries; each reruns the same backfill, which resumes."
    )
    termination_margin_s: int = Field(
        30,
        ge=0,
        description="Seconds added to the yield timeout for terminationGracePeriodSeconds.",
    )
    cohort: str = Field("rayorch", description="Kueue cohort of every ClusterQueue.")
    accelerators: dict[str, AcceleratorSpec] = Field(
        default_factory=dict,
        description="Accelerator type (as in node shapes, e.g. A100) -> node labels/tolerations.",
    )
    topology_levels: list[str] = Field(
        default_factory=list,
        description="Node labels from the widest to the narrowest topology domain, e.g. "
        "[example.com/block, example.com/rack, kubernetes.io/hostname]; empty: no TAS.",
    )
    topology_name: str = Field("rayorch-topology", description="Name of the Kueue Topology.")
    topology_level: str | None = Field(
        None,
        description="Level GPU worker groups ask for (default: the second narrowest level).",
    )
    topology_mode: Literal["preferred", "required"] = Field(
        "preferred", description="podset-preferred-topology or podset-required-topology."
    )

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, key in v.items():
            if not _ENV_RE.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if not _SECRET_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a Secret key")
        return dict(sorted(v.items()))

    @field_validator("secret_name", "cohort", "topology_name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not _DNS1123_LABEL_RE.match(v):
            raise ValueError(f"{v!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
        return v

    @field_validator("topology_levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        for level in v:
            if not LABEL_KEY_RE.match(level):
                raise ValueError(f"topology level {level!r} is not a node label key")
        if len(set(v)) != len(v):
            raise ValueError("topology_levels repeats a level")
        if "kubernetes.io/hostname" in v[:-1]:
            raise ValueError("kubernetes.io/hostname can only be the last (narrowest) level")
        return v

    @model_validator(mode="after")
    def _topology(self) -> KubernetesSpec:
        if self.topology_level is not None and self.topology_level not in self.topology_levels:
            raise ValueError(f"topology_level {self.topology_level!r} is not in topology_levels")
        if self.topology_levels:
            for name, acc in self.accelerators.items():
                if not acc.node_labels:
                    raise ValueError(
                        f"accelerators.{name}.node_labels is empty; Kueue needs node labels "
                        "on a ResourceFlavor that names a topology"
                    )
        return self

    @property
    def pod_set_level(self) -> str | None:
        """The topology level GPU worker groups request (None: no TAS)."""
        if not self.topology_levels:
            return None
        if self.topology_level:
            return self.topology_level
        levels = self.topology_levels
        return levels[-2] if len(levels) > 1 else levels[0]
