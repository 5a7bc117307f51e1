"""Takeover after a SIGKILL: a driver holding 100 claims is killed (its whole process group),
the same command is started again, and the time until every unit is committed is measured.

    python benchmarks/bench_takeover.py [--units 100] [--lease 20]

Two cases, side by side in one run, on one Ray started here (drivers attach to it):
* same host: the new driver sees the dead owner's process is gone and takes over at once
  (target < 5 s from the restart until all units are committed);
* owner unknowable (recorded on another host, no Ray job to ask): the new driver waits for
  the dead owner's stored lease, with a countdown (lease-bound: about --lease seconds).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def _plan(n: int):
    import datetime as dt

    from rayorch.backfill.plan import BackfillPlan, Step, Unit, make_run_key
    from rayorch.partitions import PartitionKey

    day = dt.date(2026, 10, 1)
    units = []
    for i in range(n):
        pk = PartitionKey.of({"city": f"c{i:03d}"}, date=day.isoformat())
        units.append(Unit(make_run_key("bench", Step.FEATURES, pk), Step.FEATURES, pk, day))
    params = {"pipeline": "bench", "units": n}
    return BackfillPlan(
        "bench", day, day, {"city": []}, (Step.FEATURES,), tuple(units), "fp", params
    )


def child(db_url: str, n: int, lease: float, sleep_s: float, host: str | None) -> None:
    """One driver process: claims all units at once; each unit's task sleeps ``sleep_s``."""
    import ray

    from rayorch.backfill.driver import BackfillDriver, DriverOptions
    from rayorch.backfill.executor import NoopExecutor
    from rayorch.ledger.liveness import current_owner
    from rayorch.ledger.owners import OwnerInfo
    from rayorch.ledger.store import Ledger
    from rayorch.results import Noop

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

    def work(unit, token):
        time.sleep(sleep_s)
        return Noop(token)

    class Sleepy(NoopExecutor):
        def __init__(self) -> None:
            super().__init__()
            self._task = ray.remote(num_cpus=1, max_retries=0)(work)  # queued tasks: claims held

    me = current_owner()
    owner = OwnerInfo(host, me.pid, me.started_at) if host else me
    ledger = Ledger(db_url)
    opts = DriverOptions(max_concurrency=n, lease_s=lease, conflict_poll_s=0.25)
    s = BackfillDriver(_plan(n), ledger, Sleepy(), opts, owner=owner).run()
    print(s.state.value, s.counts()["done"], flush=True)


def _committed(db_url: str) -> int:
    from rayorch.ledger.store import Ledger

    led = Ledger(db_url)
    try:
        return len({e["run_key"] for e in led.events(event_name="COMMIT")})
    finally:
        led.close()


def _claimed(db_url: str) -> int:
    from rayorch.ledger.store import Ledger

    led = Ledger(db_url)
    try:
        bfs = led.list_backfills()
        return led.unit_counts(bfs[0].id)["RUNNING"] if bfs else 0
    finally:
        led.close()


def case(address: str, n: int, lease: float, unknowable: bool) -> tuple[float, float]:
    tmp = tempfile.mkdtemp(prefix="rayorch-takeover-")
    db_url = f"sqlite:///{tmp}/ledger.db"
    env = {**os.environ, "RAY_ADDRESS": address}
    base = [sys.executable, __file__, "--child", "--db-url", db_url, "--units", str(n)]
    base += ["--lease", str(lease)]
    first = subprocess.Popen(
        [*base, "--sleep", "600", *(["--host", "elsewhere"] if unknowable else [])],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while _claimed(db_url) < n:
        if time.time() > deadline:
            raise SystemExit("the first driver never held all claims")
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    t0 = time.perf_counter()
    second = subprocess.Popen([*base, "--sleep", "0"], env=env, stdout=subprocess.PIPE, text=True)
    while _committed(db_url) < n:
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, _ = second.communicate(timeout=120)
    assert f"SUCCEEDED {n}" in out.splitlines(), out[-2000:]
    return wall, lease


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--lease", type=float, default=20.0)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--db-url")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--host")
    args = ap.parse_args()
    if args.child:
        child(args.db_url, args.units, args.lease, args.sleep, args.host)
        return
    import ray

    ctx = ray.init(
        address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
        configure_logging=False,
    )  # fmt: skip
    address = ctx.address_info["gcs_address"]
    same, _ = case(address, args.units, args.lease, unknowable=False)
    other, lease = case(address, args.units, args.lease, unknowable=True)
    ray.shutdown()
    print(
        f"driver SIGKILLed holding {args.units} claims on {socket.gethostname()}; same command again:"
    )
    print(
        f"  same host (dead process seen at once): {same:6.2f} s until all committed (target < 5 s)"
    )
    print(
        f"  owner unknowable (lease {lease:.0f} s):     {other:6.2f} s until all committed (lease-bound)"
    )
    print(f"  ratio unknowable / same host:          {other / same:6.1f}x")


if __name__ == "__main__":
    main()
