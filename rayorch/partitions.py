"""Composite partition keys as canonical values.

A key is a mapping of dimension name to value, with dimensions sorted by name and one string
form (``city=SF/date=2026-10-01``) used for paths, ledger keys and logs alike. Values are
validated as safe path segments when the key is built, not when it is used.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from rayorch.errors import PartitionKeyError

_DIM_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_FORBIDDEN = ("/", "\\", "=", "\x00", "+", ",")


def validate_segment(value: str, *, what: str = "partition value") -> str:
    """Return ``value`` if it is safe as one path segment, else raise PartitionKeyError."""
    if not isinstance(value, str):
        raise PartitionKeyError(f"{what} must be a string, got {type(value).__name__}", value=value)
    if value == "" or value.strip() != value:
        raise PartitionKeyError(
            f"{what} {value!r} is empty or has surrounding whitespace", value=value
        )
    if value in (".", "..") or ".." in value:
        raise PartitionKeyError(f"{what} {value!r} may not contain '..'", value=value)
    bad = [c for c in _FORBIDDEN if c in value]
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise PartitionKeyError(
            f"{what} {value!r} contains reserved character(s) {shown}; "
            "use letters, digits, '-', '_' or '.'",
            value=value,
        )
    return value


def validate_dimension(name: str) -> str:
    if not _DIM_RE.match(name or ""):
        raise PartitionKeyError(
            f"dimension name {name!r} must match {_DIM_RE.pattern} (lower-case identifier)",
            dimension=name,
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class PartitionKey:
    """A composite key: ``((dim, value), ...)`` sorted by dimension name."""

    items: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, mapping: Mapping[str, str] | None = None, **dims: str) -> PartitionKey:
        merged = {**(mapping or {}), **dims}
        items = []
        for dim, value in merged.items():
            validate_dimension(dim)
            validate_segment(str(value), what=f"value of dimension {dim!r}")
            items.append((dim, str(value)))
        return cls(tuple(sorted(items)))

    @classmethod
    def parse(cls, text: str) -> PartitionKey:
        """Parse the canonical form ``dim=value/dim=value`` (order of input is free). Keys
        are immutable, so a parsed one is reused: drivers parse the same keys per turn."""
        return _parse(text)

    @classmethod
    def _parse_uncached(cls, text: str) -> PartitionKey:
        if not text or not text.strip():
            raise PartitionKeyError("empty partition key", key=text)
        mapping: dict[str, str] = {}
        for part in text.strip().strip("/").split("/"):
            if part.count("=") != 1:
                raise PartitionKeyError(
                    f"partition key {text!r}: segment {part!r} is not 'dimension=value'",
                    key=text,
                )
            dim, value = part.split("=")
            if dim in mapping:
                raise PartitionKeyError(
                    f"partition key {text!r} repeats dimension {dim!r}", key=text
                )
            mapping[dim] = value
        return cls.of(mapping)

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def __getitem__(self, dim: str) -> str:
        for d, v in self.items:
            if d == dim:
                return v
        raise KeyError(dim)

    def get(self, dim: str, default: str | None = None) -> str | None:
        try:
            return self[dim]
        except KeyError:
            return default

    def without(self, dim: str) -> PartitionKey:
        return PartitionKey(tuple((d, v) for d, v in self.items if d != dim))

    def with_(self, **dims: str) -> PartitionKey:
        return PartitionKey.of({**self.as_dict(), **dims})

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.items)

    def __str__(self) -> str:
        return "/".join(f"{d}={v}" for d, v in self.items)

    def path(self) -> str:
        """Relative hive path; identical to the canonical string by construction."""
        return str(self)


@functools.lru_cache(maxsize=1 << 16)
def _parse(text: str) -> PartitionKey:
    return PartitionKey._parse_uncached(text)


def parse_date(text: str | dt.date, *, what: str = "date") -> dt.date:
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(str(text))
    except ValueError:
        raise PartitionKeyError(f"{what} {text!r} is not an ISO date (YYYY-MM-DD)") from None


def date_range(start: str | dt.date, end: str | dt.date) -> list[dt.date]:
    """Inclusive day range; ``end`` before ``start`` is an error, not an empty range."""
    s, e = parse_date(start, what="start"), parse_date(end, what="end")
    if e < s:
        raise PartitionKeyError(f"end {e} is before start {s}", start=str(s), end=str(e))
    return [s + dt.timedelta(days=i) for i in range((e - s).days + 1)]


def parse_key_selection(text: str | None) -> dict[str, list[str]]:
    """Parse ``city=SF,NYC;region=west`` (or repeated ``--keys``) into dim -> values."""
    if not text:
        return {}
    out: dict[str, list[str]] = {}
    for clause in re.split(r"[;\s]+", text.strip()):
        if not clause:
            continue
        if clause.count("=") != 1:
            raise PartitionKeyError(
                f"--keys clause {clause!r} must look like 'dim=v1,v2'", key=clause
            )
        dim, values = clause.split("=")
        validate_dimension(dim)
        vals = [validate_segment(v, what=f"value of {dim!r}") for v in values.split(",") if v]
        if not vals:
            raise PartitionKeyError(f"--keys clause {clause!r} names no values", key=clause)
        out.setdefault(dim, [])
        out[dim].extend(v for v in vals if v not in out[dim])
    return out


def key_product(dims: Mapping[str, Iterable[str]]) -> Iterator[dict[str, str]]:
    """Cartesian product of dimension values, in sorted dimension order, deterministic."""
    names = sorted(dims)
    pools = [list(dims[n]) for n in names]

    def rec(i: int, acc: dict[str, str]) -> Iterator[dict[str, str]]:
        if i == len(names):
            yield dict(acc)
            return
        for v in pools[i]:
            acc[names[i]] = v
            yield from rec(i + 1, acc)
        acc.pop(names[i], None)

    yield from rec(0, {})
