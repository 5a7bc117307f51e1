"""Connecting to Ray: an existing cluster via RAY_ADDRESS, else a local one."""

from __future__ import annotations

import logging
import os

from rayorch.errors import InfrastructureError
from rayorch.settings import Settings, load_settings

log = logging.getLogger(__name__)


def ensure_ray(settings: Settings, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process.

    With ``RAY_ADDRESS`` set (``ray job submit`` sets it), attach to that cluster. Otherwise
    start a private local Ray (never attach by accident to a ``ray start`` cluster), with at
    least 4 logical CPUs so Ray Data read tasks are never starved by Ray Train workers.
    """
    import ray

    if ray.is_initialized():
        return
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=True)
            return
        # Read now, not from ``settings``: one built by hand carries no RAY_AUTH_MODE.
        if load_settings().ray_auth_mode is None:
            os.environ["RAY_AUTH_MODE"] = "disabled"  # for ray.init and the processes it starts
        cpus = num_cpus or max(4, os.cpu_count() or 1)
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as e:
        where = settings.ray_address or "a local cluster"
        raise InfrastructureError(
            f"cannot start or reach Ray at {where}: {e}. Check RAY_ADDRESS.",
            address=settings.ray_address,
        ) from e
