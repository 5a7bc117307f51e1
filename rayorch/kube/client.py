"""Submit, read and delete rayorch's objects through the ``kubernetes`` client.

The only module that talks to an API server (``CustomObjectsApi``). Objects are validated
offline before they are sent; every create uses ``fieldValidation=Strict`` and ``--dry-run``
adds ``dryRun=All`` (the server runs admission - Kueue's and KubeRay's webhooks included -
and persists nothing). Names are deterministic, so creating an object that exists is not an
error: the backfill was already submitted and the answer says so (``EXISTS``).

Tested against a local HTTP stand-in for request shape and error handling only; no real API
server runs on rayorch's CI machines (docs/kubernetes.md).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayorch.errors import ConfigError, InfrastructureError
from rayorch.kube.manifests import Document
from rayorch.kube.schema import CrdSchema, find_crd

WORKLOAD = ("kueue.x-k8s.io", "v1beta2", "workloads")
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
REQUEST_TIMEOUT_S = 30


class KubeApiError(InfrastructureError):
    """The API server refused a request or could not be reached. ``status`` is the HTTP code
    (0: unreachable), ``reason`` the Status reason, ``object`` what was being sent."""


class SubmitOutcome(str, enum.Enum):
    CREATED = "CREATED"
    EXISTS = "EXISTS"  # same deterministic name: already submitted, left as it is
    DRY_RUN_OK = "DRY_RUN_OK"  # the server accepted it with dryRun=All; nothing persisted


class DeleteOutcome(str, enum.Enum):
    DELETED = "DELETED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    object: str
    outcome: SubmitOutcome
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"object": self.object, "outcome": self.outcome.value, "message": self.message}


def api_client(context: str | None = None, host: str | None = None) -> Any:
    """An ``ApiClient`` from the kubeconfig (or in-cluster config), or for a bare ``host``."""
    from kubernetes import client, config

    if host is not None:
        conf = client.Configuration()
        conf.host = host
        conf.retries = 0
        return client.ApiClient(conf)
    try:
        config.load_kube_config(context=context)
    except Exception as kube_err:
        try:
            config.load_incluster_config()
        except Exception:
            raise KubeApiError(
                f"no Kubernetes credentials: {kube_err}. Set KUBECONFIG or pass --context",
                status=0,
            ) from None
    return client.ApiClient()


def _api_error(e: Exception, what: str) -> KubeApiError:
    status = getattr(e, "status", 0) or 0
    body = getattr(e, "body", None)
    reason, message = getattr(e, "reason", None), str(e)
    if body:
        try:
            doc = json.loads(body)
            reason, message = doc.get("reason", reason), doc.get("message", message)
        except (ValueError, TypeError):
            message = str(body)[:500]
    if not status:
        message = f"cannot reach the API server: {e}. Check the kubeconfig (--context)"
    return KubeApiError(
        f"{what}: HTTP {status} {reason}: {message}", status=status, reason=reason, object=what
    )


class KubeClient:
    """Narrow interface over ``CustomObjectsApi`` for rayorch's kinds (plurals from the CRDs)."""

    def __init__(self, api: Any, crd_dir: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.crd_dir = crd_dir

    def _crd(self, obj: dict[str, Any]) -> CrdSchema:
        crd = find_crd(obj, self.crd_dir)
        if crd is None:
            raise ConfigError(
                f"no CRD for {obj.get('apiVersion')} {obj.get('kind')}; rayorch submits "
                "RayJob, RayCluster and Kueue objects only",
                field="kind",
            )
        return crd

    def create(self, doc: Document, *, dry_run: bool) -> SubmitResult:
        from kubernetes.client.exceptions import ApiException

        crd = self._crd(doc.obj)
        kw: dict[str, Any] = {"field_validation": "Strict", "_request_timeout": REQUEST_TIMEOUT_S}
        if dry_run:
            kw["dry_run"] = "All"
        try:
            if crd.namespaced:
                ns = doc.obj["metadata"]["namespace"]
                self.custom.create_namespaced_custom_object(
                    crd.group, crd.version, ns, crd.plural, doc.obj, **kw
                )
            else:
                self.custom.create_cluster_custom_object(
                    crd.group, crd.version, crd.plural, doc.obj, **kw
                )
        except ApiException as e:
            if e.status == 409:
                return SubmitResult(doc.ref, SubmitOutcome.EXISTS, "already exists; left as is")
            raise _api_error(e, doc.ref) from None
        except Exception as e:  # urllib3 connection errors
            raise _api_error(e, doc.ref) from None
        return SubmitResult(doc.ref, SubmitOutcome.DRY_RUN_OK if dry_run else SubmitOutcome.CREATED)

    def submit(self, docs: Sequence[Document], *, dry_run: bool = False) -> list[SubmitResult]:
        """Create in order: cluster-scoped objects first, then namespaced ones."""
        ordered = sorted(docs, key=lambda d: 0 if not self._crd(d.obj).namespaced else 1)
        return [self.create(d, dry_run=dry_run) for d in ordered]

    def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(("ray.io", "v1", "rayjobs"), namespace, name)

    def _get(self, gvp: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(
                *gvp[:2], namespace, gvp[2], name, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise _api_error(e, f"{gvp[2]} {namespace}/{name}") from None
        except Exception as e:
            raise _api_error(e, f"{gvp[2]} {namespace}/{name}") from None

    def workload_for(self, namespace: str, uid: str) -> dict[str, Any] | None:
        """The Kueue Workload of the job with ``uid`` (None: not created yet, or no Kueue)."""
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.custom.list_namespaced_custom_object(
                *WORKLOAD[:2],
                namespace,
                WORKLOAD[2],
                label_selector=f"{JOB_UID_LABEL}={uid}",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as e:
            if e.status == 404:  # Kueue not installed
                return None
            raise _api_error(e, f"workloads of {namespace}/{uid}") from None
        except Exception as e:
            raise _api_error(e, f"workloads of {namespace}/{uid}") from None
        items = found.get("items") or []
        return items[0] if items else None

    def delete_rayjob(self, namespace: str, name: str) -> DeleteOutcome:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                "ray.io",
                "v1",
                namespace,
                "rayjobs",
                name,
                propagation_policy="Background",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as e:
            if e.status == 404:
                return DeleteOutcome.NOT_FOUND
            raise _api_error(e, f"RayJob {namespace}/{name}") from None
        except Exception as e:
            raise _api_error(e, f"RayJob {namespace}/{name}") from None
        return DeleteOutcome.DELETED
