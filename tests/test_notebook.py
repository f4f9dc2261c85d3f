"""The example notebook runs from top to bottom and reads the features it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "modadd_features.ipynb"


def test_example_notebook_runs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    outputs = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ]
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert "final test accuracy 100%" in text
    assert "weakest frequency's best atom after the rotation" in text
    html = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("EmpiricalNTK" in page for page in html)  # the compact HTML summary
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2  # the spectrum and the Fourier heatmaps, shown inline
