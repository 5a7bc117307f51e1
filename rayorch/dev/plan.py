"""The production topology on one machine, as a plan: which processes, ports and exports.

``rayorch dev up`` starts a Ray head and N worker nodes (separate ``ray start --block``
processes, each with its own temp and working directory and fake GPUs via ``--num-gpus``), an
S3-compatible server (``moto_server``), an MLflow tracking server (PostgreSQL backend store,
artifacts proxied to ``s3://``) and uses the machine's PostgreSQL for the ledger and the table
catalog. This module only decides (pure: values in, a :class:`DevPlan` out); ``dev.run``
starts and stops what it names, and records each process's pid.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "rayorch-dev"
DB_PREFIX = "rayorch_dev"
#: moto accepts any credentials; these are the conventional placeholders.
AWS_KEY, AWS_SECRET, AWS_REGION = "testing", "testing", "us-east-1"


@dataclass(frozen=True, slots=True)
class DevOptions:
    workers: int = 2
    gpus_per_node: int = 8
    cpus_per_node: int = 2  # logical CPUs of each worker node (the head takes no work)
    object_store_mb: int = 256
    pg_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # the server to create DBs on
    python: str = "python"  # the interpreter that runs mlflow / ray / moto
    scripts: str = ""  # the directory of the `ray` and `moto_server` executables

    def __post_init__(self) -> None:
        if self.workers < 0 or self.gpus_per_node < 0 or self.cpus_per_node < 1:
            raise ValueError("workers and gpus must be >= 0, cpus_per_node >= 1")


@dataclass(frozen=True, slots=True)
class Ports:
    """Every port the topology listens on, chosen by the caller (free ports)."""

    s3: int
    mlflow: int
    gcs: int
    dashboard: int
    node: tuple[tuple[int, ...], ...]  # per Ray node: its NODE_PORTS, in that order

    NODE_PORTS = (
        "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
    )  # fmt: skip


def ports_needed(opts: DevOptions) -> int:
    return 4 + (opts.workers + 1) * len(Ports.NODE_PORTS)


def ports_from(opts: DevOptions, free: list[int]) -> Ports:
    """Deal ``ports_needed(opts)`` free ports out to the services."""
    it: Iterator[int] = iter(free)
    s3, mlflow, gcs, dash = next(it), next(it), next(it), next(it)
    node = tuple(tuple(next(it) for _ in Ports.NODE_PORTS) for _ in range(opts.workers + 1))
    return Ports(s3, mlflow, gcs, dash, node)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One process to start: argv, environment additions, working dir, how to know it is up."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    log: str
    url: str
    ready_http: str | None = None  # GET answers 200
    ready_log: str | None = None  # the text appears in its log
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DevPlan:
    root: str
    services: tuple[ServiceSpec, ...]
    databases: tuple[str, ...]
    bucket: str
    env: Mapping[str, str]

    def to_dict(self) -> dict[str, object]:
        return {"root": self.root, "env": dict(self.env), "databases": list(self.databases),
                "services": [{"name": s.name, "url": s.url, "argv": list(s.argv)}
                             for s in self.services]}  # fmt: skip


def plan_topology(opts: DevOptions, root: Path, ports: Ports, tmp_root: Path) -> DevPlan:
    """The services in start order (storage and tracking first, then the Ray head, workers).

    ``root`` holds logs, the nodes' working directories and the state file
    (``$RAYORCH_HOME/dev``); ``tmp_root`` the Ray temp dirs (short: Unix socket paths are
    limited to ~107 bytes).
    """
    pg_base = opts.pg_url.rsplit("/", 1)[0]
    # The S3 server keeps objects in memory, so its data lives exactly as long as the topology;
    # the databases are this topology's own (named after its root) and go with it on `down`.
    # A ledger that outlived its data would claim partitions that no longer exist.
    ledger_db, mlflow_db = database_names(root)
    s3 = f"http://127.0.0.1:{ports.s3}"
    mlflow = f"http://127.0.0.1:{ports.mlflow}"
    gcs = f"127.0.0.1:{ports.gcs}"
    aws = {"AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
           "AWS_DEFAULT_REGION": AWS_REGION, "AWS_REGION": AWS_REGION,
           "AWS_ENDPOINT_URL": s3, "MLFLOW_S3_ENDPOINT_URL": s3}  # fmt: skip
    env = {
        "RAY_ADDRESS": gcs,
        "RAYORCH_DB_URL": f"{pg_base}/{ledger_db}",
        "MLFLOW_TRACKING_URI": mlflow,
        "RAYORCH_STORAGE_URL": f"s3://{BUCKET}/rayorch",
        **aws,
    }
    bin_ = (lambda name: str(Path(opts.scripts) / name)) if opts.scripts else (lambda n: n)
    logs = root / "logs"
    services = [
        ServiceSpec(
            "s3", (bin_("moto_server"), "-H", "127.0.0.1", "-p", str(ports.s3)),
            str(root), str(logs / "s3.log"), s3, ready_http=f"{s3}/moto-api/",
        ),
        ServiceSpec(
            "mlflow",
            (opts.python, "-m", "mlflow", "server",
             "--backend-store-uri", f"{pg_base}/{mlflow_db}".replace(
                 "postgresql://", "postgresql+psycopg://", 1),
             "--artifacts-destination", f"s3://{BUCKET}/mlflow",
             "--host", "127.0.0.1", "--port", str(ports.mlflow), "--workers", "1"),
            str(root), str(logs / "mlflow.log"), mlflow, ready_http=f"{mlflow}/health",
            # One worker (with more, uvicorn leaves TCP_NODELAY off: ~45 ms per REST call) and
            # no job runner (MLflow 3 polls for jobs rayorch never submits). docs/registry.md.
            env={**aws, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
    ]  # fmt: skip
    # Every node carries the exports, as a KubeRay pod's env would (from secrets): a job's
    # driver and workers then reach the ledger, tracking and storage with nothing passed on
    # `ray job submit`. RAYORCH_HOME is the node's own directory, so anything written to a
    # node's local disk shows up there (the end-to-end test checks it holds only caches/logs).
    node_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    for i in range(opts.workers + 1):
        head = i == 0
        name = "ray-head" if head else f"ray-worker-{i}"
        node_dir = root / "nodes" / name
        ray_env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **node_env,
                   "RAYORCH_HOME": str(node_dir / "home")}  # fmt: skip
        argv = [bin_("ray"), "start", "--block", "--disable-usage-stats",
                "--temp-dir", str(tmp_root / f"n{i}"),
                # With workers, the head runs job drivers and system actors only, as on
                # KubeRay (`num-cpus: "0"`): losing a worker moves its work to another.
                "--num-cpus", "0" if head and opts.workers else str(opts.cpus_per_node),
                "--num-gpus", "0" if head else str(opts.gpus_per_node),
                "--object-store-memory", str(opts.object_store_mb * 1024 * 1024)]  # fmt: skip
        for flag, port in zip(Ports.NODE_PORTS, ports.node[i], strict=True):
            argv += [flag, str(port)]
        if head:
            argv += ["--head", "--node-ip-address", "127.0.0.1", "--port", str(ports.gcs),
                     "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(ports.dashboard)]  # fmt: skip
            url = f"http://127.0.0.1:{ports.dashboard}"
        else:
            argv += ["--address", gcs, "--node-ip-address", "127.0.0.1"]
            url = gcs
        services.append(
            ServiceSpec(
                name,
                tuple(argv),
                str(node_dir),
                str(logs / f"{name}.log"),
                url,
                ready_log="Ray runtime started",
                env=ray_env,
            )
        )
    return DevPlan(str(root), tuple(services), (ledger_db, mlflow_db), BUCKET, env)


def database_names(root: Path) -> tuple[str, str]:
    """The ledger/catalog and MLflow database names of the topology rooted at ``root``."""
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"{DB_PREFIX}_{tag}", f"{DB_PREFIX}_{tag}_mlflow"


def env_script(env: Mapping[str, str]) -> str:
    """``env.sh``: the exports a user sources to point rayorch at the topology."""
    lines = ["# rayorch dev up: source this file to use the local cluster topology"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    return "\n".join(lines) + "\n"
