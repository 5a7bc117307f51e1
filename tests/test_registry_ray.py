"""The promotion coordinator on a real local Ray, MLflow on SQLite and a SQLite ledger.

One registry (and so one detached coordinator actor) per module, killed at teardown; each test
uses its own alias or model so tests stay independent.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayorch.registry import coordinator
from rayorch.registry.audit import Phase
from rayorch.registry.decisions import PromotionOutcome, PromotionRequest, VerifyStatus
from rayorch.registry.queries import history, verify_deployed
from rayorch.registry.testing import GAP, RegistryBuilder
from rayorch.settings import Settings
from rayorch.spec import GatesSpec, MetricGate

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
MODEL = "fraud-detector"  # the model configs/fraud.yaml registers
RACE = "race-model"
Out = PromotionOutcome


@pytest.fixture(scope="module")
def reg(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    b = RegistryBuilder(str(root))
    versions = {
        "trained": b.trained(MODEL, seed=1),  # v1, exactly as training registers it
        "good": b.logged(MODEL, seed=2),  # v2
        "gap": b.logged(MODEL, GAP, seed=3),  # v3: train 0.3 vs validation 2.1
        "nodata": b.logged(MODEL, with_dataset=False, seed=4),  # v4: no validated input
        "race": [b.logged(RACE, seed=10 + i) for i in range(6)],
    }
    assert [versions[k].version for k in ("trained", "good", "gap", "nodata")] == [
        "1", "2", "3", "4",
    ]  # fmt: skip
    settings = Settings(
        home=Path(root), db_url=f"sqlite:///{root / 'ledger.db'}", mlflow_uri=b.uri,
        ray_address=None,
    )  # fmt: skip
    yield settings, b, versions
    coordinator.shutdown_coordinator(settings)


@pytest.fixture()
def cli_env(reg, monkeypatch):
    settings, _, _ = reg
    monkeypatch.setenv("RAYORCH_HOME", str(settings.home))
    monkeypatch.setenv("RAYORCH_DB_URL", settings.db_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    return settings


def _alias(b: RegistryBuilder, model: str, alias: str) -> str | None:
    aliases = b.client.get_registered_model(model).aliases
    return None if alias not in aliases else str(aliases[alias])


def _agree(settings: Settings, b: RegistryBuilder, model: str, alias: str) -> list:
    """MLflow's alias is the target of the last applied-and-finished audit row; none STARTED."""
    rows = history(model, alias, settings=settings)
    moved = [r for r in rows if r.moved_alias]
    assert all(r.phase is not Phase.STARTED for r in rows)
    assert _alias(b, model, alias) == (moved[-1].to_version if moved else None)
    for prev, nxt in itertools.pairwise(moved):
        assert nxt.from_version == prev.to_version  # no lost update between moves
    return rows


def test_outcomes_and_gates_through_the_actor(reg):
    settings, b, _ = reg
    gates = GatesSpec(metrics=[MetricGate(metric="val_auc", min=0.8)], max_loss_ratio=2.0)

    def p(version, expected):
        return coordinator.promote(MODEL, version, "staging", expected, gates=gates,
                                   settings=settings)  # fmt: skip

    first = p(1, None)
    assert (first.outcome, first.decision.current) == (Out.APPLIED, None)
    assert p(1, None).outcome is Out.ALREADY_TARGET
    conflict = p(2, None)
    assert conflict.outcome is Out.CONFLICT and conflict.decision.current == "1"
    gap = p(3, "1")
    assert gap.outcome is Out.REJECTED
    assert any("exceeds max_loss_ratio 2" in r for r in gap.decision.reasons)
    nodata = p(4, "1")
    assert nodata.outcome is Out.REJECTED
    assert any("no validated training dataset" in r for r in nodata.decision.reasons)
    unknown = p(99, "1")
    assert unknown.outcome is Out.REJECTED and "no version '99'" in unknown.decision.reasons[0]
    assert p(2, "1").outcome is Out.APPLIED

    rows = _agree(settings, b, MODEL, "staging")
    assert [r.outcome for r in rows] == [
        Out.APPLIED, Out.ALREADY_TARGET, Out.CONFLICT, Out.REJECTED, Out.REJECTED,
        Out.REJECTED, Out.APPLIED,
    ]  # fmt: skip
    assert rows[0].artifact_digest == reg[2]["trained"].artifact_digest
    assert rows[3].gates["max_loss_ratio"] == 2.0
    assert rows[0].who["pid"] == os.getpid()  # the caller, not the actor
    # one named actor: the client reaches the same one by get-if-exists
    import ray

    h1 = coordinator.get_coordinator(settings)
    coordinator._handles.clear()
    h2 = coordinator.get_coordinator(settings)
    assert ray.get(h1.identity.remote())["pid"] == ray.get(h2.identity.remote())["pid"]


@pytest.mark.parametrize(
    ("point", "settled_phase", "retry_outcome"),
    [("after_started", Phase.ROLLED_BACK, Out.APPLIED), ("after_alias", Phase.FINISHED,
                                                          Out.ALREADY_TARGET)],
)  # fmt: skip
def test_killed_mid_promotion_restarts_consistent(reg, point, settled_phase, retry_outcome):
    """The actor process dies at a named point; on restart it settles the STARTED row."""
    import ray

    settings, b, _ = reg
    alias = f"crash-{point}"
    assert coordinator.promote(MODEL, 1, alias, None, settings=settings).outcome is Out.APPLIED
    h = coordinator.get_coordinator(settings)
    pid_before = ray.get(h.identity.remote())["pid"]
    ray.get(h.arm_crash.remote(point))
    # the client retries once the actor is back; the answer is idempotent
    res = coordinator.promote(MODEL, 2, alias, "1", settings=settings)
    assert ray.get(h.identity.remote())["pid"] != pid_before  # it really died and restarted
    assert res.outcome is retry_outcome
    rows = _agree(settings, b, MODEL, alias)
    interrupted = rows[1]
    assert (interrupted.outcome, interrupted.phase) == (Out.APPLIED, settled_phase)
    assert "settled on recovery" in interrupted.reasons[-1]
    assert _alias(b, MODEL, alias) == "2"
    # answers consistently after the restart
    assert coordinator.current_version(MODEL, alias, settings=settings) == "2"
    stale = coordinator.promote(MODEL, 4, alias, "1", settings=settings,
                                gates=GatesSpec(require_validated_data=False))  # fmt: skip
    assert (stale.outcome, stale.decision.current) == (Out.CONFLICT, "2")


@pytest.mark.parametrize(
    ("point", "settled_phase", "alias_after"),
    [("after_started", Phase.ROLLED_BACK, "1"), ("after_alias", Phase.FINISHED, "2")],
)
def test_ray_kill_mid_promotion_then_get_if_exists(reg, point, settled_phase, alias_after):
    """``ray.kill`` (no restart) while a promotion is half-done; a new actor obtained by
    get-if-exists completes or rolls it back before answering; alias, audit, history agree."""
    import ray
    from ray.exceptions import RayActorError

    settings, b, _ = reg
    alias = f"kill-{point}"
    assert coordinator.promote(MODEL, 1, alias, None, settings=settings).outcome is Out.APPLIED
    old = coordinator.get_coordinator(settings)
    old_pid = ray.get(old.identity.remote())["pid"]
    ray.get(old.arm_crash.remote(point, "hang"))
    pending = old.promote.remote(
        PromotionRequest(MODEL, "2", alias, "1", who={"via": "test"}), GatesSpec()
    )
    deadline = time.time() + 60  # wait until the attempt is durably STARTED, held half-done
    while not [r for r in history(MODEL, alias, settings=settings) if r.phase is Phase.STARTED]:
        assert time.time() < deadline, "the promotion never reached its audit row"
        time.sleep(0.05)
    if point == "after_alias":
        while _alias(b, MODEL, alias) != "2":
            assert time.time() < deadline
            time.sleep(0.05)
    assert _alias(b, MODEL, alias) == alias_after  # half-done: audit says STARTED
    ray.kill(old, no_restart=True)
    with pytest.raises(RayActorError):
        ray.get(pending, timeout=60)
    # the next call finds the cached handle dead and gets a new actor by name (get-if-exists);
    # the new actor settled the STARTED row on start, before answering
    assert coordinator.current_version(MODEL, alias, settings=settings) == alias_after
    new = coordinator.get_coordinator(settings)
    assert ray.get(new.identity.remote())["pid"] != old_pid
    settled = ray.get(new.recovered.remote())
    assert [(r["to_version"], r["phase"]) for r in settled] == [("2", settled_phase.value)]
    rows = _agree(settings, b, MODEL, alias)
    assert [(r.to_version, r.phase) for r in rows] == [
        ("1", Phase.FINISHED),
        ("2", settled_phase),
    ]
    assert "settled on recovery" in rows[-1].reasons[-1]
    assert _alias(b, MODEL, alias) == alias_after
    # the caller retries: idempotent (ALREADY_TARGET if the move had happened, else APPLIED)
    retry = coordinator.promote(MODEL, 2, alias, "1", settings=settings)
    assert retry.outcome is (Out.ALREADY_TARGET if alias_after == "2" else Out.APPLIED)
    _agree(settings, b, MODEL, alias)
    assert _alias(b, MODEL, alias) == "2"


def test_rollback_pops_the_alias_history_through_the_actor(reg):
    """v1 -> v2 -> v3, then rollback, rollback: v2, v1 (a stack, never back to v3); each
    rollback is a CAS expecting the current version; then nothing is left to roll back to."""
    from rayorch.registry.errors import NothingToRollBackError

    settings, b, versions = reg
    race = [v.version for v in versions["race"]]
    prev = None
    for v in race[:3]:
        assert coordinator.promote(RACE, v, "rb", prev, settings=settings).outcome is Out.APPLIED
        prev = v
    first = coordinator.rollback(RACE, "rb", settings=settings)
    assert (first.outcome, first.decision.current, first.decision.target) == (
        Out.APPLIED, race[2], race[1],
    )  # fmt: skip
    second = coordinator.rollback(RACE, "rb", settings=settings)
    assert (second.decision.current, second.decision.target) == (race[1], race[0])
    with pytest.raises(NothingToRollBackError):
        coordinator.rollback(RACE, "rb", settings=settings)
    rows = _agree(settings, b, RACE, "rb")
    assert [(r.kind, r.from_version, r.to_version) for r in rows] == [
        ("promote", None, race[0]), ("promote", race[0], race[1]),
        ("promote", race[1], race[2]), ("rollback", race[2], race[1]),
        ("rollback", race[1], race[0]),
    ]  # fmt: skip
    assert _alias(b, RACE, "rb") == race[0]


def test_cli_promote_rollback_history_verify(reg, cli_env, tmp_path):
    from rayorch.cli.app import app

    settings, b, versions = reg
    run = CliRunner().invoke

    def cli(*args):
        r = run(app, ["registry", *args])
        return r.exit_code, r.stdout

    code, out = cli("promote", MODEL, "--version", "1", "--expect", "none", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "APPLIED"
    code, out = cli("promote", MODEL, "--version", "2", "--json")  # expects what it reads
    assert code == 0 and json.loads(out)["current"] == "1"
    code, out = cli("promote", MODEL, "--version", "2", "--expect", "1", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "ALREADY_TARGET"
    code, out = cli("promote", MODEL, "--version", "1", "--expect", "7", "--json")
    assert code == 3 and json.loads(out)["current"] == "2"
    code, out = cli("promote", MODEL, "--version", "4", "--expect", "2",
                    "--config", str(REPO / "configs" / "fraud.yaml"))  # fmt: skip
    assert code == 4 and "REJECTED" in out
    strict = tmp_path / "fraud.yaml"
    strict.write_text(
        (REPO / "configs" / "fraud.yaml").read_text().replace(
            "model_name: fraud-detector", "model_name: fraud-detector\n  gates:\n"
            "    max_loss_ratio: 2.0\n    metrics: [{metric: val_auc, min: 0.8}]",
        )
    )  # fmt: skip
    code, out = cli("promote", MODEL, "--version", "3", "--expect", "2", "--config",
                    str(strict), "--json")  # fmt: skip
    assert code == 4, out
    assert any("val_loss/train_loss" in r for r in json.loads(out)["reasons"])

    code, out = cli("rollback", MODEL, "--alias", "production", "--json")
    assert code == 0 and json.loads(out)["target"] == "1"
    code, out = cli("rollback", MODEL, "--json")
    assert code == 1 and json.loads(out)["error"] == "NothingToRollBackError"
    assert _alias(b, MODEL, "production") == "1"

    code, out = cli("history", MODEL, "--alias", "production", "--json")
    rows = json.loads(out)
    assert code == 0
    assert [(r["outcome"], r["kind"]) for r in rows] == [
        ("APPLIED", "promote"), ("APPLIED", "promote"), ("ALREADY_TARGET", "promote"),
        ("CONFLICT", "promote"), ("REJECTED", "promote"), ("REJECTED", "promote"),
        ("APPLIED", "rollback"),
    ]  # fmt: skip
    assert all(r["who"]["via"] == "cli" for r in rows)
    _agree(settings, b, MODEL, "production")
    code, out = cli("history", MODEL)
    assert code == 0 and "rollback" in out

    # verify: the alias names v1 now
    trained, good = versions["trained"], versions["good"]
    code, out = cli("verify", MODEL, "--deployed", trained.artifact_digest, "--json")
    assert code == 0 and json.loads(out)["status"] == "MATCH"
    code, out = cli("verify", MODEL, "--deployed", good.artifact_digest, "--json")
    drift = json.loads(out)
    assert code == 5 and drift["status"] == "DRIFT" and drift["deployed_version"] == "2"
    code, out = cli("verify", MODEL, "--alias", "nobody", "--deployed", good.artifact_digest)
    assert code == 6 and "UNKNOWN" in out


def test_verify_reads_deployed_directories_and_uris(reg, monkeypatch):
    import mlflow
    import mlflow.artifacts

    settings, b, versions = reg
    coordinator.promote(MODEL, 1, "edge", None, settings=settings)
    ok = verify_deployed(MODEL, "edge", f"models:/{MODEL}/1", settings=settings)
    assert ok.status is VerifyStatus.MATCH
    # a server that pulled version 2 into a directory is not what `edge` names
    with tempfile.TemporaryDirectory() as tmp:
        pulled = mlflow.artifacts.download_artifacts(
            artifact_uri=versions["good"].model_uri, dst_path=tmp, tracking_uri=b.uri
        )
        drift = verify_deployed(MODEL, "edge", pulled, settings=settings)
    assert drift.status is VerifyStatus.DRIFT and drift.deployed_version == "2"
    assert drift.expected_digest == versions["trained"].artifact_digest
    # a server that pulled models:/fraud-detector/1 (MLflow adds its download marker) matches
    # (MLflow's global registry URI for this test only, unset afterwards)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", b.uri)
    mlflow.set_registry_uri(b.uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pulled = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL}/1", dst_path=tmp, tracking_uri=b.uri
            )
            assert os.path.exists(os.path.join(pulled, "registered_model_meta"))
            same = verify_deployed(MODEL, "edge", pulled, settings=settings)
    finally:
        mlflow.set_registry_uri(None)  # unset: follows the tracking URI again
    assert same.status is VerifyStatus.MATCH and same.deployed_version == "1"


WORKER = r"""
import json, sys, time
import ray
from rayorch.registry import coordinator
from rayorch.settings import load_settings

ray.init(address=sys.argv[1], namespace="rayorch", log_to_driver=False,
         configure_logging=False)
s = load_settings()
h = coordinator.get_coordinator(s)
print(json.dumps({"pid": ray.get(h.identity.remote())["pid"]}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    while time.time() < cmd["at"]:
        time.sleep(0.0005)
    r = coordinator.promote(cmd["model"], cmd["version"], "production", cmd["expected"],
                            settings=s)
    print(json.dumps(r.to_dict()), flush=True)
"""


def test_concurrent_promoters_from_separate_drivers(reg, tmp_path):
    """4 driver processes race each round: exactly one APPLIED, the rest CONFLICT."""
    import ray

    settings, b, versions = reg
    race = [v.version for v in versions["race"]]
    script = tmp_path / "promoter.py"
    script.write_text(WORKER)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO),
           "RAYORCH_DB_URL": settings.db_url, "MLFLOW_TRACKING_URI": settings.mlflow_uri}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    gcs = ray.get_runtime_context().gcs_address
    workers = [
        subprocess.Popen([sys.executable, str(script), gcs], env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]  # fmt: skip
    try:
        actor_pid = ray.get(coordinator.get_coordinator(settings).identity.remote())["pid"]
        for w in workers:
            line = w.stdout.readline()
            assert line, w.stderr.read()[-3000:]
            assert json.loads(line)["pid"] == actor_pid  # every driver reached the same actor
        current = None
        for rnd in range(4):
            targets = [v for v in race if v != current][:4]
            at = time.time() + 0.3
            for w, t in zip(workers, targets, strict=True):
                w.stdin.write(json.dumps({"model": RACE, "version": t, "expected": current,
                                          "at": at}) + "\n")  # fmt: skip
                w.stdin.flush()
            results = [json.loads(w.stdout.readline()) for w in workers]
            applied = [r for r in results if r["outcome"] == "APPLIED"]
            assert len(applied) == 1, (rnd, results)
            winner = applied[0]["target"]
            assert applied[0]["current"] == current
            losers = [r for r in results if r is not applied[0]]
            assert all(r["outcome"] == "CONFLICT" and r["current"] == winner for r in losers)
            assert _alias(b, RACE, "production") == winner
            current = winner
    finally:
        for w in workers:
            w.stdin.close()
            w.wait(timeout=60)
    rows = _agree(settings, b, RACE, "production")
    assert sum(r.outcome is Out.APPLIED for r in rows) == 4
    assert sum(r.outcome is Out.CONFLICT for r in rows) == 12
    assert len({r.who["pid"] for r in rows}) == 4  # four separate driver processes
