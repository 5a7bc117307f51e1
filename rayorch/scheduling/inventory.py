"""Read node shapes from the live Ray cluster (the effectful side of ``shapes``).

Each alive node becomes a :class:`NodeState` keyed by its Ray node id, with GPUs, CPUs and the
accelerator type taken from its resources (``accelerator_type:A100``). Free capacity is the
scheduler's own accounting, not Ray's momentary availability: placement-group removal is
asynchronous and would make decisions flap.
"""

from __future__ import annotations

from rayorch.errors import InfrastructureError
from rayorch.scheduling.model import NodeState
from rayorch.scheduling.shapes import node_shape_from_resources


def read_nodes() -> tuple[NodeState, ...]:
    """Alive Ray nodes as empty :class:`NodeState` s, sorted by node id (deterministic)."""
    import ray

    if not ray.is_initialized():
        raise InfrastructureError(
            "Ray is not initialized; call ray.init() or set RAY_ADDRESS", field="RAY_ADDRESS"
        )
    out = []
    for n in ray.nodes():
        if not n.get("Alive", n.get("alive", False)):
            continue
        shape = node_shape_from_resources(n.get("Resources", {}))
        out.append(NodeState.empty(n["NodeID"], shape))
    return tuple(sorted(out, key=lambda s: s.node_id))


def connect(address: str | None = None) -> None:
    """Attach to a running Ray cluster (``--address`` / ``RAY_ADDRESS`` / ``auto``)."""
    import ray

    from rayorch.settings import load_settings

    if ray.is_initialized():
        return
    addr = address or load_settings().ray_address or "auto"
    try:
        ray.init(address=addr, namespace="rayorch", log_to_driver=False, configure_logging=False)
    except Exception as e:  # ConnectionError, RuntimeError: depends on the Ray version
        raise InfrastructureError(
            f"no Ray cluster reachable at {addr!r}: {e}; start one (`ray start --head`) or pass "
            "--address / set RAY_ADDRESS",
            address=addr,
        ) from None
