"""GPU occupancy per node over time, production jobs marked (``rayorch simulate --plot``).

Reads the simulator's occupancy intervals; matplotlib is imported here only (Agg backend, no
display needed). Effectful: writes a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def plot_occupancy(result: Any, node_gpus: Sequence[int], path: str) -> str:
    """One row per node: stacked GPUs in use (backfill grey, production red); production
    starts marked with a triangle. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_node: dict[str, list[dict[str, Any]]] = {}
    for iv in result.occupancy:
        by_node.setdefault(iv["node"], []).append(iv)
    names = sorted(by_node) or ["node-0"]
    fig, axes = plt.subplots(
        len(names), 1, figsize=(12, 1.3 * len(names) + 1), sharex=True, squeeze=False
    )
    for ax, nid, cap in zip(axes[:, 0], names, list(node_gpus) + [8] * len(names), strict=False):
        ivs = sorted(by_node.get(nid, []), key=lambda iv: (iv["start"], iv["workload_id"]))
        lanes: list[float] = []  # end time of each 1-GPU lane
        for iv in ivs:
            # first-fit the interval into contiguous GPU lanes so bars do not overlap
            for base in range(cap - iv["gpus"] + 1):
                if all(
                    base + k >= len(lanes) or lanes[base + k] <= iv["start"]
                    for k in range(iv["gpus"])
                ):
                    break
            else:
                base = 0
            while len(lanes) < base + iv["gpus"]:
                lanes.append(0.0)
            for k in range(iv["gpus"]):
                lanes[base + k] = iv["end"]
            prod = iv["priority"] == "production"
            ax.broken_barh(
                [(iv["start"] / 3600, (iv["end"] - iv["start"]) / 3600)],
                (base, iv["gpus"]),
                facecolors="tab:red" if prod else "lightgrey",
                edgecolors="black" if prod else "grey",
                linewidth=0.3,
            )
            if prod:
                ax.plot(iv["start"] / 3600, cap + 0.3, marker="v", color="tab:red", ms=5)
        ax.set_ylim(0, cap + 1)
        ax.set_ylabel(f"{nid[-12:]}\nGPUs", fontsize=8)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle(
        f"{result.policy}: GPU occupancy per node (red = production, v = production start)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
