"""One error tree for rayorch.

Every error carries its data in fields (not only in the message), says what to change, and
pickles, because errors cross Ray task and actor boundaries. User code is wrapped at one
boundary (:class:`UserCodeError`) so a failure says whether rayorch or the user's function broke.
"""

from __future__ import annotations

from typing import Any


class RayorchError(Exception):
    """Root of every error rayorch raises on purpose.

    ``fields`` holds the structured data (file, field, partition, token, ...) so callers and
    ``--json`` output need not parse messages.
    """

    #: Process exit code the CLI uses for this family.
    exit_code: int = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.fields))

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "message": self.message, **self.fields}


def _rebuild(cls: type[RayorchError], message: str, fields: dict[str, Any]) -> RayorchError:
    err = cls.__new__(cls)
    RayorchError.__init__(err, message, **fields)
    return err


# --- configuration ------------------------------------------------------------------------
class ConfigError(RayorchError):
    """A config file or argument is invalid. Names the file and the field path."""

    exit_code = 2


class PartitionKeyError(ConfigError):
    """A partition key, dimension or value is not a safe, canonical key."""


class LocalStateError(ConfigError):
    """Attached to a Ray cluster with node-local state (SQLite, local paths): names the setting."""


# --- data ---------------------------------------------------------------------------------
class DataError(RayorchError):
    """Input or output data is not what the pipeline declares."""


class DataNotReadyError(DataError):
    """An input partition is missing, incomplete or failed validation."""


class DuplicateKeysError(DataError):
    """Output holds rows with the same unique key; the commit is refused."""


# --- conflicts ----------------------------------------------------------------------------
class ConflictError(RayorchError):
    """Someone else holds or changed the thing this operation needed."""

    exit_code = 3


class ClaimHeldError(ConflictError):
    """The run key is claimed by another live backfill."""


class StaleTokenError(ConflictError):
    """A commit carried a fencing token that is no longer current; it was refused."""


class IllegalTransitionError(ConflictError):
    """A state machine was asked for a transition it does not allow."""


class OwnershipLostError(ConflictError):
    """This driver no longer owns its backfill: another driver took it over (higher owner
    epoch), or its lease ran out while heartbeats failed. It stops writing at once."""


# --- infrastructure and user code ---------------------------------------------------------
class InfrastructureError(RayorchError):
    """Ray, the ledger database, MLflow or storage failed."""


class NotFoundError(RayorchError):
    """A backfill, run or model version named by the user does not exist."""


class UserCodeError(RayorchError):
    """The pipeline's own function raised. ``entrypoint`` names it; the cause is chained."""


class CancelledError(RayorchError):
    """The backfill was cancelled while this unit waited or ran."""
