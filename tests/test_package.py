"""The package's top level: every public name resolves, and importing a submodule (what a Ray
worker does for a feature task or a Train loop) does not import the driver and the ledger."""

from __future__ import annotations

import subprocess
import sys

import pytest

import rayorch
from tests.helpers import REPO


def test_every_public_name_resolves_to_its_module_object():
    import rayorch.api as api_module
    import rayorch.spec as spec_module

    for name in rayorch.__all__:
        assert getattr(rayorch, name) is not None, name
    assert rayorch.run_backfill is api_module.run_backfill
    assert rayorch.load_pipeline is spec_module.load_pipeline
    assert set(rayorch.__all__) <= set(dir(rayorch))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = rayorch.nope


def test_a_submodule_import_leaves_the_driver_and_ledger_unimported():
    code = (
        "import sys, rayorch.backfill.work, rayorch.partitions; "
        "print(sorted(m for m in ('rayorch.api', 'rayorch.backfill.driver', 'sqlalchemy')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
