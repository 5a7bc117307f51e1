"""submit/status/delete against a local HTTP stand-in of the Kubernetes API (request shape and
error handling only - no real API server, KubeRay or Kueue runs here) and the status mapping."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from rayorch.cli.app import app
from rayorch.kube.manifests import dump_documents, load_documents
from rayorch.kube.status import KubeState, kube_state

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cluster" / "examples" / "fraud"
JOB = load_documents(EXAMPLE / "rayjob.yaml")[0].obj
NAME, NS = JOB["metadata"]["name"], JOB["metadata"]["namespace"]


@dataclass
class StandIn:
    """Records requests; answers like an API server would for the paths rayorch uses."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    workloads: list[dict[str, Any]] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)  # object names answered 422
    url: str = ""


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@pytest.fixture()
def api() -> Iterator[StandIn]:
    state = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            u = urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            state.requests.append(
                {"method": self.command, "path": u.path, "query": parse_qs(u.query), "body": body}
            )
            return u.path, parse_qs(u.query), body

        def do_POST(self) -> None:
            path, query, body = self._record()
            name = body["metadata"]["name"]
            if name in state.invalid:
                return self._reply(422, _status(422, "Invalid", f"admission webhook denied {name}"))
            key = f"{path}/{name}"
            if key in state.objects:
                return self._reply(409, _status(409, "AlreadyExists", f"{name} already exists"))
            if query.get("dryRun") != ["All"]:
                state.objects[key] = {**body, "metadata": {**body["metadata"], "uid": "u-1"}}
            return self._reply(201, body)

        def do_GET(self) -> None:
            path, query, _ = self._record()
            if path.endswith("/workloads"):
                sel = query.get("labelSelector", [""])[0]
                items = [w for w in state.workloads if sel == "kueue.x-k8s.io/job-uid=u-1"]
                return self._reply(200, {"kind": "WorkloadList", "items": items})
            if path in state.objects:
                return self._reply(200, state.objects[path])
            return self._reply(404, _status(404, "NotFound", "not found"))

        def do_DELETE(self) -> None:
            path, _, _ = self._record()
            if state.objects.pop(path, None) is None:
                return self._reply(404, _status(404, "NotFound", "not found"))
            return self._reply(200, _status(200, "Success", "deleted"))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def kube(*args: str) -> Any:
    return CliRunner().invoke(app, ["kube", *args], catch_exceptions=False)


FILES = [str(EXAMPLE / "kueue.yaml"), str(EXAMPLE / "rayjob.yaml")]
RAYJOBS = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"


def test_dry_run_sends_strict_server_side_dry_runs_in_order(api: StandIn) -> None:
    r = kube("submit", *FILES, "--dry-run", "--server", api.url, "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert {x["outcome"] for x in results} == {"DRY_RUN_OK"}
    posts = [q for q in api.requests if q["method"] == "POST"]
    assert len(posts) == len(results) == 10
    assert all(q["query"]["dryRun"] == ["All"] for q in posts)
    assert all(q["query"]["fieldValidation"] == ["Strict"] for q in posts)
    paths = [q["path"] for q in posts]
    # cluster-scoped Kueue objects first, the namespaced LocalQueue and RayJob last
    assert paths[0] == "/apis/kueue.x-k8s.io/v1beta2/resourceflavors"
    assert "/apis/kueue.x-k8s.io/v1beta2/clusterqueues" in paths
    assert paths[-2:] == [f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{NS}/localqueues", RAYJOBS]
    assert posts[-1]["body"] == JOB
    assert api.objects == {}  # a dry run persists nothing


def test_submit_twice_is_idempotent_then_status_and_delete(api: StandIn) -> None:
    first = json.loads(kube("submit", *FILES, "--server", api.url, "--json").stdout)
    assert {x["outcome"] for x in first["results"]} == {"CREATED"}
    again = json.loads(kube("submit", FILES[1], "--server", api.url, "--json").stdout)
    assert [x["outcome"] for x in again["results"]] == ["EXISTS"]

    # Kueue evicted it (preemption) and suspended the RayJob
    api.objects[f"{RAYJOBS}/{NAME}"]["spec"]["suspend"] = True
    api.objects[f"{RAYJOBS}/{NAME}"]["status"] = {"jobDeploymentStatus": "Suspended"}
    api.workloads.append(
        {
            "metadata": {"name": "rayjob-x-1"},
            "status": {
                "conditions": [
                    {
                        "type": "Evicted",
                        "status": "True",
                        "reason": "Preempted",
                        "message": "preempted by production work",
                    }
                ]
            },
        }
    )
    r = kube("status", NAME, "-n", NS, "--server", api.url, "--no-ledger", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["state"] == "PREEMPTED" and doc["workload"] == "rayjob-x-1"
    assert "preempted by production work" in doc["reason"]
    wl = [q for q in api.requests if q["path"].endswith("/workloads")][-1]
    assert wl["query"]["labelSelector"] == ["kueue.x-k8s.io/job-uid=u-1"]

    assert (
        json.loads(kube("delete", NAME, "-n", NS, "--server", api.url, "--json").stdout)["outcome"]
        == "DELETED"
    )
    assert (
        json.loads(kube("delete", NAME, "-n", NS, "--server", api.url, "--json").stdout)["outcome"]
        == "NOT_FOUND"
    )
    gone = kube("status", NAME, "-n", NS, "--server", api.url, "--no-ledger", "--json")
    assert gone.exit_code == 1 and json.loads(gone.stdout)["state"] == "NOT_FOUND"


def test_status_reads_the_backfill_state_from_the_ledger(
    api: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayorch.ledger.store import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("RAYORCH_DB_URL", url)
    params = json.loads(JOB["metadata"]["annotations"]["rayorch.io/backfill-params"])
    led = Ledger(url)
    try:
        row, _ = led.start_backfill("fraud", params, "fp", [])
    finally:
        led.close()
    kube("submit", FILES[1], "--server", api.url)
    doc = json.loads(kube("status", NAME, "-n", NS, "--server", api.url, "--json").stdout)
    assert doc["state"] == "ADMITTED"  # not queued by Kueue here (no Workload, not suspended)
    assert doc["ledger"]["backfill_id"] == row.id
    assert doc["ledger"]["state"] == "RUNNING"


def test_server_errors_are_reported_with_their_reason(api: StandIn) -> None:
    api.invalid.add(NAME)
    r = kube("submit", FILES[1], "--server", api.url, "--json")
    assert r.exit_code == 1
    err = json.loads(r.stdout)
    assert err["error"] == "KubeApiError" and err["status"] == 422
    assert err["reason"] == "Invalid" and "admission webhook denied" in err["message"]


def test_an_unreachable_server_is_an_infrastructure_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    r = kube("delete", NAME, "-n", NS, "--server", f"http://127.0.0.1:{port}", "--json")
    assert r.exit_code == 1
    err = json.loads(r.stdout)
    assert err["status"] == 0 and "cannot reach the API server" in err["message"]


def test_invalid_manifests_are_never_sent(api: StandIn, tmp_path: Path) -> None:
    bad = json.loads(json.dumps(JOB))
    bad["spec"]["shutdownAfterJobFinishes"] = False
    path = tmp_path / "rayjob.yaml"
    path.write_text(dump_documents([bad]))
    r = kube("submit", str(path), "--server", api.url, "--json")
    assert r.exit_code == 2
    assert "shutdownAfterJobFinishes" in json.loads(r.stdout)["message"]
    assert api.requests == []


def _cond(*types: str, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "wl"},
        "status": {
            "conditions": [{"type": t, "status": "True", **extra} for t in types],
            "admission": {"clusterQueue": "rayorch-risk"} if "Admitted" in types else None,
        },
    }


@pytest.mark.parametrize(
    ("spec", "status", "workload", "want"),
    [
        ({"suspend": True}, {}, None, KubeState.QUEUED),
        ({"suspend": True}, {}, {"metadata": {"name": "wl"}, "status": {}}, KubeState.QUEUED),
        (
            {},
            {"jobDeploymentStatus": "Initializing"},
            _cond("QuotaReserved", "Admitted"),
            KubeState.ADMITTED,
        ),
        (
            {},
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
            _cond("Admitted"),
            KubeState.RUNNING,
        ),
        (
            {"suspend": True},
            {"jobDeploymentStatus": "Suspended"},
            _cond("Evicted", reason="Preempted"),
            KubeState.PREEMPTED,
        ),
        ({"suspend": True}, {"jobDeploymentStatus": "Suspended"}, None, KubeState.SUSPENDED),
        (
            {},
            {"jobDeploymentStatus": "Retrying", "failed": 1},
            _cond("Admitted"),
            KubeState.RETRYING,
        ),
        (
            {},
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
            _cond("Finished"),
            KubeState.SUCCEEDED,
        ),
        (
            {},
            {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "exit 1"},
            None,
            KubeState.FAILED,
        ),
    ],
)
def test_status_mapping(
    spec: dict[str, Any], status: dict[str, Any], workload: dict[str, Any] | None, want: KubeState
) -> None:
    st = kube_state({"metadata": {"name": "j"}, "spec": spec, "status": status}, workload)
    assert st.state is want
    assert st.reason
    assert st.state.is_terminal == (want in (KubeState.SUCCEEDED, KubeState.FAILED))
