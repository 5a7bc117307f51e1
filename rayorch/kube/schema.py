"""Strict offline validation of objects against the upstream CRD schemas (``../shared/crds``).

What the API server would do with ``fieldValidation=Strict``, as far as a schema can say it:

* structural JSON-schema checks (types, enums, patterns, required, bounds) with **unknown
  fields rejected**: every ``properties`` block without ``x-kubernetes-preserve-unknown-fields``
  is closed; ``nullable: true`` admits null; ``x-kubernetes-int-or-string`` admits both;
* ``x-kubernetes-list-type: set|map`` uniqueness;
* ``x-kubernetes-validations`` CEL rules, evaluated with cel-python after applying the
  schema's defaults (as the server defaults before it validates). Transition rules (those
  reading ``oldSelf``) only apply to updates and are skipped; a rule the library cannot compile
  is reported in ``unevaluated`` rather than dropped silently.

``metadata`` at the root is not in CRD schemas (the server checks ObjectMeta itself):
``rayorch.kube.rules`` checks names, labels and annotations. Pure.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

from rayorch.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: which object, where in it, which rule, and what is wrong."""

    object: str  # e.g. "RayJob risk/fraud-20261001-20261003-1a2b3c4d"
    path: str  # e.g. "spec.rayClusterSpec.workerGroupSpecs[0].groupName"
    rule: str  # e.g. "schema: unknown field", "cel: <rule>", "kueue: ..."
    message: str
    source: str = ""  # file#index when read from a file

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.object}: {self.path or '<root>'}: {self.message} [{self.rule}]"

    def to_dict(self) -> dict[str, str]:
        return {
            "object": self.object,
            "path": self.path,
            "rule": self.rule,
            "message": self.message,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class SchemaResult:
    violations: tuple[Violation, ...]
    cel_evaluated: int
    unevaluated: tuple[str, ...] = field(default=())


def default_crd_dir() -> Path:
    """``../shared/crds`` next to the repository this package lives in."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "crds"


@dataclass(frozen=True, slots=True)
class CrdSchema:
    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    schema: dict[str, Any]


@functools.lru_cache(maxsize=4)
def load_crds(crd_dir: str) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> schema, for every served version of every CRD under ``crd_dir``."""
    root = Path(crd_dir)
    files = sorted(root.glob("*/*.yaml")) + sorted(root.glob("*.yaml"))
    if not files:
        raise ConfigError(
            f"no CRD files under {root}; point --crds at the CustomResourceDefinitions "
            "(../shared/crds in this repository's layout)",
            field="crds",
            value=str(root),
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[tuple[str, str], CrdSchema] = {}
    for f in files:
        with f.open() as fh:
            for doc in yaml.load_all(fh, Loader=loader):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for v in spec["versions"]:
                    if not v.get("served", True):
                        continue
                    api = f"{spec['group']}/{v['name']}"
                    out[(api, spec["names"]["kind"])] = CrdSchema(
                        kind=spec["names"]["kind"],
                        group=spec["group"],
                        version=v["name"],
                        plural=spec["names"]["plural"],
                        namespaced=spec["scope"] == "Namespaced",
                        schema=v["schema"]["openAPIV3Schema"],
                    )
    return out


def _strict(schema: Any, root: bool = True) -> Any:
    """The schema as a closed JSON schema: extra properties refused, nullable honoured."""
    if isinstance(schema, list):
        return [_strict(x, False) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: (_strict(v, False) if k not in ("enum", "default", "required", "example") else v)
        for k, v in schema.items()
        if not k.startswith("x-kubernetes-") and k != "properties"
    }
    if "properties" in schema:
        out["properties"] = {k: _strict(v, False) for k, v in schema["properties"].items()}
        if root:  # root metadata is ObjectMeta, checked by rules.py
            out["properties"]["metadata"] = {"type": "object"}
        if (
            not schema.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in schema
        ):
            out["additionalProperties"] = False
    if schema.get("nullable"):
        out.pop("nullable", None)
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@functools.lru_cache(maxsize=64)
def _validator(crd_dir: str, api: str, kind: str) -> jsonschema.protocols.Validator:
    crd = load_crds(crd_dir)[(api, kind)]
    strict = _strict(crd.schema)
    cls = jsonschema.validators.validator_for(strict, default=jsonschema.Draft7Validator)
    return cls(strict)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _structural(obj: dict[str, Any], validator: Any, ref: str) -> list[Violation]:
    out = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = _path(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = set((err.schema.get("properties") or {}).keys())
            for extra in sorted(set(err.instance) - known):
                out.append(
                    Violation(
                        ref,
                        f"{path}.{extra}" if path else extra,
                        "schema: unknown field",
                        f"field {extra!r} is not in the schema (strict field validation "
                        "rejects it); known fields: " + ", ".join(sorted(known)),
                    )
                )
            continue
        msg = err.message if len(err.message) < 300 else err.message[:297] + "..."
        out.append(Violation(ref, path, f"schema: {err.validator}", msg))
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """A copy of ``value`` with the schema's defaults filled in where fields are absent."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        out = {}
        for k, v in value.items():
            sub = props.get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            out[k] = apply_defaults(sub, v) if sub else v
        for k, sub in props.items():
            if k not in out and "default" in sub:
                out[k] = apply_defaults(sub, copy.deepcopy(sub["default"]))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], x) for x in value]
    return value


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


@dataclass
class _CelState:
    evaluated: int = 0
    unevaluated: set[str] = field(default_factory=set)


def _cel(schema: dict[str, Any], value: Any, path: str, ref: str, st: _CelState) -> list[Violation]:
    out: list[Violation] = []
    if value is None:
        return out
    for r in schema.get("x-kubernetes-validations") or []:
        rule = r["rule"]
        if "oldSelf" in rule:
            continue  # transition rule: applies to updates only
        try:
            program = _program(rule)
        except Exception:
            st.unevaluated.add(rule)
            continue
        st.evaluated += 1
        try:
            ok = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:
            ok = e
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            why = r.get("message") or f"rule {rule!r} is false"
            if isinstance(ok, Exception):
                why = f"rule {rule!r} could not be evaluated: {ok}"
            out.append(Violation(ref, path, f"cel: {rule}", why))
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = set()
        for i, item in enumerate(value):
            key = (
                tuple(item.get(k) for k in keys)
                if list_type == "map" and isinstance(item, dict)
                else repr(item)
            )
            if key in seen:
                out.append(
                    Violation(
                        ref,
                        f"{path}[{i}]",
                        f"schema: list-type {list_type}",
                        f"duplicate entry {key!r}",
                    )
                )
            seen.add(key)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k) or (extra if isinstance(extra, dict) else None)
            if sub:
                out += _cel(sub, v, f"{path}.{k}" if path else k, ref, st)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += _cel(schema["items"], v, f"{path}[{i}]", ref, st)
    return out


def find_crd(obj: dict[str, Any], crd_dir: str) -> CrdSchema | None:
    return load_crds(crd_dir).get((str(obj.get("apiVersion")), str(obj.get("kind"))))


def validate_schema(obj: dict[str, Any], ref: str, crd_dir: str | Path) -> SchemaResult:
    """Structural + CEL checks of one object against its CRD; unknown kinds are a violation."""
    d = str(crd_dir)
    crd = find_crd(obj, d)
    if crd is None:
        known = sorted(f"{a} {k}" for a, k in load_crds(d))
        return SchemaResult(
            (
                Violation(
                    ref,
                    "apiVersion",
                    "schema: known kind",
                    f"no CRD for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r}"
                    f" under {d} (known: {', '.join(known)})",
                ),
            ),
            0,
        )
    found = _structural(obj, _validator(d, str(obj["apiVersion"]), str(obj["kind"])), ref)
    st = _CelState()
    body = {k: v for k, v in obj.items() if k != "metadata"}
    found += _cel(crd.schema, apply_defaults(crd.schema, body), "", ref, st)
    return SchemaResult(tuple(found), st.evaluated, tuple(sorted(st.unevaluated)))
