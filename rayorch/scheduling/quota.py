"""Namespaces, quotas and priority classes (``configs/cluster.yaml``) as frozen pydantic models.

``load_cluster(path)`` raises :class:`ConfigError` naming the file and the field path, like
``rayorch.spec.load_pipeline``. Pure: no Ray imports.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayorch.errors import ConfigError
from rayorch.kube.config import KubernetesSpec
from rayorch.scheduling.shapes import NodeShape, parse_node_shape
from rayorch.spec import read_yaml, validate_config

SCHEMA_VERSION = 1


class PriorityClass(str, enum.Enum):
    """Priority classes, highest first. A backfill is submitted as BACKFILL unless stated."""

    PRODUCTION = "production"
    BACKFILL = "backfill"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {PriorityClass.PRODUCTION: 1000, PriorityClass.BACKFILL: 100}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NamespaceQuota(_Frozen):
    gpus: int = Field(0, ge=0, description="Nominal GPU quota: GPUs this namespace is guaranteed.")
    cpus: float = Field(0.0, ge=0, description="Nominal CPU quota.")
    max_concurrent_units: int = Field(
        8, ge=1, description="Most units of this namespace admitted at the same time."
    )
    can_borrow: bool = Field(
        False, description="May use idle capacity beyond its quota (preemptible when reclaimed)."
    )
    borrowing_limit_gpus: int | None = Field(
        None, ge=0, description="Most GPUs borrowed beyond the quota (None = any idle GPU)."
    )
    require_image_digest: bool = Field(
        False,
        description="Refuse pipelines whose environment.image is a tag (or ':latest') instead of "
        "registry/name@sha256:<digest>; checked at config/plan time.",
    )


class NodePool(_Frozen):
    shape: str = Field(description="Node shape, e.g. 'A100:8' or '8xA100'.")
    count: int = Field(1, ge=1, description="Number of nodes of this shape.")
    cpus: float = Field(32.0, gt=0, description="CPUs per node.")

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: str) -> str:
        try:
            parse_node_shape(v)
        except ConfigError as e:
            raise ValueError(e.message) from None
        return v


class ClusterSpec(_Frozen):
    """Quotas per namespace, the scheduling cycle, and (for the simulator) a node inventory."""

    schema_version: int = Field(SCHEMA_VERSION, description="Config schema version.")
    namespaces: dict[str, NamespaceQuota] = Field(
        description="Namespace name -> quota. Pipelines name their namespace in `namespace:`."
    )
    default_priority: PriorityClass = Field(
        PriorityClass.BACKFILL, description="Priority class of a submission that names none."
    )
    scheduling_cycle_s: float = Field(
        1.0, gt=0, description="Seconds between scheduling cycles of the controller."
    )
    yield_grace_s: float = Field(
        300.0, gt=0, description="Seconds a preempted unit has to checkpoint and release."
    )
    nodes: list[NodePool] = Field(
        default_factory=list,
        description="Node inventory for the simulator and plan-time checks without a live Ray.",
    )
    kubernetes: KubernetesSpec = Field(
        default_factory=KubernetesSpec,
        description="Image, secrets, accelerators and topology for `rayorch kube render`.",
    )

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v}; this rayorch reads {SCHEMA_VERSION}")
        return v

    @field_validator("namespaces")
    @classmethod
    def _names(cls, v: dict[str, NamespaceQuota]) -> dict[str, NamespaceQuota]:
        if not v:
            raise ValueError("declare at least one namespace")
        for name in v:
            if not name or "/" in name or name.strip() != name:
                raise ValueError(f"namespace name {name!r} is not a plain name")
        return v

    def quota(self, namespace: str) -> NamespaceQuota | None:
        return self.namespaces.get(namespace)

    def node_shapes(self) -> list[NodeShape]:
        """The configured inventory, one NodeShape per node."""
        return [
            parse_node_shape(pool.shape, cpus=pool.cpus)
            for pool in self.nodes
            for _ in range(pool.count)
        ]


def parse_cluster(data: Any, *, source: str = "<cluster config>") -> ClusterSpec:
    return validate_config(ClusterSpec, data, source=source, what="cluster config")


def load_cluster(path: str | Path) -> ClusterSpec:
    """Load ``configs/cluster.yaml``. Errors name the file, the field path and what was expected."""
    data, source = read_yaml(path, what="cluster config")
    return parse_cluster(data, source=source)
