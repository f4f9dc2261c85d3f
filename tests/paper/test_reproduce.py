"""The paper's findings reproduced end to end (arXiv 2510.00468), at other sizes and seeds
than the defaults, and the ``entk-fast reproduce`` command's report and reuse of finished work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from entk_fast.cli import main
from entk_fast.paper.reproduce import Plan, reproduce
from entk_fast.paper.tasks.modadd import ModAddConfig
from entk_fast.paper.tasks.tms import TMSConfig

SMALL_TMS = TMSConfig(n_features=20, n_hidden=5, sparsity=0.3, n_points=200, steps=3000, seed=1)


def _failed(report: dict) -> list[str]:
    return [
        f"{name}: {text}"
        for name, checks in report["checks"].items()
        for text, ok in checks.items()
        if not ok
    ]


def test_modular_addition_and_grokking_at_p23_and_another_seed(tmp_path: Path) -> None:
    config = ModAddConfig(p=23, seed=1, data_seed=1)
    plan = Plan(tms=(SMALL_TMS,), modadd=config)
    report = reproduce(["modadd", "grokking"], tmp_path, plan=plan, progress=False)
    assert not _failed(report)
    modadd = report["sections"]["modadd"]
    assert [c[0] for c in modadd["cliffs"][:2]] == [1, 45]
    assert modadd["overlaps"]["2-45"]["a"] > 21.2 and modadd["overlaps"]["2-45"]["b"] > 21.2
    assert modadd["overlaps"]["46-89"]["a+b"] > 20.0
    # W₂'s traced kernel is ∝ ⟨h_n, h_n'⟩ of the H = 512 hidden activations: rank 512 < 529
    # samples; that rank cliff is reported apart and is not a feature cliff.
    w2 = modadd["layers"]["W2"]
    assert w2["rank"] == 512 and [c[0] for c in w2["rank_cliffs"]] == [512]
    assert 512 not in [c[0] for c in w2["cliffs"]]
    grok = report["sections"]["grokking"]
    assert abs(grok["onset"] - grok["test_acc_above_50"]) <= 30
    assert grok["n_checkpoints"] == 51


def test_tms_feature_recovery_at_reduced_size(tmp_path: Path) -> None:
    plan = Plan(tms=(SMALL_TMS,), modadd=ModAddConfig(p=5, epochs=1))
    report = reproduce(["tms"], tmp_path, plan=plan, progress=False)
    numbers = report["sections"]["tms"]["5-0.3"]
    n_rec = numbers["n_reconstructed"]
    zero = numbers["beta=0"]
    (first, ratio), (second, _) = zero["cliffs"][:2]
    assert first == 20 and ratio > 5  # the cliff right after n = 20
    assert abs(second - n_rec) <= 2  # the second at the reconstructed features
    assert numbers["beta=0.3"]["distinct_features_top_n"] >= 19
    assert numbers["beta=0.3"]["mean_column_max"] >= 0.9
    assert numbers["beta=1"]["best_feature_top8"][:4] == [0, 1, 2, 3]
    assert {"tms_5-0.3_spectrum", "tms_5-0.3_heatmap_beta0"} <= set(report["figures"])
    for file in report["figures"].values():
        assert (tmp_path / file).stat().st_size > 1000


@pytest.mark.slow
def test_tms_at_the_papers_settings(tmp_path: Path) -> None:
    report = reproduce(["tms"], tmp_path, progress=False)
    assert not _failed(report)
    numbers = report["sections"]["tms"]
    assert numbers["10-0.3"]["beta=0.3"]["distinct_features_top_n"] == 50
    assert numbers["10-0.9"]["beta=0"]["distinct_features_top_n"] >= 45
    assert numbers["40-0.9"]["beta=0"]["distinct_features_top_n"] >= 45


def test_cli_writes_the_report_and_reuses_finished_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["reproduce", "modadd", "--quick", "--out", str(out)]) == 0
    first = capsys.readouterr()
    assert "training ModAddConfig" in first.err
    report = json.loads((out / "report.json").read_text())
    assert report["quick"] is True and "modadd" in report["sections"]
    markdown = (out / "report.md").read_text()
    assert "## Modular addition (p = 23)" in markdown and "![modadd_spectrum]" in markdown
    for file in report["figures"].values():
        assert (out / file).is_file()
    assert main(["reproduce", "modadd", "--quick", "--out", str(out)]) == 0
    second = capsys.readouterr()
    assert "reusing the finished run" in second.err and "training" not in second.err
    assert json.loads((out / "report.json").read_text())["sections"] == report["sections"]
    assert main(["reproduce", "modadd", "--quick", "--out", str(out), "--json"]) == 0
    third = capsys.readouterr()
    summary = json.loads(third.out)  # stdout is the JSON object alone
    assert summary["report_json"] == str(out / "report.json")
    assert summary["checks"] == report["checks"] and "reusing the finished run" in third.err


def test_cli_rejects_an_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["reproduce", "modadd", "--quick", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err
