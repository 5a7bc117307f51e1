"""Loading user entrypoints and the one boundary where user code errors are wrapped."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rayorch.errors import ConfigError, RayorchError, UserCodeError


def load_entrypoint(entrypoint: str) -> Callable[..., Any]:
    """Import ``package.module:function``; a bad reference is a ConfigError naming it."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"entrypoint {entrypoint!r}: cannot import module {module_name!r} ({e})",
            entrypoint=entrypoint,
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(
            f"entrypoint {entrypoint!r}: module {module_name!r} has no callable {attr!r}",
            entrypoint=entrypoint,
        )
    return fn


@contextmanager
def user_code_boundary(entrypoint: str, **context: Any) -> Iterator[None]:
    """Wrap anything the user's function raises so failures say who broke."""
    try:
        yield
    except RayorchError:
        raise
    except Exception as e:
        raise UserCodeError(
            f"user function {entrypoint} raised {type(e).__name__}: {e}",
            entrypoint=entrypoint,
            cause=repr(e),
            cause_type=type(e).__name__,
            cause_message=str(e),
            **context,
        ) from e
