"""Type checkers see the public API: every name in ``entk_fast.__all__`` has a real type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import entk_fast

mypy_api = pytest.importorskip("mypy.api")

PYTHON_DIR = Path(__file__).resolve().parents[1] / "python"


def test_public_names_are_typed(tmp_path: Path) -> None:
    names = [name for name in entk_fast.__all__ if name != "__version__"]
    source = "import entk_fast\n" + "".join(f"reveal_type(entk_fast.{n})\n" for n in names)
    script = tmp_path / "reveal.py"
    script.write_text(source, encoding="utf-8")
    stdout, stderr, _ = mypy_api.run(
        [
            str(script),
            "--ignore-missing-imports",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--python-executable",
            "python",
        ]
    )
    revealed = re.findall(r'Revealed type is "(.*)"', stdout)
    assert len(revealed) == len(names), stdout + stderr
    untyped = [name for name, kind in zip(names, revealed, strict=True) if kind == "Any"]
    assert not untyped, f"seen as Any by mypy: {untyped}"
    by_name = dict(zip(names, revealed, strict=True))
    assert "EmpiricalNTK" in by_name["empirical_ntk"]
    assert "NTKSpectrum" in by_name["entk_spectrum"]
    assert "Run" in by_name["load_run"]
