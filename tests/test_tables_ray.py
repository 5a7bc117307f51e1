"""Feature tables end to end on a real S3 API: a SIGKILLed driver and concurrent overlapping
backfills, then the table read by pyiceberg -> pandas and by Ray Data: exactly the raw rows,
no duplicate keys, equal to a clean run on local disk. (The same on local disk:
tests/test_processes.py.)"""

from __future__ import annotations

import dataclasses
import json
import signal

import pandas as pd
import pytest

from rayorch.api import generate_data, run_backfill
from rayorch.data import storage
from rayorch.data.reader import pin_window, read_table_ray, read_window, split_window
from rayorch.data.tables import StepTable, committed_rows
from rayorch.ledger.store import Ledger
from rayorch.partitions import PartitionKey
from rayorch.settings import load_settings
from rayorch.spec import load_pipeline
from tests.helpers import json_out, run_cli, small_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
CITIES = ["SF", "NYC", "LA"]
DAYS = ["2026-10-01", "2026-10-02", "2026-10-03"]


def _by_partition(df: pd.DataFrame) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for (city, date), g in df.groupby(["city", "date"]):
        rows = g.drop(columns=["city", "date"]).sort_values("transaction_id")
        out[f"city={city}/date={date}"] = rows.to_dict("records")
    return out


def test_killed_and_concurrent_backfills_on_s3_equal_a_clean_run(
    ray_session, s3_storage, home, tmp_path
):
    cfg = small_config(tmp_path, params={"sleep_s": 0.2})
    spec = load_pipeline(cfg)
    st = load_settings()
    assert st.storage_root == s3_storage
    generate_data(spec, DAYS[0], DAYS[-1], settings=st)
    env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    base = ["backfill", "-c", str(cfg), "--max-concurrency", "2", "--json"]
    base.append("--allow-local-state")  # the ledger is SQLite on this (single-node) cluster
    first = [*base, "--start", DAYS[0], "--end", DAYS[1]]
    killed = run_cli(*first, env={**env, "RAYORCH_CRASH_AT": "after_commit:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the killed command again, and an overlapping one, at the same time
    from tests.test_processes import _cli_proc

    procs = [
        _cli_proc(first, env),
        _cli_proc([*base, "--start", DAYS[1], "--end", DAYS[2], "--on-conflict", "wait"], env),
    ]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        docs.append(json.loads(out))
    assert docs[0]["resumed"] and docs[0]["reconciled"]  # the unpublished commit rolled forward
    led = Ledger(st.db_url)
    keys = sorted(e["run_key"] for e in led.events(event_name="COMMIT"))
    led.close()
    assert len(keys) == len(set(keys)) == len(DAYS) * len(CITIES)  # one commit per unit

    # pyiceberg -> pandas: exactly the raw rows, no duplicate keys
    df = committed_rows(spec, st).to_pandas()
    assert not df["transaction_id"].duplicated().any()
    raw = pd.concat(
        [
            storage.read_parquet(
                f"{st.resolve(spec.source.path)}/city={c}/date={d}/hour={h:02d}/part-0.parquet",
                columns=["transaction_id"],
            ).to_pandas()
            for c in CITIES
            for d in DAYS
            for h in range(spec.freshness.expected_sub_partitions)
        ]
    )
    assert sorted(df["transaction_id"]) == sorted(raw["transaction_id"])
    table = StepTable.for_spec(spec, st)

    # Ray Data: its own Iceberg reader and rayorch's pinned-snapshot reader agree
    ray_df = read_table_ray(table).to_pandas()
    keys_all = [PartitionKey.of(city=c, date=d) for c in CITIES for d in DAYS]
    window = pin_window(table, keys_all)
    pinned = read_window(window).to_pandas()
    assert len(ray_df) == len(pinned) == len(df)
    assert sorted(pinned["transaction_id"]) == sorted(ray_df["transaction_id"])
    # A training split of the window, in the unit's task (small) and by Ray Data (over the
    # bound): disjoint, covering every row, the held-out fraction, the same rows for the seed.
    ids = list(pinned["transaction_id"])
    for in_task_max in (window.size_bytes, 0):
        split = [
            [
                list(d.to_pandas()["transaction_id"])
                for d in split_window(
                    window,
                    ["transaction_id"],
                    test_size=0.25,
                    seed=3,
                    in_task_max_bytes=in_task_max,
                )
            ]
            for _ in range(2)
        ]
        (tr, va), (tr2, va2) = split
        assert not set(tr) & set(va) and sorted(tr + va) == sorted(ids), in_task_max
        assert abs(len(va) - len(ids) / 4) <= 1, (in_task_max, len(va), len(ids))
        assert sorted(va2) == sorted(va) and sorted(tr2) == sorted(tr), in_task_max
        assert va != ids[-len(va) :], "the held-out rows were not shuffled"
        if in_task_max:  # in the task the order is the seed's too (a resume replays it)
            assert (tr2, va2) == (tr, va)

    # equal to a clean run on local disk
    clean = dataclasses.replace(load_settings(tmp_path / "clean"), storage_url=None)
    generate_data(spec, DAYS[0], DAYS[-1], settings=clean)
    s = run_backfill(spec, DAYS[0], DAYS[-1], settings=clean)
    assert s.ok, s.to_dict()
    assert not storage.is_remote(StepTable.for_spec(spec, clean).location)
    assert _by_partition(committed_rows(spec, clean).to_pandas()) == _by_partition(df)
    listed = run_cli("tables", "list", "--json", env=env)
    [info] = json_out(listed)["tables"]
    assert info["location"].startswith(s3_storage) and info["current_snapshot"] == (
        window.snapshot_id
    )
