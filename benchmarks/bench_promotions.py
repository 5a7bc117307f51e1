"""Promotions through the coordinator actor vs. MLflow's naive read-check-write, same run.

    RAY_AUTH_MODE=disabled flock /tmp/rayorch-ray.lock python benchmarks/bench_promotions.py

Three measurements on a private local Ray and a SQLite ledger (or ``--db-url
postgresql://...``), for each registry (``--registry local,server``): MLflow on a local SQLite
file, and a real ``mlflow server`` (``http://127.0.0.1:…``) with a PostgreSQL backend store in
its own database (needs ``--pg-url``, the server to create it on, e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``):

1. throughput: promotions/s through the actor with 1 and with N concurrent clients (Ray worker
   processes), each client doing compare-and-set with the version it last saw; lost updates are
   counted from the audit chain (every applied move must start where the previous one ended,
   and every APPLIED a client saw must be in the log);
2. races through the actor: N clients fire the same CAS at the same instant, R rounds: winners;
3. races through MLflow alone: N clients read the alias, check it is the expected version and
   set it at the same instant, R rounds: how many believed they won, and how often the alias
   ends up naming a version other than what a "winner" deployed.

Measured here (2 shared cores, other test runs on the machine, ledger on PostgreSQL,
``--seconds 5 --rounds 10``)::

                                         local (SQLite)   server (mlflow server, PostgreSQL)
    actor, 1 client, promotions/s                  60.8                  4.1
    actor, 8 clients, promotions/s                129.5                 11.7
    lost updates / >1 winner rounds                0 / 0                0 / 0
    naive read-check-write: winners/round           7.90                 7.30

Through the tracking server every promotion costs the public API's HTTP round trips (read the
alias; ``set_registered_model_alias``, which re-reads the model first): the ≥ 100/s target
with 8 clients is NOT met on this machine; the compare-and-set itself (rayorch's row) is not
the bottleneck (the local column uses the same row).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.pop("RAY_ADDRESS", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "bench-model"
ALIAS = "production"


def _client_class():
    import ray

    @ray.remote(num_cpus=0)
    class Client:
        """One promoter in its own worker process."""

        def __init__(self, settings, seed: int) -> None:
            from mlflow.tracking import MlflowClient

            self.settings = settings
            self.rng = random.Random(seed)
            self.mlflow = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)

        def ready(self) -> bool:
            from rayorch.registry import coordinator

            coordinator.get_coordinator(self.settings)
            return True

        def cas_loop(self, versions: list[str], start_at: float, seconds: float) -> dict:
            """CAS as fast as possible for ``seconds``, expecting what was last seen."""
            from rayorch.registry import coordinator

            while time.time() < start_at:
                time.sleep(0.0005)
            seen = coordinator.current_version(MODEL, ALIAS, settings=self.settings)
            counts = {"attempts": 0, "APPLIED": 0, "CONFLICT": 0, "ALREADY_TARGET": 0,
                      "REJECTED": 0}  # fmt: skip
            end = time.time() + seconds
            while time.time() < end:
                target = self.rng.choice([v for v in versions if v != seen])
                r = coordinator.promote(MODEL, target, ALIAS, seen, settings=self.settings)
                counts["attempts"] += 1
                counts[r.outcome.value] += 1
                seen = r.decision.target if r.outcome.succeeded else r.decision.current
            return counts

        def cas_once(self, target: str, expected: str | None, at: float) -> str:
            from rayorch.registry import coordinator

            while time.time() < at:
                time.sleep(0.0002)
            r = coordinator.promote(MODEL, target, ALIAS, expected, settings=self.settings)
            return r.outcome.value

        def naive_once(self, target: str, expected: str | None, at: float) -> dict:
            """MLflow alone: read the alias, check it, set it. Returns whether we 'won'."""
            while time.time() < at:
                time.sleep(0.0002)
            try:
                try:
                    cur = str(self.mlflow.get_model_version_by_alias(MODEL, ALIAS).version)
                except Exception:
                    cur = None
                if cur != expected:
                    return {"won": False, "error": None}
                self.mlflow.set_registered_model_alias(MODEL, ALIAS, target)
                return {"won": True, "error": None}
            except Exception as e:  # e.g. "database is locked" under SQLite
                return {"won": False, "error": type(e).__name__}

    return Client


def audit_check(settings, client_applied: int, since_id: int) -> dict:
    """Lost updates from the audit chain and the clients' own counts."""
    from rayorch.registry.mlflow_view import RegistryView
    from rayorch.registry.queries import history

    rows = [r for r in history(MODEL, ALIAS, settings=settings) if r.id > since_id]
    moved = [r for r in rows if r.moved_alias]
    broken = sum(1 for a, b in itertools.pairwise(moved) if b.from_version != a.to_version)
    alias = RegistryView(settings.mlflow_uri).current(MODEL, ALIAS)
    return {
        "audit_rows": len(rows),
        "applied_in_audit": len(moved),
        "applied_seen_by_clients": client_applied,
        "broken_chain_links": broken,
        "alias_matches_audit": bool(moved) and alias == moved[-1].to_version,
        "lost_updates": broken + abs(len(moved) - client_applied),
        "last_id": rows[-1].id if rows else since_id,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=20, help="race rounds, actor and naive each")
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--db-url", default=None, help="ledger URL (default: SQLite under tmp)")
    ap.add_argument("--registry", default="local,server", help="local, server, or both")
    ap.add_argument("--pg-url", default=os.environ.get("RAYORCH_TEST_PG_URL"),
                    help="PostgreSQL for the tracking server's backend store")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    import ray

    from rayorch.registry.testing import fresh_database, start_mlflow_server, stop_process_group

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    all_results: dict = {}
    try:
        for registry in args.registry.split(","):
            root = Path(tempfile.mkdtemp(prefix=f"bench-promotions-{registry}-"))
            server = None
            uri = None
            if registry == "server":
                if not args.pg_url:
                    sys.exit("--registry server needs --pg-url (or RAYORCH_TEST_PG_URL)")
                backend = fresh_database(args.pg_url, "rayorch_mlflow_bench")
                server, uri = start_mlflow_server(backend, root / "artifacts", root / "server.log")
            try:
                all_results[registry] = measure(args, root, uri)
            finally:
                if server is not None:
                    stop_process_group(server)
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(all_results, indent=2))
        return
    report(args, all_results)


def measure(args: argparse.Namespace, root: Path, uri: str | None) -> dict:
    """The three measurements on one registry (``uri`` None: a local SQLite MLflow)."""
    import ray

    from rayorch.registry import coordinator
    from rayorch.registry.testing import RegistryBuilder
    from rayorch.settings import Settings

    builder = RegistryBuilder(str(root), uri=uri)
    versions = [builder.logged(MODEL, seed=i).version for i in range(args.versions)]
    settings = Settings(
        home=root,
        db_url=args.db_url or f"sqlite:///{root / 'ledger.db'}",
        mlflow_uri=builder.uri,
        ray_address=None,
    )
    results: dict = {"versions": len(versions), "clients": args.clients,
                     "ledger": settings.db_url, "mlflow": builder.uri}  # fmt: skip
    clients: list = []
    try:
        Client = _client_class()
        clients = [Client.remote(settings, i) for i in range(args.clients)]
        ray.get([c.ready.remote() for c in clients])
        last_id = 0

        # 1. throughput through the actor: 1 client, then N clients
        for n in (1, args.clients):
            start_at = time.time() + 0.5
            t0 = start_at
            counts = ray.get(
                [c.cas_loop.remote(versions, start_at, args.seconds) for c in clients[:n]]
            )
            wall = time.time() - t0
            total = {k: sum(c[k] for c in counts) for k in counts[0]}
            check = audit_check(settings, total["APPLIED"], last_id)
            last_id = check.pop("last_id")
            results[f"actor_{n}_clients"] = {
                "promotions_per_s": round(total["attempts"] / wall, 1),
                "applied_per_s": round(total["APPLIED"] / wall, 1),
                **total,
                **check,
            }

        # 2. races through the actor, 3. the naive MLflow read-check-write: same rounds
        for mode in ("actor", "naive"):
            multi, lost, drift, errors, winners_total = 0, 0, 0, 0, 0
            current = coordinator.current_version(MODEL, ALIAS, settings=settings)
            for _ in range(args.rounds):
                targets = random.sample([v for v in versions if v != current], args.clients)
                at = time.time() + 0.2
                if mode == "actor":
                    outs = ray.get([c.cas_once.remote(t, current, at)
                                    for c, t in zip(clients, targets, strict=True)])  # fmt: skip
                    won = [t for t, o in zip(targets, outs, strict=True) if o == "APPLIED"]
                else:
                    outs = ray.get([c.naive_once.remote(t, current, at)
                                    for c, t in zip(clients, targets, strict=True)])  # fmt: skip
                    won = [t for t, o in zip(targets, outs, strict=True) if o["won"]]
                    errors += sum(1 for o in outs if o["error"])
                actual = coordinator.current_version(MODEL, ALIAS, settings=settings)
                winners_total += len(won)
                multi += len(won) > 1
                lost += max(0, len(won) - 1)
                drift += any(t != actual for t in won)  # a 'winner' deployed what the alias isn't
                current = actual
            row = {
                "rounds": args.rounds,
                "mean_winners_per_round": round(winners_total / args.rounds, 2),
                "rounds_with_multiple_winners": multi,
                "lost_updates": lost,
                "rounds_alias_not_deployed": drift,
                "errors": errors,
            }
            if mode == "actor":
                check = audit_check(settings, winners_total, last_id)
                last_id = check.pop("last_id")
                row["audit"] = check
            results[f"race_{mode}"] = row
    finally:
        for c in clients:
            ray.kill(c)
        coordinator.shutdown_coordinator(settings)
    return results


def report(args: argparse.Namespace, all_results: dict) -> None:
    """One column per registry, side by side."""
    names = list(all_results)
    first = all_results[names[0]]
    print(f"promotions benchmark: {first['versions']} versions, ledger {first['ledger']}")
    print("  " + " " * 34 + "".join(f"{n:>22s}" for n in names))

    def row(label: str, cell) -> None:
        print(f"  {label:34s}" + "".join(f"{cell(all_results[n]):>22s}" for n in names))

    for n in (1, args.clients):
        k = f"actor_{n}_clients"
        row(f"actor, {n} client(s), promotions/s", lambda r, k=k: f"{r[k]['promotions_per_s']:.1f}")
        row("  applied/s", lambda r, k=k: f"{r[k]['applied_per_s']:.1f}")
        row("  lost updates", lambda r, k=k: str(r[k]["lost_updates"]))
        row("  alias matches audit", lambda r, k=k: str(r[k]["alias_matches_audit"]))
    for mode in ("actor", "naive"):
        k = f"race_{mode}"
        row(
            f"race via {mode}: winners/round",
            lambda r, k=k: f"{r[k]['mean_winners_per_round']:.2f}",
        )
        row("  rounds with >1 winner", lambda r, k=k: str(r[k]["rounds_with_multiple_winners"]))
        row("  lost updates", lambda r, k=k: str(r[k]["lost_updates"]))
        row(
            "  alias != a winner's deployment",
            lambda r, k=k: str(r[k]["rounds_alias_not_deployed"]),
        )
        row("  errors", lambda r, k=k: str(r[k]["errors"]))


if __name__ == "__main__":
    main()
