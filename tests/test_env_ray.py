"""Drift guard on a real local Ray: one backfill never mixes environments."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml

from rayorch.api import generate_data, open_ledger, run_backfill
from rayorch.backfill.executor import RayExecutor
from rayorch.backfill.machine import Phase
from rayorch.data.tables import StepTable
from rayorch.env.store import EnvStore
from rayorch.ledger.states import UnitState
from rayorch.partitions import PartitionKey
from rayorch.spec import load_pipeline, parse_pipeline
from tests.helpers import small_config

pytestmark = pytest.mark.ray
DAY = "2026-10-01"


def _with_env(spec: Any, mode: str) -> Any:
    data = spec.model_dump(mode="json", by_alias=True)
    data["environment"] = {
        "runtime_env": {"env_vars": {"RAYORCH_T_MODE": mode}},
        "env_vars_to_record": ["RAYORCH_T_MODE"],
    }
    return parse_pipeline(data)


class _NodeWithAnotherEnv:
    """Routes every unit after the first to an executor whose workers run another runtime_env,
    the way a node with another image would join mid-backfill."""

    def __init__(self, a: RayExecutor, b: RayExecutor) -> None:
        self.a, self.b, self.n = a, b, 0
        self.by: dict[Any, RayExecutor] = {}  # handle -> the executor that started it

    def submit(self, unit: Any, token: int, generation: int, placement: Any = None) -> Any:
        self.n += 1
        ex = self.a if self.n == 1 else self.b
        handle = ex.submit(unit, token, generation, placement)
        self.by[handle] = ex
        return handle

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        for ex in (self.a, self.b):  # each launches and collects its own
            mine = [h for h in handles if self.by.get(h) is ex]
            if mine:
                out += ex.wait(mine, timeout)
        return out

    def cancel(self, handle: Any) -> None:
        self.by.get(handle, self.a).cancel(handle)

    def __getattr__(self, name: str) -> Any:  # publish, reconcile, ...: the first executor's
        return getattr(self.a, name)


def test_drift_mid_backfill_fails_unit_with_diff_and_commits_nothing(
    ray_session, tmp_path, settings
):
    base = load_pipeline(small_config(tmp_path))
    spec_a, spec_b = _with_env(base, "a"), _with_env(base, "b")
    keys = {"city": ["SF", "NYC"]}
    generate_data(spec_a, DAY, DAY, keys, settings=settings)
    ex = _NodeWithAnotherEnv(RayExecutor(spec_a, settings), RayExecutor(spec_b, settings))
    s = run_backfill(spec_a, DAY, DAY, keys, settings=settings, executor=ex, max_concurrency=1)

    done = [k for k, o in s.phases.items() if o is Phase.DONE]
    failed = [k for k, o in s.phases.items() if o is Phase.FAILED]
    assert len(done) == 1 and len(failed) == 1, s.to_dict()
    err = s.errors[failed[0]]
    assert "EnvironmentDriftError" in err and "$RAYORCH_T_MODE a → b" in err
    assert done[0] in err  # names the unit that set the reference

    # The drifted unit's output was never staged or committed.
    bad_key = PartitionKey.parse(failed[0].split("/", 2)[2])
    assert str(bad_key) not in StepTable.for_spec(spec_a, settings).live()
    ledger = open_ledger(settings)
    row = ledger.get_units([failed[0]])[failed[0]]
    assert row.state is UnitState.FAILED and row.committed_token is None
    ledger.close()

    # The good unit's result carries the worker's fingerprint, captured in a Ray worker.
    env = s.outputs[done[0]]["environment"]
    assert env["worker"] == "task" and env["pid"] != os.getpid()
    store = EnvStore(settings.db_url)
    caps = store.captures(backfill_id=s.backfill_id)
    assert [c["run_key"] for c in caps] == [done[0], failed[0]]
    assert caps[0]["digest"] == env["digest"] != caps[1]["digest"]
    fp_b = store.fingerprint(caps[1]["digest"])
    assert fp_b is not None and fp_b.env_vars == {"RAYORCH_T_MODE": "b"}
    store.close()


def test_same_environment_backfill_passes_guard(ray_session, tmp_path, settings):
    spec = _with_env(load_pipeline(small_config(tmp_path)), "same")
    generate_data(spec, DAY, DAY, settings=settings)
    s = run_backfill(spec, DAY, DAY, settings=settings)
    assert s.counts()["done"] == 3, s.to_dict()
    digests = {r["environment"]["digest"] for r in s.outputs.values()}
    assert len(digests) == 1
    store = EnvStore(settings.db_url)
    assert {c["digest"] for c in store.captures(backfill_id=s.backfill_id)} == digests
    store.close()


def test_lockfile_hash_recorded_in_workers(ray_session, tmp_path, settings, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("tabulate==0.8.10\n")
    data = yaml.safe_load(small_config(tmp_path).read_text())
    data["environment"] = {"lockfile": "requirements.lock"}
    monkeypatch.chdir(tmp_path)  # relative lockfile paths resolve against the cwd
    spec = parse_pipeline(data)
    generate_data(spec, DAY, DAY, {"city": ["SF"]}, settings=settings)
    s = run_backfill(spec, DAY, DAY, {"city": ["SF"]}, settings=settings)
    (res,) = s.outputs.values()
    store = EnvStore(settings.db_url)
    fp = store.fingerprint(res["environment"]["digest"])
    store.close()
    import hashlib

    assert fp is not None and fp.lockfile == "requirements.lock"
    assert fp.lockfile_sha256 == hashlib.sha256(lock.read_bytes()).hexdigest()
