"""Pod templates through the ``kubernetes`` client's own models (``V1PodTemplateSpec``).

A second opinion next to the CRD schema: the client's typed models parse every pod template
(wrong types and missing required fields fail) and serialize it back; any field that does not
come back is one the core API would not keep. Imports the client's models only, never its
API calls.
"""

from __future__ import annotations

from typing import Any

from rayorch.kube.rules import pod_templates
from rayorch.kube.schema import Violation


def _diff(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a):
            sub = f"{path}.{k}"
            out += [sub] if k not in b else _diff(a[k], b[k], sub)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [path]
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff(x, y, f"{path}[{i}]")
        ]
    return [] if a == b or str(a) == str(b) else [path]


def check_pod_templates(obj: dict[str, Any], ref: str) -> list[Violation]:
    """Violations for pod templates of a RayJob or RayCluster that do not round-trip."""
    from kubernetes.client import ApiClient, V1PodTemplateSpec

    kind = obj.get("kind")
    if kind == "RayJob":
        cs, base = (obj.get("spec") or {}).get("rayClusterSpec"), "spec.rayClusterSpec"
    elif kind == "RayCluster":
        cs, base = obj.get("spec"), "spec"
    else:
        return []
    if not isinstance(cs, dict):
        return []
    api = ApiClient()
    out = []
    for _, path, tpl in pod_templates(cs, base):
        try:
            model = V1PodTemplateSpec.from_dict(tpl)
        except Exception as e:  # the client raises pydantic's ValidationError or ValueError
            first = str(e).splitlines()
            out.append(
                Violation(ref, path, "kubernetes: V1PodTemplateSpec", " ".join(first[:3])[:300])
            )
            continue
        back = api.sanitize_for_serialization(model)
        for lost in _diff(tpl, back or {}, path):
            out.append(
                Violation(
                    ref,
                    lost,
                    "kubernetes: V1PodTemplateSpec",
                    "not kept by the client's PodTemplateSpec model (unknown field or wrong type)",
                )
            )
    return out
