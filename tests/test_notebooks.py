"""The notebooks run top to bottom (nbclient, a real kernel) and are committed without outputs.

Executed copies go to test-artifacts/notebooks/ for a look at the plots."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.e2e  # the end-to-end set: runs after the core suite

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "notebooks"
NOTEBOOKS = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
BUDGET_S = 180  # each notebook must finish within 3 minutes on 2 cores


def test_the_three_notebooks_exist_and_are_stripped():
    assert NOTEBOOKS == [
        "01_quickstart.ipynb",
        "02_gpu_fragmentation.ipynb",
        "03_reproduce_and_promote.ipynb",
    ]
    for name in NOTEBOOKS:
        nb = nbformat.read(NB_DIR / name, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        assert all(not c.outputs and c.execution_count is None for c in code), (
            f"{name} has outputs; clear them before committing"
        )


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, home, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=BUDGET_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NB_DIR)}},
    )
    started = time.monotonic()
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / name)
    took = time.monotonic() - started
    assert took < BUDGET_S, f"{name} took {took:.0f}s"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
