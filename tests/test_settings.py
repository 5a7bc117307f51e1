"""Settings: every env var rayorch reads is read in rayorch/settings.py, and read afresh."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rayorch import settings as settings_mod
from rayorch.env.fingerprint import EnvContext, capture, git_commit, observed_image
from rayorch.env.runtime import cluster_config_path
from rayorch.faults import crash_point
from rayorch.settings import load_settings

RAYORCH = Path(__file__).resolve().parents[1] / "rayorch"
READ_METHODS = {"get", "setdefault", "pop", "keys", "items", "values", "copy"}


def _is_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def env_reads(source: str) -> list[int]:
    """Lines that read the environment. Copying all of ``os.environ`` for a child process
    (``{**os.environ, ...}``) and setting a variable (``os.environ[k] = v``) are not reads."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            read = f.attr == "getenv" or (f.attr in READ_METHODS and _is_environ(f.value))
        elif isinstance(node, ast.Subscript):
            read = _is_environ(node.value) and isinstance(node.ctx, ast.Load)
        elif isinstance(node, ast.Compare):
            read = any(_is_environ(c) for c in node.comparators)  # "X" in os.environ
        elif isinstance(node, ast.ImportFrom):
            read = node.module == "os" and any(a.name in {"environ", "getenv"} for a in node.names)
        else:
            read = False
        if read:
            lines.append(node.lineno)
    return sorted(lines)


def test_the_detector_finds_reads_and_passes_copies():
    src = (
        "import os\n"
        "a = os.environ.get('A')\n"
        "b = os.getenv('B')\n"
        "c = os.environ['C']\n"
        "d = 'D' in os.environ\n"
        "os.environ.setdefault('E', '1')\n"
        "env = {**os.environ, 'F': '1'}\n"
        "os.environ['G'] = '1'\n"
        "from os import environ\n"
    )
    assert env_reads(src) == [2, 3, 4, 5, 6, 9]


def test_no_env_var_read_outside_settings():
    """rayorch/dev/* is the dev topology's launcher (it only copies the env for children)."""
    found = {}
    for path in sorted(RAYORCH.rglob("*.py")):
        rel = path.relative_to(RAYORCH.parent).as_posix()
        if rel == "rayorch/settings.py":
            continue
        lines = env_reads(path.read_text())
        if lines:
            found[rel] = lines
    assert found == {}, f"read env vars through rayorch.settings, not here: {found}"


def test_process_variables_read_afresh(monkeypatch, tmp_path):
    for k in ("RAYORCH_CLUSTER_CONFIG", "RAYORCH_GIT_COMMIT", "RAYORCH_IMAGE", "RAY_IMAGE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("KUBERAY_IMAGE", "kuberay:1")
    assert load_settings().image == observed_image() == "kuberay:1"
    monkeypatch.setenv("RAYORCH_IMAGE", "rayorch:2")  # the first one set wins
    assert observed_image() == "rayorch:2"
    monkeypatch.setenv("RAYORCH_GIT_COMMIT", "abc123")
    assert git_commit(tmp_path) == "abc123"
    cfg = tmp_path / "cluster.yaml"
    monkeypatch.setenv("RAYORCH_CLUSTER_CONFIG", str(cfg))
    assert cluster_config_path() == str(cfg) and cluster_config_path("x.yaml") == "x.yaml"
    monkeypatch.setenv("RAYORCH_TEST_RECORDED", "yes")
    fp = capture(EnvContext(pipeline="p", record_env=("RAYORCH_TEST_RECORDED", "RAYORCH_NOPE")))
    assert fp.env_vars == {"RAYORCH_TEST_RECORDED": "yes", "RAYORCH_NOPE": None}
    assert fp.image == "rayorch:2" and fp.image_source == "observed"
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert load_settings().ray_auth_mode is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert load_settings().ray_auth_mode == "token"


def test_crash_point_follows_the_variable(monkeypatch):
    monkeypatch.delenv("RAYORCH_CRASH_AT", raising=False)
    assert settings_mod.crash_at() is None
    crash_point("after_commit")  # unset: returns
    monkeypatch.setenv("RAYORCH_CRASH_AT", "after_publish:3")
    assert settings_mod.crash_at() == "after_publish:3"
    crash_point("after_commit")  # another point: returns


@pytest.mark.parametrize("var", ["RAYORCH_GIT_COMMIT", "RAYORCH_CLUSTER_CONFIG"])
def test_empty_value_means_unset(monkeypatch, var):
    monkeypatch.setenv(var, "")
    s = load_settings()
    assert (s.git_commit if var == "RAYORCH_GIT_COMMIT" else s.cluster_config) is None
