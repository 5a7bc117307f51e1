"""Registry errors: branches of the one rayorch error tree (see ``rayorch.errors``)."""

from __future__ import annotations

from rayorch.errors import ConfigError, ConflictError, InfrastructureError, NotFoundError


class NothingToRollBackError(NotFoundError):
    """The audit log holds no earlier version of the alias to return to."""


class CoordinatorMismatchError(ConfigError):
    """The named coordinator of this registry writes to a different ledger database."""


class PromotionInterruptedError(InfrastructureError):
    """MLflow failed while moving the alias; the attempt was settled (see its audit row)."""


class AliasRowMovedError(ConflictError):
    """rayorch's alias row changed between a promotion's read and its claim (nothing written)."""
