"""Entry point for `ray job submit`: the same backfill the CLI runs, from arguments.

    ray job submit --working-dir . -- python jobs/backfill.py \
        --config configs/fraud.yaml --start 2026-10-01 --end 2026-10-02

RAY_ADDRESS (set by `ray job submit`) makes the driver attach to the cluster. Point
RAYORCH_DB_URL at PostgreSQL and MLFLOW_TRACKING_URI at a tracking server when the cluster
has more than one machine. A retried job attempt with the same arguments resumes the backfill.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's rayorch

from rayorch.cli.app import main

if __name__ == "__main__":
    main(["backfill", *sys.argv[1:]])
