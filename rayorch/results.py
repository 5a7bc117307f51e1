"""What one attempt of a unit produced: typed, frozen results (never dicts switched on a
string), and what went wrong, with the cause kept.

A result crosses the Ray task boundary as is (frozen dataclasses pickle); what the ledger
stores on commit is :meth:`to_output` (JSON), read back by ``status``, ``reproduce`` and the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rayorch.errors import CancelledError, ConfigError, DataError, RayorchError, UserCodeError


@dataclass(frozen=True, slots=True)
class Staged:
    """A feature unit staged its output; the driver commits it (fenced), then publishes."""

    manifest: dict[str, Any]
    input: dict[str, Any]
    rows: int
    environment: dict[str, Any] | None = None

    def to_output(self) -> dict[str, Any]:
        return {
            "kind": "staged",
            "manifest": self.manifest,
            "input": self.input,
            "rows": self.rows,
            "environment": self.environment,
        }


@dataclass(frozen=True, slots=True)
class Trained:
    """A training unit finished. Its model is registered only after the fenced commit."""

    mlflow_run_id: str
    checkpoint: str
    dataset_digest: str
    metrics: dict[str, float]
    inputs: tuple[str, ...]
    training: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None  # registered on publish (after the commit)
    sample_file: str | None = None  # a file of the window, for the model's input example

    def to_output(self) -> dict[str, Any]:
        return {
            "kind": "trained",
            "mlflow_run_id": self.mlflow_run_id,
            "checkpoint": self.checkpoint,
            "dataset_digest": self.dataset_digest,
            "metrics": self.metrics,
            "inputs": list(self.inputs),
            "training": self.training,
            "model_name": self.model_name,
            "sample_file": self.sample_file,
        }


@dataclass(frozen=True, slots=True)
class Yielded:
    """A training unit checkpointed and stopped on request; it resumes on its next claim."""

    mlflow_run_id: str
    checkpoint: str | None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return self.training.get("step")


@dataclass(frozen=True, slots=True)
class NotReady:
    """The unit's input failed its sensor (PENDING or REJECTED); nothing was staged."""

    sensor: dict[str, Any]

    @property
    def pending(self) -> bool:
        return self.sensor.get("status") == "PENDING"

    def message(self) -> str:
        s = self.sensor
        reasons = "; ".join(r["message"] for r in s.get("reasons", []))
        verdict = s.get("status")
        return f"input {s.get('partition')} {verdict}: {reasons}"


@dataclass(frozen=True, slots=True)
class Noop:
    """The dispatch benchmark's unit: nothing to commit but the token."""

    token: int

    def to_output(self) -> dict[str, Any]:
        return {"kind": "noop", "token": self.token}


WorkResult = Staged | Trained | Yielded | NotReady | Noop
Committable = Staged | Trained | Noop


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An attempt's error: its type, its real message, and who raised it."""

    type: str
    message: str
    retryable: bool
    entrypoint: str | None = None  # the user function that raised, if it was user code

    def describe(self) -> str:
        where = f" in user function {self.entrypoint}" if self.entrypoint else ""
        return f"{self.type}{where}: {self.message}"

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        exc = unwrap(exc)
        retryable = not isinstance(exc, DataError | ConfigError | CancelledError)
        if isinstance(exc, UserCodeError):  # fields survive pickling; __cause__ does not
            return cls(
                str(exc.fields.get("cause_type") or type(exc).__name__),
                str(exc.fields.get("cause_message") or exc.message),
                retryable,
                exc.fields.get("entrypoint"),
            )
        if isinstance(exc, RayorchError):
            return cls(type(exc).__name__, exc.message, retryable)
        return cls(type(exc).__name__, exception_message(exc), retryable)


def unwrap(exc: BaseException) -> BaseException:
    """The error a Ray task raised, out of Ray's ``RayTaskError`` wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def exception_message(exc: BaseException, limit: int = 2000) -> str:
    """An exception's message with the noise cut (SQLAlchemy's link line), never just its
    last line: a database error keeps the database's own words."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    lines = [
        ln for ln in text.strip().splitlines() if not ln.startswith("(Background on this error")
    ]
    msg = " ".join(ln.strip() for ln in lines if ln.strip())
    return msg[:limit] if msg else repr(exc)[:limit]
