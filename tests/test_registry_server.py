"""Promotions through a real ``mlflow server`` (``http://…``): the compare-and-set holds.

The server runs on 127.0.0.1 with a PostgreSQL backend store (its own database), the ledger in
another PostgreSQL database; separate processes each run their own ``Coordinator`` (no Ray, no
shared actor), so only the per-model lock and rayorch's alias row keep them apart.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import AuditLog, Phase
from rayorch.registry.coordinator import Coordinator
from rayorch.registry.decisions import PromotionOutcome, PromotionRequest, VerifyStatus
from rayorch.registry.queries import history, verify_deployed
from rayorch.registry.testing import (
    RegistryBuilder,
    fresh_database,
    start_mlflow_server,
    stop_process_group,
)
from rayorch.settings import Settings
from rayorch.spec import GatesSpec

pytestmark = pytest.mark.e2e  # the end-to-end set: runs after the core suite

REPO = Path(__file__).resolve().parents[1]
MODEL = "server-model"
CLIENTS = 8
Out = PromotionOutcome


def _pg_admin_url() -> str:
    url = os.environ.get("RAYORCH_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but RAYORCH_TEST_PG_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("RAYORCH_TEST_PG_URL not set: the tracking-server tests need PostgreSQL")
    return url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    admin = _pg_admin_url()
    root = tmp_path_factory.mktemp("mlflow-server")
    backend = fresh_database(admin, "rayorch_mlflow_test")
    ledger = fresh_database(admin, "rayorch_registry_server_test")
    proc, url = start_mlflow_server(backend, root / "artifacts", root / "server.log")
    try:
        b = RegistryBuilder(str(root), uri=url)
        versions = [b.logged(MODEL, seed=i).version for i in range(CLIENTS + 2)]
        settings = Settings(home=root, db_url=ledger, mlflow_uri=url, ray_address=None)
        yield settings, b, versions
    finally:
        stop_process_group(proc)


WORKER = r"""
import json, sys, time
from rayorch.registry.coordinator import Coordinator
from rayorch.registry.decisions import PromotionRequest
from rayorch.spec import GatesSpec
c = Coordinator(sys.argv[1], sys.argv[2])
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    while time.time() < job["at"]:
        time.sleep(0.0005)
    r = c.promote(PromotionRequest(job["model"], job["version"], "production", job["expected"],
                                   who={"pid": __import__("os").getpid()}), GatesSpec())
    print(json.dumps(r.to_dict()), flush=True)
"""


def test_eight_processes_through_the_server_one_applies(server, tmp_path):
    """8 processes, each its own coordinator, fire the same CAS at once, 3 rounds: exactly one
    APPLIED and 7 CONFLICT each round; MLflow's alias, the audit history, rayorch's alias row
    and ``verify`` agree afterwards."""
    settings, b, versions = server
    script = tmp_path / "promoter.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, str(script), settings.mlflow_uri, settings.db_url],
                         env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        for _ in range(CLIENTS)
    ]  # fmt: skip
    current = None
    try:
        for p in procs:
            assert p.stdout.readline(), p.stderr.read()[-3000:]
        for rnd in range(3):
            targets = [v for v in versions if v != current][:CLIENTS]
            at = time.time() + 0.5
            for p, t in zip(procs, targets, strict=True):
                job = {"model": MODEL, "version": t, "expected": current, "at": at}
                p.stdin.write(json.dumps(job) + "\n")
                p.stdin.flush()
            results = [json.loads(p.stdout.readline()) for p in procs]
            applied = [r for r in results if r["outcome"] == "APPLIED"]
            assert len(applied) == 1, (rnd, results)
            winner = applied[0]["target"]
            losers = [r for r in results if r is not applied[0]]
            assert all(r["outcome"] == "CONFLICT" and r["current"] == winner for r in losers)
            assert str(b.client.get_model_version_by_alias(MODEL, "production").version) == winner
            current = winner
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    rows = history(MODEL, "production", settings=settings)
    assert [r.outcome for r in rows].count(Out.APPLIED) == 3
    assert [r.outcome for r in rows].count(Out.CONFLICT) == 3 * (CLIENTS - 1)
    assert all(r.phase is Phase.FINISHED for r in rows)
    moved = [r for r in rows if r.moved_alias]
    assert moved[-1].to_version == current
    for prev, nxt in itertools.pairwise(moved):
        assert nxt.from_version == prev.to_version  # no lost update
    log = AuditLog(settings.db_url)
    row = log.recorded(AliasKey(settings.mlflow_uri, MODEL, "production"))
    log.close()
    assert (row.version, row.revision, row.pending) == (current, 3, False)
    digest = b.client.get_model_version(MODEL, current).tags["rayorch.artifact_digest"]
    v = verify_deployed(MODEL, "production", digest, settings=settings)
    assert (v.status, v.alias_version) == (VerifyStatus.MATCH, current)


def test_an_outside_move_on_the_server_is_a_conflict_not_overwritten(server):
    settings, b, versions = server
    c = Coordinator(settings.mlflow_uri, settings.db_url)
    try:
        g = GatesSpec()
        first = c.promote(PromotionRequest(MODEL, versions[0], "canary", None), g)
        assert first.outcome is Out.APPLIED
        b.client.set_registered_model_alias(MODEL, "canary", versions[1])  # outside rayorch
        stale = c.promote(PromotionRequest(MODEL, versions[2], "canary", versions[0]), g)
        assert stale.outcome is Out.CONFLICT
        assert any("moved outside rayorch" in r for r in stale.decision.reasons)
        alias = b.client.get_model_version_by_alias(MODEL, "canary").version
        assert str(alias) == versions[1]  # not overwritten
    finally:
        c.audit.close()


def test_the_alias_read_and_write_are_one_rest_request_each(server):
    """Against a server the view reads and sets an alias with one request each (MLflow's
    public REST endpoint, one kept-alive session); unset aliases and unknown models read as
    None; a refused write is an infrastructure error naming the server."""
    from rayorch.errors import InfrastructureError
    from rayorch.registry.mlflow_view import RegistryView

    settings, b, versions = server
    view = RegistryView(settings.mlflow_uri)
    assert view.rest is not None
    sent: list[str] = []
    view.rest.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request.method))
    try:
        assert view.current(MODEL, "never-set") is None
        assert view.current("no-such-model", "production") is None
        view.set_alias(MODEL, "rest-check", versions[1])
        assert view.current(MODEL, "rest-check") == versions[1]
        assert sent == ["GET", "GET", "POST", "GET"]
        assert str(b.client.get_model_version_by_alias(MODEL, "rest-check").version) == versions[1]
        with pytest.raises(InfrastructureError, match=settings.mlflow_uri):
            view.set_alias(MODEL, "rest-check", "999")
        assert view.current(MODEL, "rest-check") == versions[1]
    finally:
        view.close()
