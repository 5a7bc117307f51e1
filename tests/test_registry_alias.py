"""The alias compare-and-set in rayorch's own row, drift of an alias moved outside rayorch,
digests of model copies, and the coordinator's steps without Ray (a local ``Coordinator``):
real MLflow on SQLite through its public API, a real SQLite ledger. No server needed."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rayorch.lineage.tracking import directory_digest
from rayorch.registry import alias_rows
from rayorch.registry.alias_rows import AliasKey
from rayorch.registry.audit import AuditLog, Phase
from rayorch.registry.coordinator import Coordinator
from rayorch.registry.decisions import (
    PromotionOutcome,
    PromotionRequest,
    VerifyStatus,
    decide_promotion,
)
from rayorch.registry.errors import AliasRowMovedError
from rayorch.registry.mlflow_view import RegistryView, _legacy_digest
from rayorch.registry.queries import verify_deployed
from rayorch.registry.testing import RegistryBuilder
from rayorch.settings import Settings
from rayorch.spec import GatesSpec

Out = PromotionOutcome


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("alias")
    b = RegistryBuilder(str(root))
    versions = [b.logged("m", seed=i) for i in range(3)]  # v1..v3
    trained = b.trained("t", seed=7)
    return root, b, versions, trained


@pytest.fixture()
def pin_registry(monkeypatch):
    """MLflow's global registry URI for this test only, put back afterwards (left set, later
    tests' registrations would land in this test's database)."""
    import mlflow

    def pin(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # put back by monkeypatch afterwards
        mlflow.set_registry_uri(uri)

    yield pin
    mlflow.set_registry_uri(None)  # unset: follows the tracking URI again


def _public(b: RegistryBuilder, model: str, alias: str) -> str | None:
    try:
        return str(b.client.get_model_version_by_alias(model, alias).version)
    except Exception:
        return None


def test_alias_reads_what_the_public_api_reads(built):
    _, b, _, _ = built
    view = RegistryView(b.uri)
    assert view.current("m", "read") is None and _public(b, "m", "read") is None
    assert view.current("no-such-model", "read") is None
    b.client.set_registered_model_alias("m", "read", "2")
    assert view.current("m", "read") == "2" == _public(b, "m", "read")
    b.client.delete_registered_model_alias("m", "read")
    assert view.current("m", "read") is None


def test_alias_row_compare_and_set_and_settlement(tmp_path):
    """The row is claimed only from the revision read; a lost claim writes nothing; settling
    keeps a moved version and puts the previous one back otherwise, once."""
    log = AuditLog(f"sqlite:///{tmp_path / 'ledger.db'}")
    key = AliasKey("reg", "m", "a")

    def claim(seen, target, audit_id):
        with log.engine.begin() as c:
            return alias_rows.claim(c, key, seen, target, audit_id)

    def settle(audit_id, moved):
        with log.engine.begin() as c:
            alias_rows.settle(c, key, audit_id, moved)

    assert log.recorded(key) is None
    assert claim(None, "1", 10) and not claim(None, "2", 11)  # the insert is conditional too
    first = log.recorded(key)
    assert (first.version, first.revision, first.pending, first.audit_id) == ("1", 1, True, 10)
    settle(10, moved=True)
    kept = log.recorded(key)
    assert (kept.version, kept.revision, kept.pending) == ("1", 1, False)
    assert claim(kept, "2", 12)
    assert not claim(kept, "3", 13)  # stale revision: refused, row untouched
    assert log.recorded(key).version == "2"
    settle(99, moved=False)  # not the row's attempt: nothing changes
    assert log.recorded(key).pending
    settle(12, moved=False)
    back = log.recorded(key)
    assert (back.version, back.previous, back.revision, back.pending) == ("1", "1", 3, False)
    settle(12, moved=False)  # twice: nothing more
    assert log.recorded(key).revision == 3
    log.close()


def test_an_alias_moved_outside_rayorch_is_reported_never_overwritten(built, tmp_path):
    """After rayorch set the alias, someone moves it in MLflow: a promotion expecting rayorch's
    version is a CONFLICT naming the outside move, nothing is written; a caller who expects the
    version MLflow shows (has seen the move) promotes from it."""
    _, b, _, _ = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    g = GatesSpec()
    assert c.promote(PromotionRequest("m", "1", "drift", None), g).outcome is Out.APPLIED
    b.client.set_registered_model_alias("m", "drift", "3")  # the MLflow UI, a script
    stale = c.promote(PromotionRequest("m", "2", "drift", "1"), g)
    assert (stale.outcome, stale.decision.current) == (Out.CONFLICT, "3")
    assert any(
        "moved outside rayorch" in r and "last set it to 1" in r for r in stale.decision.reasons
    )
    assert _public(b, "m", "drift") == "3"  # not overwritten
    assert c.audit.recorded(AliasKey(b.uri, "m", "drift")).version == "1"
    seen = c.promote(PromotionRequest("m", "2", "drift", "3"), g)
    assert seen.outcome is Out.APPLIED and "promoting from it" in seen.decision.reasons[-1]
    assert _public(b, "m", "drift") == "2"
    row = c.audit.recorded(AliasKey(b.uri, "m", "drift"))
    assert (row.version, row.previous, row.pending) == ("2", "1", False)
    rows = c.audit.history(b.uri, "m", "drift")
    assert [(r.outcome, r.phase) for r in rows] == [
        (Out.APPLIED, Phase.FINISHED),
        (Out.CONFLICT, Phase.FINISHED),
        (Out.APPLIED, Phase.FINISHED),
    ]
    c.audit.close()


def test_a_claim_lost_between_read_and_write_writes_nothing(built, tmp_path):
    """Another promoter (one without the model's lock) claims the row between this one's read
    and its claim: no audit row, no alias move, a conflict error."""
    _, b, _, _ = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    g = GatesSpec()
    assert c.promote(PromotionRequest("m", "1", "lost", None), g).outcome is Out.APPLIED
    key = AliasKey(b.uri, "m", "lost")
    stale = c.audit.recorded(key)
    with c.audit.engine.begin() as conn:  # the other promoter's claim
        assert alias_rows.claim(conn, key, stale, "3", 999)
    c.audit.recorded = lambda k: stale  # this promoter read before that claim
    with pytest.raises(AliasRowMovedError):
        c.promote(PromotionRequest("m", "2", "lost", "1"), g)
    del c.audit.recorded
    assert _public(b, "m", "lost") == "1"
    assert len(c.audit.history(b.uri, "m", "lost")) == 1
    c.audit.close()


def test_a_pending_claim_of_a_dead_coordinator_is_settled_first(built, tmp_path):
    """A coordinator claimed the row and died before MLflow moved: the next promotion rolls
    that attempt back (the row reverts) before deciding, so no drift is mistaken."""
    _, b, _, _ = built
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    live = Coordinator(b.uri, db)
    assert live.promote(PromotionRequest("m", "1", "pend", None), GatesSpec()).outcome is (
        Out.APPLIED
    )
    key = AliasKey(b.uri, "m", "pend")
    dead = AuditLog(db)
    req = PromotionRequest("m", "2", "pend", "1")
    decision = decide_promotion(req, "1", live.view.facts("m", "2"), GatesSpec())
    orphan, _ = dead.begin(b.uri, req, decision, GatesSpec(), None, dead.recorded(key))
    dead.close()  # died here: STARTED, row pending at 2, MLflow still at 1
    assert live.audit.recorded(key).pending
    res = live.promote(PromotionRequest("m", "3", "pend", "1"), GatesSpec())
    assert res.outcome is Out.APPLIED and res.decision.reasons == ("pend: 1 -> 3",)
    first = live.audit.get(orphan)
    assert first.phase is Phase.ROLLED_BACK and "not moved" in first.reasons[-1]
    assert _public(b, "m", "pend") == "3" == live.audit.recorded(key).version
    live.audit.close()


def test_orphans_of_a_dead_coordinator_are_settled_before_the_next_move(built, tmp_path):
    """A STARTED row whose writer died (another coordinator on the same ledger) is settled
    inside the next promotion of that model, before the alias moves again."""
    _, b, _, _ = built
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    live = Coordinator(b.uri, db)  # started before the orphan exists: nothing to reconcile
    other = AuditLog(db)
    req = PromotionRequest("m", "1", "orphan", None)
    facts = live.view.facts("m", "1")
    decision = decide_promotion(req, None, facts, GatesSpec())
    orphan = other.record(b.uri, req, decision, GatesSpec(), facts.artifact_digest)
    b.client.set_registered_model_alias("m", "orphan", "1")  # it moved the alias, then died
    other.close()
    res = live.promote(PromotionRequest("m", "2", "orphan", "1"), GatesSpec())
    assert res.outcome is Out.APPLIED
    rows = live.audit.history(b.uri, "m", "orphan")
    assert rows[0].id == orphan and rows[0].phase is Phase.FINISHED
    assert "settled on recovery" in rows[0].reasons[-1]
    assert rows[1].from_version == "1" and rows[1].phase is Phase.FINISHED
    assert live.audit.started(b.uri) == []
    assert _public(b, "m", "orphan") == "2"
    live.audit.close()


def test_every_copy_of_a_model_digests_to_the_registered_digest(built, pin_registry):
    """Registration digests a download; a fresh download (any URI form, marker or not) and a
    copy taken straight from the artifact store give the same digest."""
    import mlflow.artifacts

    root, b, _, trained = built
    source = b.client.get_model_version("t", trained.version).source
    pin_registry(b.uri)  # models:/ URIs resolve through the registry URI
    for uri in (f"models:/t/{trained.version}", source, f"runs:/{trained.run_id}/model"):
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=b.uri
            )
            assert os.path.exists(os.path.join(local, "registered_model_meta")), uri
            assert directory_digest(local) == trained.artifact_digest, uri
    stored = [
        os.path.dirname(p)
        for p in glob.glob(os.path.join(str(root), "artifacts", "**", "MLmodel"), recursive=True)
        if trained.run_id in Path(p).read_text()
    ]
    assert stored
    for d in stored:  # no marker in the artifact store
        assert not os.path.exists(os.path.join(d, "registered_model_meta"))
        assert directory_digest(d) == trained.artifact_digest


def test_verify_matches_store_copies_and_versions_tagged_before_the_marker_rule(built, tmp_path):
    import mlflow.artifacts

    root, b, versions, trained = built
    settings = Settings(
        home=root, db_url=f"sqlite:///{tmp_path / 'l.db'}", mlflow_uri=b.uri, ray_address=None
    )
    b.client.set_registered_model_alias("t", "production", trained.version)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=trained.model_uri, dst_path=tmp, tracking_uri=b.uri
        )
        copy = str(tmp_path / "deployed")
        shutil.copytree(local, copy)
    os.remove(os.path.join(copy, "registered_model_meta"))  # e.g. synced from the store
    assert verify_deployed("t", "production", copy, settings=settings).status is (
        VerifyStatus.MATCH
    )
    # a version tagged with the earlier digest form (download marker included) still matches
    legacy = _legacy_digest(copy)
    assert legacy != trained.artifact_digest
    b.client.set_model_version_tag("m", "3", "rayorch.artifact_digest", legacy)
    b.client.set_registered_model_alias("m", "production", "3")
    assert verify_deployed("m", "production", copy, settings=settings).status is (
        VerifyStatus.MATCH
    )
    other = verify_deployed("m", "production", versions[0].artifact_digest, settings=settings)
    assert other.status is VerifyStatus.DRIFT and other.deployed_version == "1"


def test_the_rest_alias_path_takes_mlflow_credentials_and_only_http_uris():
    """Token or user/password and TLS settings as MLflow's client would send them; a local
    store, or a signer this path lacks (AWS SigV4, an auth plugin), keeps MlflowClient."""
    from mlflow.utils.rest_utils import MlflowHostCreds

    from rayorch.registry.mlflow_rest import AliasRest, alias_rest_for

    uri = "http://127.0.0.1:1"
    token = AliasRest(uri, MlflowHostCreds(uri, token="t0k"), {"User-Agent": "x"}, 5.0)
    assert token.session.headers["Authorization"] == "Bearer t0k"
    assert token.session.headers["User-Agent"] == "x"
    assert token.url == "http://127.0.0.1:1/api/2.0/mlflow/registered-models/alias"
    basic = AliasRest(
        uri, MlflowHostCreds(uri, username="u", password="p", server_cert_path="/ca.pem"), {}, 5.0
    )
    assert basic.session.auth == ("u", "p") and basic.session.verify == "/ca.pem"
    assert "Authorization" not in basic.session.headers
    insecure = AliasRest(uri, MlflowHostCreds(uri, ignore_tls_verification=True), {}, 5.0)
    assert insecure.session.verify is False and not insecure.session.trust_env
    assert alias_rest_for("sqlite:////tmp/x.db") is None
    assert alias_rest_for("postgresql+psycopg://u@h/db") is None
    assert alias_rest_for(uri) is not None
