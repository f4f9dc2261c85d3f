"""``entk-fast reproduce transformer``: the 1-layer modular-addition transformer that groks.

The paper's third model (J. Lin, arXiv 2510.00468, v3; `.transformer`): after training,

* the **key frequencies**, found from the Fourier norms of the token embedding over the tokens
  0..p−1 (`key_frequencies`: the largest cliff of the
  sorted norms);
* the ``mean_pairs`` eNTK over all p + 1 logits on all p² inputs, one kernel per weight matrix
  (and W_V + W_O summed, and the full kernel), and for each the overlap of its top
  2·(#key) + 1 eigenvectors with the a+b, a and b Fourier families restricted to the key
  frequencies (the unembedding's is nearly full: 3.965 / 4 in the paper);
* over training, every 40 epochs, the unembedding kernel's overlap with the a+b family at
  the final key frequencies and its derivative, beside the accuracy curves.

A section of `reproduce` (which calls
`run_transformer` with its plan's config and `markdown`); its run, caches and
report entries follow the other sections'.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import linalg
from ..._io import atomic_write_json
from ...analysis import alignment_curve
from ...analysis.transformer import KEY_FAMILIES, kernel_key_overlaps, key_frequencies, key_overlaps
from ...errors import InvalidArgumentError
from ..tasks.modadd import first_step_above
from ..tasks.transformer import TransformerConfig
from .base import Log, Section, config_tag, figure_links, trained_run

__all__ = ["PAPER", "QUICK", "markdown", "run_transformer"]

#: The paper's numbers (arXiv 2510.00468 v3), for the report's comparison column.
PAPER: dict[str, Any] = {
    "key_frequencies": "seed dependent, e.g. {1, 12} for one seed, {1, 3, 7, 10} for another",
    "unembed": "top 5 eigenvectors vs a+b at two key frequencies: 3.965 / 4; top 9 at four: "
    "6.41 / 8",
    "sweep": "the overlap (every 20 epochs) and its derivative track the slow test-accuracy rise",
}

#: The reduced run of ``--quick``: a smaller p and model, a few seconds of training.
QUICK = TransformerConfig(
    p=11, d_model=32, n_heads=4, d_mlp=64, lr=3e-3, epochs=200, log_every=5, checkpoint_every=20
)

#: Epochs between the checkpoints of the sweep over training (and the last checkpoint): every
#: other checkpoint of the default run (the paper: every 20 epochs).
SWEEP_EVERY = 40

#: The layer kernels summed into one more entry (the attention's OV circuit).
SUMS = {"attn.W_V+W_O": ("attn.W_V", "attn.W_O")}
UNEMBED = "unembed"


def _name(config: TransformerConfig) -> str:
    return f"transformer-p{config.p}-{config_tag(config)}"


def run_transformer(config: TransformerConfig, runs: Path, cache: Path, log: Log) -> Section:
    """Key frequencies, layer-kernel overlaps at the end, and the overlap over training, for
    the run of ``config`` under ``runs`` (trained, resumed or reused) with caches in ``cache``."""
    from ...ntk import empirical_ntk
    from ...results import EmpiricalNTK
    from ..figures import (
        alignment_figure,
        frequency_norms_figure,
        layer_overlaps_figure,
        layer_spectra_figure,
    )

    section = Section()
    p = config.p
    start = time.perf_counter()
    run = trained_run(config, runs / _name(config), log)
    section.seconds["run"] = time.perf_counter() - start
    model = run.load_checkpoint()
    keys = key_frequencies(model.embed.weight.detach().numpy(), p)
    n_keys = len(keys.frequencies)
    m = 2 * n_keys + 1
    log(
        f"  transformer p = {p}: key frequencies {list(keys.frequencies)} (cliff "
        f"{keys.cliff:.2f}, {100 * keys.fraction:.1f}% of the embedding's Fourier energy)"
    )

    start = time.perf_counter()
    path = cache / f"{_name(config)}-final.npz"
    try:
        ntk = EmpiricalNTK.load(path)
    except InvalidArgumentError:
        ntk = empirical_ntk(
            model,
            config.dataset().inputs,
            reduction="mean_pairs",
            layerwise=True,
            dtype="float64",
            progress=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        ntk.save(path)
    section.seconds["kernel"] = time.perf_counter() - start
    kernels = dict(ntk.layer_kernels)
    for name, parts in SUMS.items():
        if all(part in kernels for part in parts):
            kernels[name] = np.sum([kernels[part] for part in parts], axis=0)
    kernels["full"] = ntk.kernel
    layers = kernel_key_overlaps(kernels, p, keys.frequencies)
    for name, entry in layers.items():
        log(f"    {name:>14}: " + ", ".join(f"{f} {v:.3f}" for f, v in entry["overlaps"].items()))

    history = run.history
    section.numbers.update(
        {
            "p": p,
            "config": dataclasses.asdict(config),
            "final_train_acc": float(history["train_acc"][-1]),
            "final_test_acc": float(history["test_acc"][-1]),
            "train_acc_100": first_step_above(history, "train_acc", 1 - 1e-9),
            "test_acc_above_50": first_step_above(history, "test_acc", 0.5),
            "test_acc_above_90": first_step_above(history, "test_acc", 0.9),
            "test_acc_above_99": first_step_above(history, "test_acc", 0.99),
            "key_frequencies": list(keys.frequencies),
            "key_frequency_detection": keys.as_dict(),
            "n_eigenvectors": m,
            "max_overlap": 2 * n_keys,
            "overlaps": {name: entry["overlaps"] for name, entry in layers.items()},
            "top_eigenvalues": {name: entry["top_eigenvalues"] for name, entry in layers.items()},
        }
    )
    start = time.perf_counter()
    sweep = _sweep(run, config, keys.frequencies, cache, log)
    section.seconds["sweep"] = time.perf_counter() - start
    section.numbers["sweep"] = sweep

    unembed = layers.get(UNEMBED, {}).get("overlaps", {})
    section.checks["train accuracy 100%, test accuracy ≥ 99% at the end (grokked)"] = (
        section.numbers["final_train_acc"] == 1.0 and section.numbers["final_test_acc"] >= 0.99
    )
    section.checks["key frequencies stand out (norm cliff ≥ 3)"] = keys.cliff >= 3
    if unembed:
        section.checks[
            f"unembedding: top {m} vs a+b at the key frequencies ≥ 75% of {2 * n_keys}"
        ] = unembed["a+b"] >= 0.75 * 2 * n_keys
        section.checks["unembedding: vs a and vs b < 0.5"] = max(unembed["a"], unembed["b"]) < 0.5
    curve = sweep["curve"]
    section.checks["a+b overlap over training rises by ≥ 50 points"] = (
        curve["overlap_percent"][-1] - curve["overlap_percent"][0] >= 50
    )
    r = sweep["correlation_with_test_acc"]
    section.checks["overlap tracks the test accuracy over training (Pearson r ≥ 0.8)"] = (
        r is not None and r >= 0.8
    )

    section.figures["transformer_embedding_fourier"] = frequency_norms_figure(
        keys.norms, keys.frequencies, title=f"token embedding W_E: Fourier norms (p = {p})"
    )
    section.figures["transformer_layer_overlaps"] = layer_overlaps_figure(
        section.numbers["overlaps"],
        2 * n_keys,
        title=f"top {m} eigenvectors of each layer kernel vs the key frequencies "
        f"{list(keys.frequencies)}",
    )
    spectra = {name: linalg.eigh(kernels[name])[0] for name in ("full", UNEMBED) if name in kernels}
    section.figures["transformer_layer_spectra"] = layer_spectra_figure(
        spectra, top=4 * m, title="mean_pairs eNTK spectra: full and unembedding"
    )
    section.figures["transformer_alignment"] = alignment_figure(
        curve["steps"],
        curve["overlap_percent"],
        curve["derivative"],
        history,
        onset=curve["onset"],
        label=f"unembedding top {m} vs a+b (key freqs)",
    )
    return section


def _sweep(
    run: Any, config: TransformerConfig, frequencies: tuple[int, ...], cache: Path, log: Log
) -> dict[str, Any]:
    """At the checkpoints every `SWEEP_EVERY` epochs and the last: the unembedding
    kernel's top 2·#key + 1 eigenvectors vs the key families (cached per checkpoint, so an
    interrupted sweep continues)."""
    from ...ntk import empirical_ntk

    p = config.p
    m = 2 * len(frequencies) + 1
    x = config.dataset().inputs
    cache_file = cache / f"{_name(config)}-sweep.json"
    done: dict[str, Any] = {}
    if cache_file.exists():
        try:
            saved = json.loads(cache_file.read_text(encoding="utf-8"))
            if saved.get("frequencies") == list(frequencies):
                done = saved["steps"]
        except (ValueError, AttributeError, KeyError):
            done = {}
    saved = run.checkpoint_steps
    steps = [s for s in saved if s % SWEEP_EVERY == 0 or s == saved[-1]]
    for i, step in enumerate(steps):
        if str(step) in done:
            continue
        ntk = empirical_ntk(
            run.load_checkpoint(step),
            x,
            reduction="mean_pairs",
            params=[UNEMBED],
            dtype="float64",
            progress=False,
        )
        _, vectors = linalg.eigh_topk(ntk.kernel, m)
        done[str(step)] = key_overlaps(vectors[:, :m], p, frequencies, KEY_FAMILIES)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, {"frequencies": list(frequencies), "steps": done})
        if (i + 1) % 50 == 0:
            log(f"  checkpoint {i + 1}/{len(steps)} (epoch {step})")
    rows = [done[str(step)] for step in steps]
    curve = alignment_curve(steps, [row["a+b"] for row in rows], 2 * len(frequencies))
    history = run.history
    test_acc = np.interp(steps, history["step"], history["test_acc"])
    percent = curve.overlap_percent
    varies = np.ptp(percent) > 0 and np.ptp(test_acc) > 0
    above = {level: np.flatnonzero(percent > level) for level in (50, 90)}
    return {
        "n_checkpoints": len(steps),
        "curve": curve.as_dict(),
        "overlaps": {family: [row[family] for row in rows] for family in KEY_FAMILIES},
        "test_acc": test_acc.tolist(),
        "correlation_with_test_acc": float(np.corrcoef(percent, test_acc)[0, 1])
        if varies
        else None,
        "overlap_above_50": int(steps[above[50][0]]) if above[50].size else None,
        "overlap_above_90": int(steps[above[90][0]]) if above[90].size else None,
    }


def markdown(report: dict[str, Any]) -> list[str]:
    """The transformer section of ``report.md``."""
    t = report["sections"]["transformer"]
    keys = t["key_frequencies"]
    detection = t["key_frequency_detection"]
    sweep = t["sweep"]
    seconds = report["seconds"].get("transformer", {})
    lines = [f"## Modular addition transformer (p = {t['p']})", ""]
    lines += [
        f"Final accuracy: train {100 * t['final_train_acc']:.1f}%, test "
        f"{100 * t['final_test_acc']:.1f}%; train accuracy 100% from epoch "
        f"{t['train_acc_100']}, test accuracy above 50% / 90% / 99% at epochs "
        f"{t['test_acc_above_50']} / {t['test_acc_above_90']} / {t['test_acc_above_99']} "
        f"(training {seconds.get('run', 0):.0f} s, 0 when the run was reused).",
        "",
        f"Key frequencies (largest cliff of the embedding's Fourier norms): **{keys}** (cliff "
        f"ratio {detection['cliff']:.2f}, {100 * detection['fraction']:.1f}% of the "
        f"non-constant energy). Paper: {PAPER['key_frequencies']}.",
        "",
        f"Overlap of each layer kernel's top {t['n_eigenvectors']} eigenvectors with the Fourier "
        f"families at the key frequencies (out of {t['max_overlap']}):",
        "",
        "| layer | a+b | a | b |",
        "|---|---|---|---|",
    ]
    for name, overlaps in t["overlaps"].items():
        lines.append(f"| {name} | " + " | ".join(f"{overlaps[f]:.3f}" for f in KEY_FAMILIES) + " |")
    lines += [
        "",
        f"Paper: {PAPER['unembed']}.",
        "",
        f"Over training ({sweep['n_checkpoints']} checkpoints, every {SWEEP_EVERY} epochs): the "
        f"unembedding overlap with a+b goes from {sweep['curve']['overlap_percent'][0]:.1f}% to "
        f"{sweep['curve']['overlap_percent'][-1]:.1f}% of {t['max_overlap']}, passes 50% / 90% at "
        f"epochs {sweep['overlap_above_50']} / {sweep['overlap_above_90']} (test accuracy: "
        f"{t['test_acc_above_50']} / {t['test_acc_above_90']}), rises fastest at epoch "
        f"{sweep['curve']['onset']}, and its correlation with the test accuracy across the "
        f"checkpoints is **{_number(sweep['correlation_with_test_acc'])}**. Paper: "
        f"{PAPER['sweep']}.",
        "",
    ]
    lines += figure_links(report, "transformer_")
    return lines


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
