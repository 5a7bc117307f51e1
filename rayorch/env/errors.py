"""Errors of the environment layer, in rayorch's one error tree (they pickle like the rest)."""

from __future__ import annotations

from rayorch.errors import ConfigError, RayorchError

EXPECTED_IMAGE_FORM = "registry/name@sha256:<64 hex digits>"


class ImageNotPinnedError(ConfigError):
    """A namespace requires images pinned by digest and the pipeline names a tag (or none).

    Fields: ``file``, ``field`` (``environment.image``), ``image``, ``namespace``,
    ``policy_file`` and ``expected`` (the form that would be accepted).
    """


class EnvironmentDriftError(RayorchError):
    """A unit's workers run in another environment than the backfill's first unit did.

    Fields: ``run_key``, ``backfill_id``, ``reference_digest``, ``observed_digest``,
    ``reference_run_key`` and ``diff`` (lines such as ``tabulate 0.8.10 → 0.10.0``). The unit
    fails and its output is not committed, so one backfill never mixes environments.
    """


class FingerprintMissingError(RayorchError):
    """A run named on the command line has no recorded environment fingerprint."""

    exit_code = 2
