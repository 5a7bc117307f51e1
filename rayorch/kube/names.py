"""Deterministic Kubernetes names and Ray job ids from a backfill's parameters.

The RayJob name and ``spec.jobId`` are functions of the backfill's parameters (pipeline, days,
keys, steps) - the same dict whose hash the ledger keys backfills by - so rendering the same
backfill twice gives the same object, a second ``submit`` meets the first one (409, not a
second job), and one Ray cluster never runs the backfill twice under two submission ids.
Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rayorch.ledger.rows import params_hash

#: KubeRay: a RayJob's RayCluster is named ``<rayjob>-<5 chars>`` and must stay <= 53 chars.
MAX_RAYJOB_NAME = 47
MAX_RAYCLUSTER_NAME = 53
#: Kubernetes label values and DNS-1123/1035 labels.
MAX_LABEL = 63

DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes: ``Fraud_Detector`` -> ``fraud-detector``."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "x"


def dns1035(text: str, max_len: int) -> str:
    """A DNS-1035 label of at most ``max_len`` chars (starts with a letter, ends alnum)."""
    s = slug(text)
    if not s[0].isalpha():
        s = "r-" + s
    return s[:max_len].rstrip("-")


def is_dns1035(name: str, max_len: int = MAX_LABEL) -> bool:
    return len(name) <= max_len and bool(DNS1035_RE.match(name))


def is_dns1123_label(name: str) -> bool:
    return len(name) <= MAX_LABEL and bool(DNS1123_LABEL_RE.match(name))


def is_dns1123_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(DNS1123_SUBDOMAIN_RE.match(name))


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """Who a RayJob is: its Kubernetes name, its Ray submission id and the ledger's hash."""

    name: str
    job_id: str
    params_hash: str
    params: dict[str, Any]


def job_identity(params: dict[str, Any]) -> JobIdentity:
    """Name and job id from a backfill plan's ``params`` (``BackfillPlan.params``).

    ``<pipeline>-<start>-<end>-<hash8>`` (dates as YYYYMMDD): readable in ``kubectl get``, unique
    per parameter set through the hash, the pipeline part shortened to keep <= 47 chars.
    """
    h = params_hash(params)
    tail = f"-{params['start'].replace('-', '')}-{params['end'].replace('-', '')}-{h[:8]}"
    head = dns1035(str(params["pipeline"]), MAX_RAYJOB_NAME - len(tail))
    name = head + tail
    return JobIdentity(
        name=name, job_id=f"rayorch-{name}-{h[8:16]}", params_hash=h, params=dict(params)
    )


def queue_names(namespace: str) -> tuple[str, str]:
    """(ClusterQueue, LocalQueue) names of a rayorch namespace."""
    return f"rayorch-{slug(namespace)}", "rayorch"


def flavor_name(accelerator: str | None) -> str:
    """ResourceFlavor of an accelerator type (``A100`` -> ``gpu-a100``); None: the CPU flavor."""
    return "cpu" if accelerator is None else f"gpu-{slug(accelerator)}"
