"""The notebooks execute top to bottom (their own asserts check the library's numbers) and are
stored without outputs. The committed `.ipynb` files are the source (see docs/development.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_prototype_a_loss.ipynb", "02_inspect_rewards.ipynb", "03_tiny_grpo_loop.ipynb"]
CELL_TIMEOUT_S = 240
CLEAR_HINT = "clear its outputs before committing (docs/development.md#notebooks)"


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "a notebook without code cells tests nothing"
    assert all(c.outputs == [] and c.execution_count is None for c in code), CLEAR_HINT
    assert nb.metadata["kernelspec"]["name"] == "python3"
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids), "cell ids must be unique"


def _one_device_flags() -> str:
    """XLA_FLAGS without the test session's 8 simulated devices: the kernel sees one CPU device,
    as on a user's machine (the notebooks' sharded cells run on whatever devices there are)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", _one_device_flags())
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) on any failing cell
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in ran)
    errors = [o for c in ran for o in c.outputs if o.output_type == "error"]
    assert not errors
