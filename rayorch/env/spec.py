"""The `environment:` section of a pipeline config, the image-digest policy, the runtime_env.

Pure: no ray, mlflow or file I/O here. ``build_runtime_env`` returns the dict handed to Ray
as ``runtime_env``; ``check_image_policy`` is the plan-time refusal of unpinned images.

Paths: a relative ``lockfile`` (and relative ``py_modules`` / ``working_dir``) is resolved
against the current working directory of the process that runs the backfill or the CLI (the
repository root, as with ``ray job submit --working-dir .``), never against the config file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayorch.env.errors import EXPECTED_IMAGE_FORM, ImageNotPinnedError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed container image reference: ``[host[:port]/]path[:tag][@sha256:…]``."""

    name: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


def parse_image_ref(ref: str) -> ImageRef:
    """Parse an image reference; ValueError says what is wrong and shows the pinned form."""
    text = ref.strip()
    if not text or text != ref:
        raise ValueError(f"image {ref!r} is empty or has surrounding spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ValueError(
                f"image {ref!r}: digest {digest!r} is not 'sha256:' + 64 lowercase hex digits "
                f"(expected {EXPECTED_IMAGE_FORM})"
            )
    tag = None
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ValueError(f"image {ref!r}: tag {tag!r} is not a valid tag")
    parts = text.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        if not _HOST_RE.match(parts[0]):
            raise ValueError(f"image {ref!r}: registry host {parts[0]!r} is not valid")
        parts = parts[1:]
    for p in parts:
        if not _COMPONENT_RE.match(p):
            raise ValueError(
                f"image {ref!r}: path component {p!r} must be lowercase letters, digits, "
                "and single separators"
            )
    return ImageRef(name=text, tag=tag, digest=digest)


class RuntimeEnvExtras(_Frozen):
    """Extra Ray ``runtime_env`` settings, passed through as they are."""

    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in every worker of a unit."
    )
    pip: list[str] | None = Field(
        None, description="Packages Ray installs into a per-job virtualenv (runtime_env.pip)."
    )
    install_lockfile: bool = Field(
        False, description="Hand `environment.lockfile` to Ray as runtime_env.pip (a path)."
    )
    py_modules: list[str] | None = Field(
        None, description="Local module dirs or wheels shipped to workers (runtime_env.py_modules)."
    )
    working_dir: str | None = Field(
        None,
        description="Directory uploaded as the workers' working dir (runtime_env.working_dir).",
    )
    use_image_uri: bool = Field(
        False,
        description="Also set runtime_env.image_uri to `environment.image` (Ray runs the worker "
        "in that container; needs podman on the nodes).",
    )

    @field_validator("env_vars")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not _ENV_NAME_RE.match(k):
                raise ValueError(f"env var name {k!r} is not a valid variable name")
        return {k: str(x) for k, x in v.items()}


class EnvironmentSpec(_Frozen):
    """Where a pipeline's units run: image, package lock and runtime_env extras."""

    image: str | None = Field(
        None,
        description=f"Container image of the Ray nodes, pinned as {EXPECTED_IMAGE_FORM} "
        "(a tag is accepted unless the namespace sets require_image_digest).",
    )
    lockfile: str | None = Field(
        None,
        description="Requirements/lock file whose sha256 is recorded with every run; a relative "
        "path is resolved against the current working directory (the repository root).",
    )
    runtime_env: RuntimeEnvExtras = Field(
        default_factory=RuntimeEnvExtras, description="Extra Ray runtime_env settings."
    )
    env_vars_to_record: list[str] = Field(
        default_factory=list,
        description="Names of environment variables whose values are fingerprinted in workers.",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None:
            parse_image_ref(v)
        return v

    @field_validator("env_vars_to_record")
    @classmethod
    def _record(cls, v: list[str]) -> list[str]:
        for k in v:
            if not _ENV_NAME_RE.match(k):
                raise ValueError(f"env var name {k!r} is not a valid variable name")
        return sorted(set(v))


def check_image_policy(
    env: EnvironmentSpec | None,
    *,
    require_digest: bool,
    namespace: str,
    file: str | None = None,
    policy_file: str | None = None,
) -> ImageRef | None:
    """Refuse a tag-only or ``:latest`` image when the namespace requires digests.

    Returns the parsed image (None when the pipeline names none: it runs on whatever the
    Ray cluster runs, which the fingerprint records).
    """
    if env is None or env.image is None:
        return None
    ref = parse_image_ref(env.image)
    if require_digest and not ref.pinned:
        why = "uses the mutable tag ':latest'" if ref.tag in (None, "latest") else "has a tag only"
        where = f"{file}: " if file else ""
        raise ImageNotPinnedError(
            f"{where}environment.image {env.image!r} {why}, but namespace {namespace!r} sets "
            f"require_image_digest: true"
            + (
                f" ({policy_file}: namespaces.{namespace}.require_image_digest)"
                if policy_file
                else ""
            )
            + f". Pin it by digest: {ref.name}@sha256:<64 hex digits> "
            f"(expected form {EXPECTED_IMAGE_FORM}; `docker buildx imagetools inspect "
            f"{env.image}` prints the digest)",
            file=file,
            field="environment.image",
            image=env.image,
            namespace=namespace,
            policy_file=policy_file,
            expected=EXPECTED_IMAGE_FORM,
        )
    return ref


def build_runtime_env(
    env: EnvironmentSpec | None, *, lockfile_path: str | None = None
) -> dict[str, Any] | None:
    """The Ray ``runtime_env`` for a pipeline's units (None: inherit the job's).

    ``lockfile_path`` is the resolved lockfile (see module docstring); it is only used when
    ``runtime_env.install_lockfile`` asks Ray to install it.
    """
    if env is None:
        return None
    extras = env.runtime_env
    out: dict[str, Any] = {}
    if extras.env_vars:
        out["env_vars"] = dict(sorted(extras.env_vars.items()))
    if extras.install_lockfile:
        if not (lockfile_path or env.lockfile):
            raise ValueError("runtime_env.install_lockfile needs environment.lockfile")
        out["pip"] = lockfile_path or env.lockfile
    elif extras.pip is not None:
        out["pip"] = list(extras.pip)
    if extras.py_modules:
        out["py_modules"] = list(extras.py_modules)
    if extras.working_dir:
        out["working_dir"] = extras.working_dir
    if extras.use_image_uri and env.image:
        out["image_uri"] = env.image
    return out or None
