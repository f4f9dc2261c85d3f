"""The demo reproduces the paper's modular-addition result end to end."""

from __future__ import annotations

import json

from entk_fast.cli import main
from entk_fast.paper.demo import run_modadd_demo


def test_synthetic_demo_via_cli_finds_the_planted_cliff(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["demo", "--synthetic", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["cliffs"][0]["index"] == summary["rank"] == 12
    assert summary["overlap"] > 11.9
    assert summary["topk_max_rel_diff"] < 1e-10
    assert "principal angles" in capsys.readouterr().out


def test_demo_json_prints_one_object_and_narrates_on_stderr(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["demo", "--synthetic", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["demo"] == "synthetic" and summary["cliffs"][0]["index"] == 12
    assert captured.out.count("\n") == 1
    assert "principal angles" in captured.err and f"summary written to {out}" in captured.err
    assert json.loads(out.read_text())["rank"] == 12


def test_modadd_demo_finds_the_fourier_cliffs():
    summary = run_modadd_demo(p=29, epochs=500, seed=0, progress=False)
    assert summary["accuracy"] == "train acc 100%, test acc 100%"
    # arXiv 2510.00468 (modular addition): one isolated top eigenvalue, then cliffs after 57 and 113 eigenvectors.
    assert {c["index"] for c in summary["cliffs"]} == {1, 57, 113}
    o = summary["overlaps"]
    assert o["a"]["first_cliff"] > 27.0 and o["b"]["first_cliff"] > 27.0
    assert o["a+b"]["second_cliff"] > 25.5 and o["a-b"]["second_cliff"] > 24.0
    for name in ("a+b", "a-b"):
        assert o[name]["first_cliff"] < 0.5
    for name in ("a", "b"):
        assert o[name]["second_cliff"] < 0.5
    # the W1 layer kernel has its sharp cliff after 1 + 2(p-1) = 57 eigenvalues
    assert summary["layer_cliffs"]["W1"][0]["index"] == 57


def test_demo_rejects_bad_modulus(capsys):
    assert main(["demo", "--p", "1", "--epochs", "1"]) == 2
    assert "entk-fast: error: p: expected an odd integer ≥ 3, got 1" in capsys.readouterr().err
    assert main(["demo", "--p", "10"]) == 2  # refused before training, not after
    assert "p: expected an odd integer ≥ 3, got 10" in capsys.readouterr().err


def test_demo_refuses_bad_out_and_seed_before_any_work(tmp_path, capsys):
    import os

    assert main(["demo", "--synthetic", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["demo", "--synthetic", "--out", str(tmp_path / "missing" / "s.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere
            assert main(["demo", "--synthetic", "--out", str(locked / "s.json")]) == 2
            assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    assert main(["demo", "--seed", "-1"]) == 2
    err = capsys.readouterr()
    assert "--seed must be an integer >= 0" in err.err and "[1/3]" not in err.out


def test_demo_and_train_run_without_the_optional_extras(tmp_path):
    """`pip install .` alone (no matplotlib, no dask) runs the README's first command: the
    package's core dependencies do not include the extras, and with their imports blocked the
    demo still runs and training writes its run without the curve (and says so)."""
    import subprocess
    import sys
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    )
    core = " ".join(pyproject["project"]["dependencies"])
    assert "matplotlib" not in core and "dask" not in core and "zarr" not in core
    blocked = (
        "import sys\n"
        "for name in ('matplotlib', 'dask', 'distributed', 'zarr', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "from entk_fast.cli import main\n"
        "status = main(['demo', '--p', '7', '--epochs', '20', '--no-progress'])\n"
        "status |= main(['train', 'modadd', '--p', '7', '--epochs', '3', '--no-progress',"
        f" '--out', {str(tmp_path / 'run')!r}])\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "run" / "training_curve.png").exists()
    assert "matplotlib is not installed" in done.stderr
