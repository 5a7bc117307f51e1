"""Reproducibility costs: the per-unit fingerprint (capture + ledger + MLflow logging) and
`rayorch reproduce --check` on a run that read 90 days x 30 keys of feature partitions.

    python benchmarks/bench_repro.py [--days 90] [--keys 30] [--repeat 5] [--ray] [--train]

Targets: fingerprint overhead per unit < 300 ms (or < 2% of a minimal training unit's wall);
`reproduce --check` (metadata only: manifests and a stat per file) < 5 s for 2,700 partitions.
``--ray`` also times the check with the environment captured in a Ray worker (what the CLI
does by default; includes starting a local Ray), ``--train`` times one minimal training unit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAYORCH_GIT_COMMIT", "bench")

import yaml

REPO = Path(__file__).resolve().parents[1]

COLD_CAPTURE = """
import time, sys
t = time.perf_counter()
from rayorch.env.fingerprint import capture, EnvContext
t1 = time.perf_counter()
fp = capture(EnvContext("bench", record_env=("HOME",)))
t2 = time.perf_counter()
fp = capture(EnvContext("bench", record_env=("HOME",)))
t3 = time.perf_counter()
print((t2 - t1) * 1000, (t3 - t2) * 1000, len(fp.packages))
"""


def bench_fingerprint(home: Path, repeat: int) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    from rayorch.env.fingerprint import EnvContext, capture
    from rayorch.env.store import EnvStore
    from rayorch.env.worker import log_fingerprint
    from rayorch.ledger.store import Ledger, UnitSpec
    from rayorch.lineage.tracking import Tracker

    cold = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", COLD_CAPTURE], capture_output=True, text=True, cwd=REPO
        ).stdout.split()
        cold.append(float(out[0]))
        warm, npk = float(out[1]), int(out[2])
    db = f"sqlite:///{home / 'ledger.db'}"
    led = Ledger(db)
    bf, _ = led.start_backfill("bench", {}, "x", [UnitSpec("bench/u", "bench", "train", "k=a")])
    token = led.claim_many(bf.ownership, ["bench/u"])[0].token
    store = EnvStore(db)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "art"))
    exp = tracker.experiment_id("rayorch/bench")
    client = MlflowClient(tracker.uri)
    ctx = EnvContext("bench", db_url=db)
    guard_ms, log_ms, total_ms = [], [], []
    for i in range(repeat):
        run_id = client.create_run(exp, run_name=f"u{i}").info.run_id
        t0 = time.perf_counter()
        fp = capture(ctx, worker="rank0")
        t1 = time.perf_counter()
        store.guard("bench/u", token, "rank0", fp)
        t2 = time.perf_counter()
        log_fingerprint(client, run_id, fp, primary=True)
        t3 = time.perf_counter()
        guard_ms.append((t2 - t1) * 1000)
        log_ms.append((t3 - t2) * 1000)
        total_ms.append((t3 - t0) * 1000)
    led.close()
    return {
        "packages": npk,
        "capture_cold_ms": statistics.median(cold),
        "capture_warm_ms": warm,
        "ledger_guard_ms": statistics.median(guard_ms),
        "mlflow_log_ms": statistics.median(log_ms),
        "per_unit_total_ms": statistics.median(cold) + statistics.median(total_ms),
    }


def synth_run(home: Path, days: int, keys: int) -> tuple[str, list[str]]:
    """A logged run whose dataset manifest lists days x keys committed partitions."""
    import datetime as dt

    import pyarrow as pa

    from rayorch.data import outputs
    from rayorch.data.reader import pin_window
    from rayorch.data.tables import StepTable
    from rayorch.env.fingerprint import EnvContext, capture
    from rayorch.env.worker import log_fingerprint
    from rayorch.lineage.tracking import Tracker
    from rayorch.partitions import PartitionKey
    from rayorch.settings import load_settings
    from rayorch.spec import parse_pipeline

    data = yaml.safe_load((REPO / "configs" / "fraud.yaml").read_text())
    data["partitions"]["keys"] = {"city": [f"c{i:02d}" for i in range(keys)]}
    data["features"]["output"] = str(home / "features")
    data.pop("registry")
    spec = parse_pipeline(data, source="bench")
    table = StepTable.for_spec(spec, load_settings())
    parts, staged = [], []
    day0 = dt.date(2026, 1, 1)
    for d in range(days):
        for k in range(keys):
            key = PartitionKey.of(city=f"c{k:02d}", date=str(day0 + dt.timedelta(days=d)))
            rows = pa.table({"transaction_id": [f"{key}-{i}" for i in range(16)]})
            run_key = f"fraud/features/{key}"
            staged.append(outputs.stage(table, key, rows, run_key=run_key, token=1,
                                        unique_key=["transaction_id"]))  # fmt: skip
            parts.append(str(key))
    for i in range(0, len(staged), 64):
        table.publish_many([outputs.publish_item(x) for x in staged[i : i + 64]])
    window = pin_window(table, [PartitionKey.parse(p) for p in parts])
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "mlartifacts"))
    exp = tracker.experiment_id("rayorch/fraud")
    run_id = tracker.client.create_run(
        exp, tags={"rayorch.run_key": "fraud/train/date=2026-03-31", "rayorch.generation": "0"}
    ).info.run_id
    tracker.client.log_param(run_id, "as_of", "2026-03-31")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "dataset_manifest.json"
        p.write_text(json.dumps(window.to_dict()))
        tracker.client.log_artifact(run_id, str(p))
    tracker.log_config(run_id, spec)
    log_fingerprint(
        tracker.client, run_id, capture(EnvContext("fraud"), worker="rank0"), primary=True
    )
    return run_id, parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--keys", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ray", action="store_true", help="also time the check with a Ray worker")
    ap.add_argument("--train", action="store_true", help="also time a minimal training unit")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="rayorch-repro-"))
    os.environ["RAYORCH_HOME"] = str(home)
    res: dict[str, object] = {}

    (home / "fp").mkdir()
    fpb = bench_fingerprint(home / "fp", args.repeat)
    res["fingerprint"] = fpb
    print(
        f"fingerprint: {fpb['packages']} packages; capture cold {fpb['capture_cold_ms']:.1f} ms, "
        f"warm {fpb['capture_warm_ms']:.3f} ms; ledger guard {fpb['ledger_guard_ms']:.1f} ms; "
        f"MLflow tags+artifact {fpb['mlflow_log_ms']:.1f} ms; per unit (cold) "
        f"{fpb['per_unit_total_ms']:.1f} ms (target < 300 ms)"
    )

    from rayorch.lineage.reproduce import check_run
    from rayorch.settings import load_settings

    t = time.perf_counter()
    run_id, parts = synth_run(home, args.days, args.keys)
    print(f"synthesized a run over {len(parts)} partitions in {time.perf_counter() - t:.1f}s")
    st = load_settings()
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        chk = check_run(run_id, st, local_env=True)
        times.append(time.perf_counter() - t)
        assert chk.same, chk.to_dict()
    # change one partition's committed content: the check must name exactly it
    victim = home / "features" / parts[len(parts) // 2] / "_manifest.json"
    m = json.loads(victim.read_text())
    m["content_hash"] = "f" * 64
    victim.write_text(json.dumps(m))
    chk = check_run(run_id, st, local_env=True)
    assert [c.partition for c in chk.data_changes] == [parts[len(parts) // 2]]
    res["check_api_s"] = statistics.median(times)
    print(
        f"reproduce --check (API, local env) over {len(parts)} partitions: median "
        f"{res['check_api_s']:.3f}s of {args.repeat} (target < 5 s); names the changed one: ok"
    )
    env = {**os.environ, "RAYORCH_HOME": str(home)}
    cmd = [sys.executable, "-m", "rayorch.cli.app", "reproduce", run_id, "--check", "--json"]
    t = time.perf_counter()
    proc = subprocess.run([*cmd, "--local-env"], capture_output=True, text=True, env=env, cwd=REPO)
    res["check_cli_local_s"] = time.perf_counter() - t
    assert proc.returncode == 1, proc.stderr
    print(
        f"`rayorch reproduce RUN --check --local-env` end to end: {res['check_cli_local_s']:.2f}s"
    )
    if args.ray:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        res["check_cli_ray_s"] = time.perf_counter() - t
        assert proc.returncode == 1, proc.stderr
        print(
            f"`rayorch reproduce RUN --check` (env captured in a Ray worker, local Ray started): "
            f"{res['check_cli_ray_s']:.2f}s"
        )
    if args.train:
        res["train_unit_s"] = time_train_unit(home / "train")
        share = fpb["per_unit_total_ms"] / 1000 / res["train_unit_s"] * 100
        print(
            f"minimal training unit: {res['train_unit_s']:.1f}s wall; fingerprint share "
            f"{share:.2f}% (target < 2%)"
        )
    print(json.dumps(res, indent=1, default=str))


def time_train_unit(tmp: Path) -> float:
    """Wall of one minimal training unit (1 worker, 1 epoch, 2 days x 1 key) on local Ray."""
    tmp.mkdir()
    sys.path.insert(0, str(REPO))
    from rayorch.api import generate_data, run_backfill
    from rayorch.settings import load_settings
    from rayorch.spec import parse_pipeline
    from tests.helpers import small_config

    data = yaml.safe_load(small_config(tmp, train=True).read_text())
    data["partitions"]["keys"] = {"city": ["SF"]}
    data["train"]["epochs"] = 1
    data.pop("registry")
    spec = parse_pipeline(data)
    st = load_settings(tmp / "home")
    generate_data(spec, "2026-09-30", "2026-10-01", settings=st)
    run_backfill(spec, "2026-09-30", "2026-10-01", settings=st, steps="features")
    t = time.perf_counter()
    s = run_backfill(spec, "2026-10-01", "2026-10-01", settings=st, steps="train")
    wall = time.perf_counter() - t
    assert s.counts()["done"] == 1, s.to_dict()
    return wall


if __name__ == "__main__":
    main()
