"""Pure tests of the environment layer: spec, image policy, runtime_env, fingerprint, diff, drift."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest
import yaml

from rayorch.env.diff import DriftOutcome, decide_drift, diff_fingerprints
from rayorch.env.errors import EnvironmentDriftError, ImageNotPinnedError
from rayorch.env.fingerprint import (
    EnvContext,
    Fingerprint,
    capture,
    env_context,
    git_commit,
    installed_packages,
    normalize_name,
)
from rayorch.env.runtime import enforce_image_policy
from rayorch.env.spec import (
    EnvironmentSpec,
    build_runtime_env,
    check_image_policy,
    parse_image_ref,
)
from rayorch.errors import ConfigError
from rayorch.spec import parse_pipeline
from tests.conftest import CONFIGS

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "name", "tag", "pinned"),
    [
        ("repo/name@" + DIGEST, "repo/name", None, True),
        ("ghcr.io/acme/train:1.2@" + DIGEST, "ghcr.io/acme/train", "1.2", True),
        ("localhost:5000/img:dev", "localhost:5000/img", "dev", False),
        ("rayproject/ray:latest", "rayproject/ray", "latest", False),
        ("python", "python", None, False),
    ],
)
def test_parse_image_ref(ref, name, tag, pinned):
    r = parse_image_ref(ref)
    assert (r.name, r.tag, r.pinned) == (name, tag, pinned)
    assert str(r) == ref


@pytest.mark.parametrize(
    "ref", ["repo/name@sha256:abc", "Repo/Name:1", "repo/name@md5:" + "a" * 32, " x", "a//b"]
)
def test_parse_image_ref_rejects(ref):
    with pytest.raises(ValueError):
        parse_image_ref(ref)


@pytest.mark.parametrize(
    ("image", "refused"),
    [
        ("rayproject/ray:latest", True),
        ("rayproject/ray", True),  # no tag means :latest
        ("rayproject/ray:2.60.0", True),  # tag-only
        ("rayproject/ray@" + DIGEST, False),
        ("rayproject/ray:2.60.0@" + DIGEST, False),  # the digest pins it
    ],
)
def test_digest_policy(image, refused):
    env = EnvironmentSpec(image=image)
    assert check_image_policy(env, require_digest=False, namespace="ns") is not None
    if refused:
        with pytest.raises(ImageNotPinnedError) as ei:
            check_image_policy(
                env, require_digest=True, namespace="prod", file="p.yaml", policy_file="c.yaml"
            )
        e = ei.value
        assert isinstance(e, ConfigError) and e.exit_code == 2
        assert e.fields["field"] == "environment.image" and e.fields["file"] == "p.yaml"
        assert "registry/name@sha256:" in e.message and "rayproject/ray@sha256:" in e.message
        assert "c.yaml: namespaces.prod.require_image_digest" in e.message
        assert pickle.loads(pickle.dumps(e)).fields == e.fields
    else:
        assert check_image_policy(env, require_digest=True, namespace="prod").pinned


def _pipeline(tmp_path, image: str, namespace: str = "production"):
    data = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    data["namespace"] = namespace
    data["environment"] = {"image": image, "env_vars_to_record": ["B", "A"]}
    return parse_pipeline(data)


def test_unpinned_image_refused_in_digest_namespace_at_plan_time(tmp_path):
    """configs/cluster.yaml: production requires digests, risk does not."""
    cluster = CONFIGS / "cluster.yaml"
    spec = _pipeline(tmp_path, "acme/fraud:latest")
    with pytest.raises(ImageNotPinnedError) as ei:
        enforce_image_policy(spec, cluster, file="fraud.yaml")
    assert "namespace 'production'" in ei.value.message
    assert ei.value.fields["policy_file"] == str(cluster)
    assert enforce_image_policy(_pipeline(tmp_path, "acme/fraud@" + DIGEST), cluster).pinned
    assert not enforce_image_policy(_pipeline(tmp_path, "acme/fraud:1", "risk"), cluster).pinned
    from rayorch.api import plan_with_status

    with pytest.raises(ImageNotPinnedError):
        plan_with_status(spec, "2026-10-01", "2026-10-01")


def test_cli_env_check_refuses_with_exit_2(tmp_path):
    from tests.helpers import json_out, run_cli

    data = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    data["namespace"] = "production"
    data["environment"] = {"image": "acme/fraud:latest"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("env", "check", "-c", str(path), "--cluster", str(CONFIGS / "cluster.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert "registry/name@sha256:" in proc.stderr and str(path) in proc.stderr
    data["environment"]["image"] = "acme/fraud@" + DIGEST
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("env", "check", "-c", str(path), "--json")
    assert proc.returncode == 0 and json_out(proc)["namespace"] == "production"


def test_environment_spec_validation_names_field():
    data = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    data["environment"] = {"image": "x@sha256:12", "runtime_env": {"env_vars": {"1X": "a"}}}
    with pytest.raises(ConfigError) as ei:
        parse_pipeline(data, source="f.yaml")
    assert "environment.image" in ei.value.message
    assert "environment.runtime_env.env_vars" in ei.value.message


def test_build_runtime_env():
    assert build_runtime_env(None) is None
    assert build_runtime_env(EnvironmentSpec(image="a/b:1")) is None
    env = EnvironmentSpec.model_validate(
        {
            "image": "a/b@" + DIGEST,
            "lockfile": "requirements.lock",
            "runtime_env": {
                "env_vars": {"Z": "1", "A": "2"},
                "install_lockfile": True,
                "py_modules": ["mods/x"],
                "working_dir": ".",
                "use_image_uri": True,
            },
        }
    )
    assert build_runtime_env(env, lockfile_path="/repo/requirements.lock") == {
        "env_vars": {"A": "2", "Z": "1"},
        "pip": "/repo/requirements.lock",
        "py_modules": ["mods/x"],
        "working_dir": ".",
        "image_uri": "a/b@" + DIGEST,
    }
    assert build_runtime_env(
        EnvironmentSpec.model_validate({"runtime_env": {"pip": ["x==1"]}})
    ) == {"pip": ["x==1"]}


def test_env_context_lockfile_relative_to_cwd(tmp_path, monkeypatch):
    (tmp_path / "req.lock").write_text("tabulate==0.8.10\n")
    data = yaml.safe_load((CONFIGS / "fraud.yaml").read_text())
    data["environment"] = {"lockfile": "req.lock", "env_vars_to_record": ["B", "A"]}
    spec = parse_pipeline(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYORCH_GIT_COMMIT", "c0ffee")
    ctx = env_context(spec, "sqlite:///x.db")
    import hashlib

    assert ctx.lockfile_sha256 == hashlib.sha256(b"tabulate==0.8.10\n").hexdigest()
    assert ctx.record_env == ("A", "B") and ctx.git_commit == "c0ffee"
    assert EnvContext.from_dict(ctx.to_dict()) == ctx
    monkeypatch.chdir(CONFIGS)
    with pytest.raises(ConfigError) as ei:
        env_context(spec, None)
    assert ei.value.fields["field"] == "environment.lockfile"


def test_git_commit_read_from_files(monkeypatch):
    monkeypatch.delenv("RAYORCH_GIT_COMMIT", raising=False)
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=CONFIGS, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(CONFIGS) == head


def test_installed_packages_matches_importlib():
    import importlib.metadata as md

    want: dict[str, str] = {}
    for d in md.distributions():
        want.setdefault(normalize_name(d.metadata["Name"]), d.version)
    assert installed_packages() == dict(sorted(want.items()))


def test_capture_digest_stable_and_sensitive(monkeypatch):
    monkeypatch.setenv("RAYORCH_T_VAR", "one")
    monkeypatch.delenv("RAYORCH_IMAGE", raising=False)
    ctx = EnvContext("p", image="a/b@" + DIGEST, record_env=("RAYORCH_T_VAR",))
    a, b = capture(ctx, worker="x"), capture(ctx, worker="y")
    assert a.digest == b.digest  # worker, time and pid are recorded, not hashed
    assert a.image_source == "declared" and a.env_vars == {"RAYORCH_T_VAR": "one"}
    assert a.packages["pytest"] and a.key_versions()["ray"].startswith("2.60")
    monkeypatch.setenv("RAYORCH_T_VAR", "two")
    assert capture(ctx).digest != a.digest
    monkeypatch.setenv("RAYORCH_IMAGE", "a/b@sha256:" + "cd" * 32)
    c = capture(ctx)
    assert c.image_source == "observed" and c.image.endswith("cd" * 32)
    assert Fingerprint.from_dict(a.to_dict()).digest == a.digest
    assert replace(a, git_commit="other").digest == a.digest  # code is not environment


def _fp(**kw) -> Fingerprint:
    base = dict(
        python="3.11.7",
        implementation="cpython",
        platform="linux-x86_64",
        image="a/b@" + DIGEST,
        image_source="declared",
        packages={"numpy": "2.0.0", "opencv-python": "4.8.0.76", "tabulate": "0.8.10"},
        env_vars={"MODE": "a"},
        git_commit="c1",
    )
    return Fingerprint(**{**base, **kw})


@pytest.mark.parametrize(
    ("b", "lines", "equal"),
    [
        (_fp(), [], True),
        (
            _fp(packages={"numpy": "2.0.0", "opencv-python": "4.8.1.78", "tabulate": "0.8.10"}),
            ["opencv-python 4.8.0.76 → 4.8.1.78"],
            False,
        ),
        (
            _fp(packages={"numpy": "2.0.0", "opencv-python": "4.8.0.76", "six": "1.0"}),
            ["six (added) 1.0", "tabulate 0.8.10 (removed)"],
            False,
        ),
        (
            _fp(image="a/b@sha256:" + "cd" * 32),
            [f"image a/b@{DIGEST} → a/b@sha256:{'cd' * 32}"],
            False,
        ),
        (_fp(python="3.12.1"), ["python cpython 3.11.7 → cpython 3.12.1"], False),
        (_fp(env_vars={"MODE": "b"}), ["$MODE a → b"], False),
        (_fp(env_vars={}), ["$MODE a (removed)"], False),
        (_fp(git_commit="c2"), ["git commit c1 → c2"], True),  # reported, not environment
        (_fp(lockfile_sha256="ff"), ["lockfile (added) ff"], False),
    ],
)
def test_diff_table(b, lines, equal):
    d = diff_fingerprints(_fp(), b)
    assert d.lines() == lines
    assert d.equal is equal
    j = d.to_dict()
    assert j["equal"] is equal
    if "opencv" in "".join(lines):
        assert j["packages"]["changed"][0]["line"] == "opencv-python 4.8.0.76 → 4.8.1.78"


def test_drift_decision_and_error_pickles():
    ref = _fp()
    assert decide_drift(None, ref).outcome is DriftOutcome.REFERENCE_SET
    assert decide_drift(ref, _fp(worker="other", host="h2")).outcome is DriftOutcome.SAME
    d = decide_drift(ref, _fp(packages={**ref.packages, "tabulate": "0.10.0"}))
    assert d.outcome is DriftOutcome.DRIFT and not d.ok
    assert d.diff == ("tabulate 0.8.10 → 0.10.0",)
    assert decide_drift(ref, _fp(git_commit="zz")).ok  # a new commit is not a new environment
    e = EnvironmentDriftError("drift", diff=list(d.diff), run_key="k")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is EnvironmentDriftError and e2.fields["diff"] == ["tabulate 0.8.10 → 0.10.0"]


def test_store_reference_first_wins(tmp_path):
    from rayorch.env.store import EnvStore
    from rayorch.ledger.store import Ledger, UnitSpec

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = Ledger(url)
    bf, _ = led.start_backfill("p", {"x": 1}, "fp", [UnitSpec("p/a", "p", "features", "k=a")])
    bf2, _ = led.start_backfill("p", {"x": 2}, "fp", [UnitSpec("p/b", "p", "features", "k=b")])
    ta = led.claim_many(bf.ownership, ["p/a"])[0].token
    tb = led.claim_many(bf2.ownership, ["p/b"])[0].token
    st = EnvStore(url)
    EnvStore(url)  # idempotent creation
    d1, bid, _ = st.guard("p/a", ta, "task", _fp())
    assert d1.outcome is DriftOutcome.REFERENCE_SET and bid == bf.id
    d2, _, ref_key = st.guard("p/a", ta, "rank0", _fp(host="other"))
    assert d2.outcome is DriftOutcome.SAME and ref_key == "p/a"
    d3, _, _ = st.guard("p/a", ta, "rank1", _fp(env_vars={"MODE": "b"}))
    assert d3.outcome is DriftOutcome.DRIFT and d3.diff == ("$MODE a → b",)
    # another backfill has its own reference
    assert st.guard("p/b", tb, "task", _fp(env_vars={"MODE": "b"}))[0].ok
    # a stale token has no backfill: recorded, never compared
    assert st.guard("p/a", ta + 99, "task", _fp(python="9"))[1] is None
    rows = st.captures("p/a")
    assert [r["worker"] for r in rows] == ["task", "rank0", "rank1", "task"]
    assert st.fingerprint(_fp().digest).packages == _fp().packages
