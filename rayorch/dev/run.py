"""Start and stop the ``dev.plan`` topology; every process is recorded by pid.

Each service runs in its own session (process group) so that ``down`` can stop it and every
process it spawned (a ``ray start --block`` node's raylet, GCS and workers; MLflow's server
workers) by the recorded pid alone: never ``ray stop``, which would kill every Ray on the
machine. The state file (``$RAYORCH_HOME/dev/state.json``) is written after each start, so a
failed ``up`` is undone by ``down`` too; ``up`` with every recorded process alive returns the
recorded topology unchanged (idempotent).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rayorch.dev.plan import (
    AWS_KEY,
    AWS_REGION,
    AWS_SECRET,
    DevOptions,
    DevPlan,
    ServiceSpec,
    env_script,
    plan_topology,
    ports_from,
    ports_needed,
)
from rayorch.errors import InfrastructureError

READY_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class RunningService:
    name: str
    pid: int
    url: str
    log: str


@dataclass(frozen=True, slots=True)
class DevState:
    env: dict[str, str]
    services: tuple[RunningService, ...]
    env_file: str
    pg_url: str = ""  # the server the topology's own databases live on
    databases: tuple[str, ...] = ()  # dropped on `down`, with the in-memory S3 data

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": dict(self.env),
            "services": [{"name": s.name, "pid": s.pid, "url": s.url} for s in self.services],
        }


def dev_dir(home: Path) -> Path:
    return home / "dev"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process is dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(home: Path) -> DevState | None:
    path = dev_dir(home) / "state.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    services = tuple(RunningService(**s) for s in d["services"])
    return DevState(
        d["env"], services, d["env_file"], d.get("pg_url", ""), tuple(d.get("databases", ()))
    )


def _write_state(
    home: Path, env: dict[str, str], services: list[RunningService], opts: DevOptions,
    plan: DevPlan,
) -> DevState:  # fmt: skip
    d = dev_dir(home)
    env_file = d / "env.sh"
    env_file.write_text(env_script(env))
    state = DevState(env, tuple(services), str(env_file), opts.pg_url, tuple(plan.databases))
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps({**asdict(state), "services": [asdict(s) for s in services]}))
    tmp.replace(d / "state.json")  # atomic: a reader never sees half a state
    return state


def up(home: Path, opts: DevOptions) -> DevState:
    """Start the topology (or return the running one). Raises, after stopping what it
    started, when a service does not come up in time."""
    existing = read_state(home)
    if existing is not None:
        if existing.services and all(alive(s.pid) for s in existing.services):
            return existing
        down(home)  # a partial or dead topology: clear it, then start afresh
    root = dev_dir(home)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.gettempdir()) / f"rdev-{_short_hash(str(root))}"
    plan = plan_topology(opts, root, ports_from(opts, free_ports(ports_needed(opts))), tmp_root)
    started: list[RunningService] = []
    _write_state(home, dict(plan.env), started, opts, plan)  # `down` drops what we create
    try:
        _create_databases(opts.pg_url, plan)
        for svc in plan.services:
            offset = _log_size(svc.log)  # logs are appended to: judge only this start's lines
            started.append(_start(svc))
            _write_state(home, dict(plan.env), started, opts, plan)
            _wait_ready(svc, started[-1], offset)
            if svc.name == "s3":
                _create_bucket(svc.url, plan.bucket)
        _wait_nodes(plan, started)
        return _write_state(home, dict(plan.env), started, opts, plan)
    except BaseException:
        down(home)
        raise


def down(home: Path, timeout_s: float = 10.0) -> list[RunningService]:
    """Stop exactly the recorded processes (and their process groups), newest first, then
    drop the topology's databases: its S3 data was in memory and is gone with the server."""
    state = read_state(home)
    if state is None:
        return []
    for s in reversed(state.services):
        _signal_group(s.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for s in reversed(state.services):
        while group_alive(s.pid) and time.monotonic() < deadline:
            alive(s.pid)  # reaps it if it is our child
            time.sleep(0.1)
        if group_alive(s.pid):
            _signal_group(s.pid, signal.SIGKILL)
    for s in state.services:
        while alive(s.pid) and time.monotonic() < deadline + 10:
            time.sleep(0.1)
    if state.databases:
        _drop_databases(state.pg_url, state.databases)
    (dev_dir(home) / "state.json").unlink(missing_ok=True)
    return list(state.services)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _start(svc: ServiceSpec) -> RunningService:
    Path(svc.cwd).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **svc.env}
    env.pop("RAY_ADDRESS", None)  # a node joins by its --address, never by the caller's env
    with open(svc.log, "ab") as log:
        proc = subprocess.Popen(
            list(svc.argv), cwd=svc.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return RunningService(svc.name, proc.pid, svc.url, svc.log)


def _log_size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def _log_since(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _wait_nodes(plan: DevPlan, started: list[RunningService]) -> None:
    """Every Ray node of the plan is ALIVE in the cluster (a `ray start` that printed
    "started" can still fail to register with an overloaded GCS)."""
    nodes = [s for s in plan.services if s.name.startswith("ray-")]
    head = next((s for s in started if s.name == "ray-head"), None)
    if head is None:
        return
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = -1
    while time.monotonic() < deadline:
        for run in started:
            if run.name.startswith("ray-") and not alive(run.pid):
                raise InfrastructureError(
                    f"dev node {run.name} exited after starting; see {run.log}:\n{_tail(run.log)}",
                    service=run.name,
                    log=run.log,
                )
        seen = _alive_nodes(head.url)
        if seen == len(nodes):
            return
        time.sleep(0.5)
    raise InfrastructureError(
        f"only {seen} of {len(nodes)} Ray nodes joined the cluster in {READY_TIMEOUT_S:.0f} s; "
        f"see the logs under {Path(head.log).parent}",
        service="ray",
    )


def _alive_nodes(dashboard: str) -> int:
    try:
        with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=1000", timeout=5) as r:
            result = json.loads(r.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return -1
    return sum(1 for n in result if n.get("state") == "ALIVE")


def _wait_ready(svc: ServiceSpec, run: RunningService, offset: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive(run.pid):
            raise InfrastructureError(
                f"dev service {svc.name} exited while starting; see {svc.log}:\n{_tail(svc.log)}",
                service=svc.name,
                log=svc.log,
            )
        if svc.ready_http is not None and _http_ok(svc.ready_http):
            return
        if svc.ready_log is not None and svc.ready_log in _log_since(svc.log, offset):
            return
        time.sleep(0.25)
    raise InfrastructureError(
        f"dev service {svc.name} did not come up in {READY_TIMEOUT_S:.0f} s; see {svc.log}",
        service=svc.name,
        log=svc.log,
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _tail(path: str, n: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def _admin(pg_url: str, what: str) -> Iterator[Any]:
    """An autocommit connection to the server at ``pg_url`` (CREATE/DROP DATABASE)."""
    from sqlalchemy import create_engine

    eng = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            yield c
    except Exception as e:
        raise InfrastructureError(
            f"cannot {what} on {pg_url}: {e}. Start PostgreSQL (127.0.0.1:5432) or pass --pg-url.",
            pg_url=pg_url,
        ) from e
    finally:
        eng.dispose()


def _create_databases(pg_url: str, plan: DevPlan) -> None:
    """The ledger/catalog and MLflow databases on the machine's PostgreSQL, if missing."""
    from sqlalchemy import text

    with _admin(pg_url, "create the dev databases") as c:
        have = {r[0] for r in c.execute(text("SELECT datname FROM pg_database"))}
        for db in plan.databases:
            if db not in have:
                c.execute(text(f'CREATE DATABASE "{db}"'))


def _drop_databases(pg_url: str, names: tuple[str, ...]) -> None:
    from sqlalchemy import text

    with _admin(pg_url, f"drop the dev databases {', '.join(names)}") as c:
        for db in names:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=AWS_KEY,
        aws_secret_access_key=AWS_SECRET, region_name=AWS_REGION,
    )  # fmt: skip
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now (held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def default_options(workers: int, gpus_per_node: int, pg_url: str | None) -> DevOptions:
    """Options for this interpreter (its ``ray``, ``moto_server`` and ``mlflow``)."""
    scripts = str(Path(sys.executable).parent)
    if not (Path(scripts) / "ray").exists():
        found = shutil.which("ray")
        scripts = str(Path(found).parent) if found else ""
    return DevOptions(
        workers=workers,
        gpus_per_node=gpus_per_node,
        python=sys.executable,
        scripts=scripts,
        **({"pg_url": pg_url} if pg_url else {}),
    )


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]
