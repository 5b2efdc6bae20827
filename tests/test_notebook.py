"""The fine-tuning notebook runs top to bottom (in its fast mode)."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "fine_tune_hatnet.ipynb"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HATNET_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("HATNET_NOTEBOOK_DIR", str(tmp_path))
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace = {"__name__": "__notebook__"}
    for index, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[code cell {index}]", "exec"), namespace)
    assert (tmp_path / "hatnet_shapes.keras").exists()
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "P5" in out
    assert len(namespace["history"].history["loss"]) == 1
