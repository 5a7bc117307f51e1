"""`rayorch simulate`: replay a workload through the real admission/placement code, per policy."""

from __future__ import annotations

import typer
from rich.table import Table

from rayorch.cli.common import JsonOpt, cli_errors, emit_json, out
from rayorch.errors import ConfigError


def simulate(
    cluster: str = typer.Option("configs/cluster.yaml", "--cluster", help="Quotas and nodes."),
    workload: str = typer.Option(..., "--workload", help="e.g. configs/workloads/fraud-90d.yaml"),
    policies: str = typer.Option(
        "rayorch,first-fit,fifo", "--policies", help="Comma list of: rayorch, first-fit, fifo."
    ),
    trace: str | None = typer.Option(
        None, "--trace", help="Write every decision (with its reason) per policy to this JSON."
    ),
    plot: str | None = typer.Option(
        None, "--plot", help="Draw GPU occupancy per node over time (first policy) to this PNG."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Utilization, stranded GPUs, production wait and deadline misses, side by side."""
    from rayorch.scheduling.admission import POLICIES
    from rayorch.scheduling.quota import load_cluster
    from rayorch.scheduling.simulator import simulate as run
    from rayorch.scheduling.workload import expand, load_workload, node_shapes

    with cli_errors(as_json):
        spec = load_cluster(cluster)
        wl = load_workload(workload)
        shapes = node_shapes(wl, spec)
        if not shapes:
            raise ConfigError(
                f"{cluster}: `nodes:` is empty and {workload} declares none; the simulator "
                "needs an inventory",
                file=cluster,
                field="nodes",
            )
        names = [p.strip() for p in policies.split(",") if p.strip()]
        for n in names:
            if n not in POLICIES:
                raise ConfigError(
                    f"--policies: unknown policy {n!r}; choose from {', '.join(POLICIES)}",
                    field="policies",
                )
        jobs = expand(wl)
        results = [
            run(
                spec,
                shapes,
                jobs,
                POLICIES[n],
                wl.yield_latency_s,
                wl.resume_overhead_s,
                trace=bool(trace or plot),
            )
            for n in names
        ]
        files: dict[str, str] = {}
        if trace:
            import json
            from pathlib import Path

            Path(trace).write_text(
                json.dumps(
                    {
                        "workload": wl.name,
                        "policies": {
                            r.policy: {"decisions": r.trace, "occupancy": r.occupancy}
                            for r in results
                        },
                    },
                    default=str,
                )
            )
            files["trace"] = trace
        if plot:
            from rayorch.scheduling.plot import plot_occupancy

            files["plot"] = plot_occupancy(results[0], [s.gpus for s in shapes], plot)
        if as_json:
            emit_json(
                {
                    "cluster": cluster,
                    "workload": wl.name,
                    "jobs": len(jobs),
                    "results": [r.to_dict() for r in results],
                    "files": files,
                }
            )
            return
        table = Table(
            title=f"simulate {wl.name}: {len(jobs)} jobs on "
            f"{len(shapes)} nodes ({', '.join(sorted({str(s) for s in shapes}))})"
        )
        table.add_column("metric")
        for r in results:
            table.add_column(r.policy, justify="right")
        rows = [
            ("GPU utilization while work queued", lambda r: f"{r.util_while_queued:.1%}"),
            ("GPU utilization overall", lambda r: f"{r.util_overall:.1%}"),
            ("stranded GPUs per node (mean)", lambda r: f"{r.stranded_gpus_mean:.2f}"),
            ("production wait mean (min)", lambda r: f"{r.production_wait_mean_min:.1f}"),
            ("production wait max (min)", lambda r: f"{r.production_wait_max_min:.1f}"),
            ("production deadline misses", lambda r: f"{r.deadline_misses}/{r.production_jobs}"),
            ("preemptions (checkpointed)", lambda r: str(r.preemptions)),
            (
                "preemptions per production job (max)",
                lambda r: str(r.preemptions_per_production_max),
            ),
            (
                "most preemptions of one unit in an hour",
                lambda r: str(r.max_preemptions_per_unit_hour),
            ),
            (
                "backfill done after (h)",
                lambda r: f"{r.backfill_done_h:.1f}" if r.backfill_done_h else "-",
            ),
            ("rejected at submit", lambda r: str(len(r.rejected))),
        ]
        for label, fmt in rows:
            table.add_row(label, *(fmt(r) for r in results))
        out.print(table)
        for k, v in files.items():
            out.print(f"{k}: {v}")
