"""The two calls a promotion makes, over a tracking server's public REST API, on one session.

Through ``MlflowClient`` every call to a tracking server pays, in the calling process, for
MLflow's request-header plugins (a failed import of Databricks modules per call), for
``requests`` re-reading the proxy environment, and ``set_registered_model_alias`` first fetches
the whole registered model (a prompt check) before it sets the alias: measured here, ~17 ms of
client CPU per call and three round trips for an alias move. A promotion needs two calls, both
documented REST endpoints (``/api/2.0/mlflow/registered-models/alias``: GET to read an alias,
POST to set it), so this module makes exactly those, on one kept-alive ``requests.Session``
per view, with the headers, credentials and TLS settings MLflow's own client would use,
resolved once through MLflow's public functions. Everything else (facts, digests, downloads)
stays on ``MlflowClient``.

Servers whose authentication needs a per-request signer (``MLFLOW_TRACKING_AUTH`` plugins,
AWS SigV4) or the Databricks SDK are not handled here: :func:`alias_rest_for` returns None and
the caller uses ``MlflowClient``.
"""

from __future__ import annotations

import time
from typing import Any

ALIAS_ENDPOINT = "/api/2.0/mlflow/registered-models/alias"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # MLflow's client retries these too
_ATTEMPTS = 4
_BACKOFF_S = 0.1


class RestCallError(Exception):
    """A refused or failed REST call; ``error_code`` as MLflow's ``MlflowException`` has it."""

    def __init__(self, message: str, error_code: str | None, status: int | None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class AliasRest:
    """``get``/``set`` of one model's alias on a tracking server, one round trip each."""

    def __init__(self, uri: str, host_creds: Any, headers: dict[str, str], timeout_s: float):
        import requests

        self.url = uri.rstrip("/") + ALIAS_ENDPOINT
        self.timeout_s = timeout_s
        s = requests.Session()
        # The proxy settings are taken once, not re-read from the environment on every call.
        s.proxies.update(requests.utils.get_environ_proxies(self.url))
        s.trust_env = False
        s.headers.update(headers)
        if host_creds.username and host_creds.password:
            s.auth = (host_creds.username, host_creds.password)
        elif host_creds.token:
            s.headers["Authorization"] = f"Bearer {host_creds.token}"
        if host_creds.server_cert_path:
            s.verify = host_creds.server_cert_path
        elif host_creds.ignore_tls_verification:
            s.verify = False
        if host_creds.client_cert_path:
            s.cert = host_creds.client_cert_path
        self.session = s

    def get(self, model: str, alias: str) -> str:
        """The version ``alias`` names; :class:`RestCallError` (RESOURCE_DOES_NOT_EXIST) if unset."""
        body = self._call("GET", params={"name": model, "alias": alias})
        return str(body["model_version"]["version"])

    def set(self, model: str, alias: str, version: str) -> None:
        self._call("POST", json={"name": model, "alias": alias, "version": version})

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """One request; transient failures (connection, 429/5xx) are retried with backoff.
        Both calls are idempotent, so a retry after a lost response is safe."""
        import requests

        for attempt in range(_ATTEMPTS):
            last = attempt == _ATTEMPTS - 1
            try:
                r = self.session.request(method, self.url, timeout=self.timeout_s, **kwargs)
            except requests.ConnectionError as e:
                if last:
                    raise RestCallError(f"{method} {self.url}: {e}", None, None) from e
            else:
                if r.status_code == 200:
                    return dict(r.json())
                if r.status_code not in _RETRY_STATUS or last:
                    raise _refused(method, self.url, r)
            time.sleep(_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")


def _refused(method: str, url: str, r: Any) -> RestCallError:
    try:
        body = r.json()
    except ValueError:
        body = {}
    code = body.get("error_code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    return RestCallError(
        f"{method} {url}: HTTP {r.status_code} {code or ''} {message or r.text[:300]}".strip(),
        code,
        r.status_code,
    )


def alias_rest_for(uri: str) -> AliasRest | None:
    """The REST path for a tracking server at ``uri`` (``http://``/``https://``), or None
    where ``MlflowClient`` must be used (a local store, or authentication this path lacks)."""
    if not uri.startswith(("http://", "https://")):
        return None
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_TIMEOUT
    from mlflow.tracking.request_header.registry import resolve_request_headers
    from mlflow.utils.credentials import get_default_host_creds

    creds = get_default_host_creds(uri)
    if creds.aws_sigv4 or creds.auth:
        return None
    headers = {str(k): str(v) for k, v in resolve_request_headers().items()}
    return AliasRest(uri, creds, headers, float(MLFLOW_HTTP_REQUEST_TIMEOUT.get()))
