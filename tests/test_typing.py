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
    assert "ModuleType" in by_name["linalg"]  # the submodule, not Any


def test_all_names_every_lazy_export() -> None:
    # __all__ is a literal list (static tools read it); it must not drift from the lazy table
    assert set(entk_fast._LAZY) <= set(entk_fast.__all__)
    assert len(entk_fast.__all__) == len(set(entk_fast.__all__))


def test_public_names_are_typed_for_pyright(tmp_path: Path) -> None:
    import json
    import shutil
    import subprocess
    import sys

    pyright = shutil.which("basedpyright")
    if pyright is None:
        pytest.skip("basedpyright is not installed (it is in the test extra)")
    names = [name for name in entk_fast.__all__ if name != "__version__"]
    source = "import entk_fast\n" + "".join(f"reveal_type(entk_fast.{n})\n" for n in names)
    (tmp_path / "reveal.py").write_text(source, encoding="utf-8")
    (tmp_path / "pyrightconfig.json").write_text(
        json.dumps({"typeCheckingMode": "standard", "pythonVersion": "3.10"}), encoding="utf-8"
    )
    done = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", sys.executable, "reveal.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    revealed = {
        d["range"]["start"]["line"]: re.fullmatch(r'Type of ".*" is "(.*)"', d["message"], re.S)
        for d in report["generalDiagnostics"]
        if d["severity"] == "information"
    }
    kinds = [revealed[line + 1] for line in range(len(names))]
    assert all(kinds), done.stdout
    by_name = {name: m.group(1) for name, m in zip(names, kinds, strict=True) if m}
    # Unknown: pyright could not infer it; a bare Any or an Any return: untyped for the user
    untyped = [
        name
        for name, kind in by_name.items()
        if "Unknown" in kind or kind == "Any" or kind.endswith("-> Any")
    ]
    assert not untyped, {name: by_name[name] for name in untyped}
    assert by_name["empirical_ntk"].endswith("-> EmpiricalNTK")
    assert by_name["entk_topk"].endswith("-> NTKSpectrum")
