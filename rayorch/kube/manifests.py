"""Manifest files: deterministic YAML out, multi-document YAML in (with where each came from).

Rendering the same configs twice gives the same bytes (``cluster/examples`` is checked that
way): keys keep the order the renderers build them in, no timestamps, no aliases. Pure apart
from reading and writing the named files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayorch.errors import ConfigError

HEADER = "# Rendered by `rayorch kube render`; do not edit by hand (re-render instead).\n"


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_documents(objs: Iterable[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML text, in the given order."""
    docs = [
        yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10**6)
        for o in objs
    ]
    return HEADER + "---\n".join(docs)


@dataclass(frozen=True, slots=True)
class Document:
    """One object read from a manifest file; ``source`` is ``file#index`` for error messages."""

    source: str
    obj: dict[str, Any]

    @property
    def ref(self) -> str:
        kind = self.obj.get("kind", "?")
        meta = self.obj.get("metadata") or {}
        name = meta.get("name", "?") if isinstance(meta, dict) else "?"
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return f"{kind} {ns + '/' if ns else ''}{name}"


def load_documents(path: str | Path) -> list[Document]:
    """Every non-empty document of a YAML file; bad YAML or a non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: manifest file not found", file=str(p))
    try:
        raw = list(yaml.safe_load_all(p.read_text()))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}", file=str(p)) from None
    out = []
    for i, doc in enumerate(raw):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(
                f"{p}#{i}: a manifest document must be a mapping (an object)", file=str(p)
            )
        out.append(Document(f"{p}#{i}", doc))
    return out


def write_manifests(out_dir: str | Path, files: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Write ``{file name: objects}`` under ``out_dir``; returns the paths written, sorted."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objs in sorted(files.items()):
        target = root / name
        target.write_text(dump_documents(objs))
        written.append(str(target))
    return written
