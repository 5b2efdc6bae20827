"""notebooks/finetune.ipynb runs top to bottom in a real Jupyter kernel (its fast mode), on this backend.

The kernel is this interpreter (`sys.executable`, through a kernelspec written for the
test) with this process' `KERAS_BACKEND`, so `scripts/test_backends.py` runs the
notebook once per backend.
"""

import json
import os
import sys
from pathlib import Path

import pytest

import keras

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "finetune.ipynb"
BACKEND = keras.backend.backend()
TIMEOUT_PER_CELL = 300


def _cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_committed_notebook_has_no_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    for index, cell in enumerate(_cells(notebook)):
        assert cell["outputs"] == [], f"code cell {index} has committed outputs"
        assert cell["execution_count"] is None, f"code cell {index} has an execution count"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_notebook_helpers_live_in_the_package():
    """Cells call hatnet_keras; they define no functions or classes of their own."""
    notebook = json.loads(NOTEBOOK.read_text())
    for cell in _cells(notebook):
        for line in "".join(cell["source"]).splitlines():
            assert not line.lstrip().startswith(("def ", "class ")), line


@pytest.fixture
def kernel_environment(tmp_path, monkeypatch):
    """A `python3` kernelspec that starts this interpreter, ahead of any other on the path."""
    ipykernel_kernelspec = pytest.importorskip("ipykernel.kernelspec")
    kernels = tmp_path / "jupyter" / "kernels"
    kernels.mkdir(parents=True)
    ipykernel_kernelspec.write_kernel_spec(
        str(kernels / "python3"),
        overrides={
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        },
    )
    work = tmp_path / "work"
    work.mkdir()
    variables = {
        "JUPYTER_PATH": str(tmp_path / "jupyter"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "KERAS_BACKEND": BACKEND,
        # The inline backend: headless (Agg underneath), and figures become outputs.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "HATNET_NOTEBOOK_FAST": "1",
        "HATNET_NOTEBOOK_DIR": str(work),
        "HATNET_NOTEBOOK_DATA_DIR": str(tmp_path / "tensorflow_datasets"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name in ("HATNET_NOTEBOOK_DATASET", "HATNET_NOTEBOOK_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    return work


def _text(outputs):
    parts = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def test_notebook_runs_top_to_bottom(kernel_environment):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=TIMEOUT_PER_CELL,
        resources={"metadata": {"path": str(kernel_environment)}},
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

    outputs = [output for cell in _cells(notebook) for output in cell["outputs"]]
    text = _text(outputs)
    assert f"backend {BACKEND}" in text
    assert "6 classes: ['circle', 'cross', 'diamond', 'ring', 'square', 'triangle']" in text
    assert "trained 1 epochs" in text
    assert "test: accuracy" in text
    assert "stage2_block1: feature map (4, 4)" in text
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 4  # samples, training curves, predictions, attention and CAM

    work = kernel_environment
    assert (work / "hatnet_finetuned.keras").is_file()
    if BACKEND == "torch":  # the torch backend exports a SavedModel only with torch_xla
        assert "SavedModel export skipped" in text
    else:
        assert (work / "hatnet_finetuned_savedmodel" / "saved_model.pb").is_file()
        assert "served probabilities' largest difference" in text
