"""The alias compare-and-set in MLflow's database, digests of model copies, and the coordinator's
steps without Ray (a local ``Coordinator``): real MLflow on SQLite, a real SQLite ledger."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rayorch.lineage.tracking import directory_digest
from rayorch.registry.alias_sql import SqlAliases
from rayorch.registry.audit import AuditLog, Phase
from rayorch.registry.coordinator import Coordinator
from rayorch.registry.decisions import (
    PromotionOutcome,
    PromotionRequest,
    VerifyStatus,
    decide_promotion,
)
from rayorch.registry.errors import PromotionInterruptedError
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


def _pin_registry(monkeypatch, uri: str) -> None:
    """MLflow's global registry URI for this test only (``set_registry_uri`` would leak it
    into later tests, whose registrations would then land in this test's database)."""
    monkeypatch.setattr("mlflow.tracking._model_registry.utils._registry_uri", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)


def _public(b: RegistryBuilder, model: str, alias: str) -> str | None:
    try:
        return str(b.client.get_model_version_by_alias(model, alias).version)
    except Exception:
        return None


def test_sql_alias_reads_what_the_public_api_reads(built):
    _, b, _, _ = built
    view = RegistryView(b.uri)
    assert isinstance(view.sql, SqlAliases)  # the fast path is on for MLflow's SQLite store
    assert view.current("m", "read") is None and _public(b, "m", "read") is None
    assert view.current("no-such-model", "read") is None
    b.client.set_registered_model_alias("m", "read", "2")
    assert view.current("m", "read") == "2" == _public(b, "m", "read")
    b.client.delete_registered_model_alias("m", "read")
    assert view.current("m", "read") is None


def test_sql_compare_and_set_is_atomic_against_outside_writers(built):
    _, b, _, _ = built
    view = RegistryView(b.uri)
    first = view.move_alias("m", "cas", None, "1")
    assert first.moved and _public(b, "m", "cas") == "1"  # MLflow's API sees the row
    assert b.client.get_registered_model("m").aliases["cas"] == 1
    again = view.move_alias("m", "cas", None, "2")  # expected unset, but it is set
    assert (again.moved, again.actual) == (False, "1") and _public(b, "m", "cas") == "1"
    assert view.move_alias("m", "cas", "1", "2").moved and _public(b, "m", "cas") == "2"
    b.client.set_registered_model_alias("m", "cas", "3")  # someone outside rayorch
    stale = view.move_alias("m", "cas", "2", "1")
    assert (stale.moved, stale.actual) == (False, "3") and "outside rayorch" in stale.reason
    assert _public(b, "m", "cas") == "3"  # not overwritten
    gone = view.move_alias("m", "cas", "3", "99")  # no such version: never aliased
    assert (gone.moved, gone.actual) == (False, "3") and "deleted" in gone.reason


def test_coordinator_refuses_a_move_when_the_alias_moved_meanwhile(built, tmp_path):
    """Between the coordinator's read and its write, an outside writer moves the alias: the
    write is refused, nothing is overwritten, the audit row is ROLLED_BACK."""
    _, b, _, _ = built
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'ledger.db'}")
    g = GatesSpec()
    assert c.promote(PromotionRequest("m", "1", "race", None), g).outcome is Out.APPLIED
    real = c.view.move_alias

    def outside_writer_first(model, alias, expected, version):
        b.client.set_registered_model_alias(model, alias, "3")
        return real(model, alias, expected, version)

    c.view.move_alias = outside_writer_first
    with pytest.raises(PromotionInterruptedError) as e:
        c.promote(PromotionRequest("m", "2", "race", "1"), g)
    assert e.value.fields["actual"] == "3"
    c.view.move_alias = real
    assert _public(b, "m", "race") == "3"
    rows = c.audit.history(b.uri, "m", "race")
    assert [(r.outcome, r.phase) for r in rows] == [
        (Out.APPLIED, Phase.FINISHED),
        (Out.APPLIED, Phase.ROLLED_BACK),
    ]
    assert "moved outside rayorch to 3" in rows[-1].reasons[-1]
    retry = c.promote(PromotionRequest("m", "2", "race", "1"), g)
    assert (retry.outcome, retry.decision.current) == (Out.CONFLICT, "3")
    c.audit.close()


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


def test_every_copy_of_a_model_digests_to_the_registered_digest(built, monkeypatch):
    """Registration digests a download; a fresh download (any URI form, marker or not) and a
    copy taken straight from the artifact store give the same digest."""
    import mlflow.artifacts

    root, b, _, trained = built
    source = b.client.get_model_version("t", trained.version).source
    _pin_registry(monkeypatch, b.uri)  # models:/ URIs resolve through the registry URI
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


def test_coordinator_puts_a_local_mlflow_sqlite_in_wal_mode_unless_told_not_to(
    tmp_path, monkeypatch
):
    import sqlite3

    b = RegistryBuilder(str(tmp_path / "reg"))
    b.logged("w", seed=1)
    db = str(tmp_path / "reg" / "mlflow.db")

    def mode() -> str:
        with sqlite3.connect(db) as conn:
            return conn.execute("PRAGMA journal_mode").fetchone()[0]

    assert mode() == "delete"  # MLflow's default
    monkeypatch.setenv("RAYORCH_MLFLOW_SQLITE_WAL", "0")
    Coordinator(b.uri, f"sqlite:///{tmp_path / 'a.db'}").audit.close()
    assert mode() == "delete"
    monkeypatch.delenv("RAYORCH_MLFLOW_SQLITE_WAL")
    c = Coordinator(b.uri, f"sqlite:///{tmp_path / 'b.db'}")
    assert mode() == "wal"
    # MLflow's own API keeps working on it, and sees the coordinator's moves
    assert c.promote(PromotionRequest("w", "1", "prod", None), GatesSpec()).outcome is (Out.APPLIED)
    assert _public(b, "w", "prod") == "1"
    b.client.set_registered_model_alias("w", "other", "1")
    assert c.view.current("w", "other") == "1"
    c.audit.close()
