"""``entk-fast reproduce transformer --quick``: the report's files and numbers, consistent with
the run and the kernels it computed, and reuse of finished work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from entk_fast.analysis.transformer import kernel_key_overlaps, key_frequencies
from entk_fast.cli import main
from entk_fast.paper.reproduce.transformer import QUICK, SWEEP_EVERY, _name
from entk_fast.paper.runs import load_run
from entk_fast.results import EmpiricalNTK

LAYERS = [
    "embed",
    "pos_embed",
    "attn.W_Q",
    "attn.W_K",
    "attn.W_V",
    "attn.W_O",
    "mlp.W_in",
    "mlp.W_out",
    "unembed",
    "attn.W_V+W_O",
    "full",
]


def test_quick_reproduction_writes_a_consistent_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["reproduce", "transformer", "--quick", "--out", str(out)]) == 0
    assert "training TransformerConfig" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    t = report["sections"]["transformer"]
    p = QUICK.p
    run = load_run(out / "runs" / _name(QUICK))
    assert t["p"] == p and t["final_test_acc"] == run.history["test_acc"][-1]

    # the key frequencies are those of the final embedding
    keys = t["key_frequencies"]
    embedding = run.load_checkpoint().embed.weight.detach().numpy()
    assert tuple(keys) == key_frequencies(embedding, p).frequencies
    assert t["n_eigenvectors"] == 2 * len(keys) + 1 and t["max_overlap"] == 2 * len(keys)

    # one entry per weight matrix, V+O and the full kernel; W_V + W_O is the sum of the two
    assert list(t["overlaps"]) == LAYERS
    ntk = EmpiricalNTK.load(out / "cache" / f"{_name(QUICK)}-final.npz")
    assert ntk.kernel.shape == (p * p, p * p)
    summed = ntk.layer_kernels["attn.W_V"] + ntk.layer_kernels["attn.W_O"]
    again = kernel_key_overlaps({"vo": summed}, p, keys)["vo"]["overlaps"]
    assert again == pytest.approx(t["overlaps"]["attn.W_V+W_O"], abs=1e-9)
    for overlaps in t["overlaps"].values():
        assert set(overlaps) == {"a+b", "a", "b"}
        assert all(-1e-9 <= v <= 2 * len(keys) + 1e-9 for v in overlaps.values())

    # the sweep's last checkpoint is the final model: its unembedding kernel (params=) gives
    # the same overlap as the layerwise kernel's unembedding block
    sweep = t["sweep"]
    assert run.checkpoint_steps == list(range(0, QUICK.epochs + 1, 20))
    assert sweep["curve"]["steps"] == list(range(0, QUICK.epochs + 1, SWEEP_EVERY))
    assert sweep["n_checkpoints"] == QUICK.epochs // SWEEP_EVERY + 1
    last = sweep["overlaps"]["a+b"][-1]
    assert last == pytest.approx(t["overlaps"]["unembed"]["a+b"], abs=1e-6)
    percent = np.asarray(sweep["curve"]["overlap_percent"])
    np.testing.assert_allclose(percent, 50 * np.asarray(sweep["overlaps"]["a+b"]) / len(keys))
    accuracy = dict(
        zip(run.history["step"].tolist(), run.history["test_acc"].tolist(), strict=True)
    )
    assert sweep["test_acc"] == [accuracy[s] for s in sweep["curve"]["steps"]]
    r = np.corrcoef(percent, sweep["test_acc"])[0, 1]
    assert sweep["correlation_with_test_acc"] == pytest.approx(r, abs=1e-12)

    figures = {
        "transformer_embedding_fourier",
        "transformer_layer_overlaps",
        "transformer_layer_spectra",
        "transformer_alignment",
    }
    assert set(report["figures"]) == figures
    for file in report["figures"].values():
        assert (out / file).stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert f"## Modular addition transformer (p = {p})" in markdown
    assert f"**{keys}**" in markdown and "| unembed |" in markdown
    assert "![transformer_alignment](transformer_alignment.png)" in markdown

    assert main(["reproduce", "transformer", "--quick", "--out", str(out)]) == 0
    assert "reusing the finished run" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["sections"]["transformer"] == t
