"""GPU node and job shapes, written the way people say them.

Node shapes: ``A100:8``, ``8xA100``, ``8`` (8 GPUs, accelerator unknown).
Job shapes: ``4`` (one bundle of 4 GPUs), ``2x4`` (2 bundles x 4 GPUs), ``A100:8`` / ``8xA100``
(one bundle of 8 A100s), ``2x4xA100`` or ``2x4:A100`` (2 bundles x 4 A100s).

A job *bundle* is what must sit on one node (one worker, or one tightly coupled group);
a job may spread its bundles over nodes. Pure: no Ray imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from rayorch.errors import ConfigError

_ACC_RE = re.compile(r"^[A-Za-z][\w.-]*$")
_ACCEL_PREFIX = "accelerator_type:"


def _int(text: str, what: str, shape: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(
            f"shape {shape!r}: {what} {text!r} is not a whole number "
            "(write shapes like 'A100:8', '8xA100', '2x4' or '4')",
            field="shape",
            value=shape,
        ) from None
    if n < 1:
        raise ConfigError(f"shape {shape!r}: {what} must be >= 1", field="shape", value=shape)
    return n


def _acc(text: str, shape: str) -> str:
    if not _ACC_RE.match(text):
        raise ConfigError(
            f"shape {shape!r}: {text!r} is not an accelerator name like 'A100' or 'H100'",
            field="shape",
            value=shape,
        )
    return text


@dataclass(frozen=True, slots=True)
class NodeShape:
    """What one node offers: GPUs, CPUs and the accelerator type (None when unknown)."""

    gpus: int
    cpus: float = 0.0
    accelerator: str | None = None

    def __str__(self) -> str:
        return f"{self.accelerator}:{self.gpus}" if self.accelerator else f"{self.gpus}"


@dataclass(frozen=True, slots=True)
class JobShape:
    """What one unit asks for: ``bundles`` x ``gpus_per_bundle`` (+ CPUs per bundle)."""

    bundles: int
    gpus_per_bundle: int
    cpus_per_bundle: float = 1.0
    accelerator: str | None = None

    @property
    def total_gpus(self) -> int:
        return self.bundles * self.gpus_per_bundle

    @property
    def total_cpus(self) -> float:
        return self.bundles * self.cpus_per_bundle

    def with_bundles(self, bundles: int) -> JobShape:
        """The same total GPUs (and CPUs) cut into ``bundles`` bundles."""
        if self.total_gpus % bundles:
            raise ValueError(f"{self.total_gpus} GPUs do not split into {bundles} bundles")
        return JobShape(
            bundles,
            self.total_gpus // bundles,
            self.total_cpus / bundles,
            self.accelerator,
        )

    def reshapes(self) -> list[JobShape]:
        """Other splits of the same total GPUs, fewest bundles first (1x8 -> 2x4, 4x2, 8x1)."""
        total = self.total_gpus
        return [
            self.with_bundles(b)
            for b in range(1, total + 1)
            if total % b == 0 and b != self.bundles
        ]

    def __str__(self) -> str:
        base = f"{self.bundles}x{self.gpus_per_bundle}"
        return f"{base}x{self.accelerator}" if self.accelerator else base


def parse_node_shape(text: str, cpus: float = 0.0) -> NodeShape:
    """``A100:8`` | ``8xA100`` | ``8`` -> :class:`NodeShape`."""
    s = str(text).strip()
    if not s:
        raise ConfigError("empty node shape; write e.g. 'A100:8'", field="shape", value=text)
    if ":" in s:
        acc, _, n = s.partition(":")
        return NodeShape(_int(n.strip(), "GPU count", s), cpus, _acc(acc.strip(), s))
    parts = [p.strip() for p in s.lower().split("x")] if "x" in s.lower() else [s]
    if len(parts) == 1:
        return NodeShape(_int(parts[0], "GPU count", s), cpus)
    if len(parts) == 2 and not parts[1].isdigit():
        # keep the accelerator's original case: '8xA100' -> 'A100'
        acc = s[len(parts[0]) + 1 :].strip()
        return NodeShape(_int(parts[0], "GPU count", s), cpus, _acc(acc, s))
    raise ConfigError(
        f"node shape {s!r} not understood; write 'A100:8', '8xA100' or '8'",
        field="shape",
        value=text,
    )


def parse_job_shape(text: str, cpus_per_bundle: float = 1.0) -> JobShape:
    """``4`` | ``2x4`` | ``A100:8`` | ``8xA100`` | ``2x4xA100`` | ``2x4:A100`` -> JobShape."""
    s = str(text).strip()
    if not s:
        raise ConfigError("empty job shape; write e.g. '2x4'", field="shape", value=text)
    acc: str | None = None
    body = s
    if ":" in s:
        left, _, right = s.partition(":")
        left, right = left.strip(), right.strip()
        if right.isdigit():  # A100:8
            acc, body = _acc(left, s), right
        else:  # 2x4:A100
            acc, body = _acc(right, s), left
    tokens = [t.strip() for t in re.split(r"[xX]", body)]
    if acc is None and tokens and not tokens[-1].isdigit() and len(tokens) > 1:
        # '8xA100' / '2x4xA100': the last token is the accelerator (original case kept)
        acc = _acc(tokens.pop(), s)
    if len(tokens) == 1:
        return JobShape(1, _int(tokens[0], "GPU count", s), cpus_per_bundle, acc)
    if len(tokens) == 2:
        return JobShape(
            _int(tokens[0], "bundle count", s),
            _int(tokens[1], "GPUs per bundle", s),
            cpus_per_bundle,
            acc,
        )
    raise ConfigError(
        f"job shape {s!r} not understood; write '4', '2x4', 'A100:8' or '2x4xA100'",
        field="shape",
        value=text,
    )


def node_shape_from_resources(resources: Mapping[str, float]) -> NodeShape:
    """A Ray node's resource dict (``GPU``, ``CPU``, ``accelerator_type:A100``) -> NodeShape."""
    accs = sorted(k[len(_ACCEL_PREFIX) :] for k in resources if k.startswith(_ACCEL_PREFIX))
    return NodeShape(
        int(resources.get("GPU", 0)),
        float(resources.get("CPU", 0.0)),
        accs[0] if accs else None,
    )
