"""The notebooks execute top to bottom (their own asserts check the library's numbers), are
stored without outputs, and match their generator `notebooks/_build.py`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_prototype_a_loss.ipynb", "02_inspect_rewards.ipynb", "03_tiny_grpo_loop.ipynb"]
CELL_TIMEOUT_S = 240


def _builder():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    assert sorted(_builder().NOTEBOOKS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs_and_up_to_date(name):
    text = (NOTEBOOKS / name).read_text()
    nb = json.loads(text)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code cells tests nothing"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert text == _builder().render(name), "stale: run `python notebooks/_build.py`"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError (with the traceback) on any failing cell
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in ran)
    errors = [o for c in ran for o in c.outputs if o.output_type == "error"]
    assert not errors
