"""``entk-fast spectrum --dry-run``: the plan of a checkpoint's spectrum, nothing computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entk_fast.cli import main
from entk_fast.paper import ModAddConfig, train_modadd


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "modadd"
    config = ModAddConfig(p=7, hidden=16, epochs=10, checkpoint_every=10)
    train_modadd(config, out, progress=False, plot=False)
    return out


def test_dry_run_prints_the_plan(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in run.iterdir())
    assert main(["spectrum", str(run), "--step", "10", "--dry-run"]) == 0
    text = capsys.readouterr().out
    # the spectrum job's kernel: traced over the 49 pairs, all 49 eigenpairs, float64
    assert text.startswith("entk_plan: top 49 of the kernel of 49×49 (trace, N = 49")
    assert "method: dense" in text and "structured: W1.weight, W2.weight" in text
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written


def test_dry_run_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["spectrum", str(run), "--step", "10", "--dry-run", "--json", "--k", "5"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["step"] == 10 and plan["k"] == 5 and plan["method"] == "dense"
    methods = {e["method"]: e for e in plan["estimates"]}
    assert methods["dense"]["fits"] and methods["dense"]["seconds"] > 0
    assert methods["matrix_free"]["paths"] == {"W1.weight": "factored", "W2.weight": "factored"}


def test_out_is_required_without_dry_run(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spectrum", str(run), "--step", "10"]) == 2
    assert "--out is required" in capsys.readouterr().err
