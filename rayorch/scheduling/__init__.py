"""Quotas, priorities, GPU-shape-aware admission and placement, fragmentation, simulator.

Pure decision modules (no Ray): ``shapes``, ``quota``, ``model``, ``placement``, ``admission``,
``cycle``, ``fragmentation``, ``estimate``, ``workload``, ``simulator``. Effectful: ``inventory``
(reads node shapes from Ray) and ``controller`` (the named scheduler actor). See
docs/scheduling.md.
"""

from rayorch.scheduling.admission import (
    FIFO_NO_QUOTA,
    FIRST_FIT,
    POLICIES,
    RAYORCH,
    Admission,
    AdmissionOutcome,
    AdmissionPolicy,
    Reason,
    admit,
)
from rayorch.scheduling.cycle import CycleResult, schedule
from rayorch.scheduling.model import (
    NodeState,
    PlacementPlan,
    Request,
    RunningWorkload,
    Snapshot,
    Strategy,
)
from rayorch.scheduling.placement import Packing, never_fits, place
from rayorch.scheduling.quota import ClusterSpec, NamespaceQuota, PriorityClass, load_cluster
from rayorch.scheduling.shapes import JobShape, NodeShape, parse_job_shape, parse_node_shape

__all__ = [
    "FIFO_NO_QUOTA",
    "FIRST_FIT",
    "POLICIES",
    "RAYORCH",
    "Admission",
    "AdmissionOutcome",
    "AdmissionPolicy",
    "ClusterSpec",
    "CycleResult",
    "JobShape",
    "NamespaceQuota",
    "NodeShape",
    "NodeState",
    "Packing",
    "PlacementPlan",
    "PriorityClass",
    "Reason",
    "Request",
    "RunningWorkload",
    "Snapshot",
    "Strategy",
    "admit",
    "load_cluster",
    "never_fits",
    "parse_job_shape",
    "parse_node_shape",
    "place",
    "schedule",
]
