"""``entk-fast reproduce``: the paper's findings from trained runs, as numbers and figures.

Sections (J. Lin, *Feature Identification via the Empirical NTK*, arXiv 2510.00468):

* ``tms``: Toy Models of Superposition at (m, S) = (10, 0.3), (10, 0.9), (40, 0.9); the
  flattened eNTK on the 500 training points with output metric I^β, β ∈ {0, 0.3, 1}: the cliff
  after n = 50 eigenvalues, the second cliff at the number of reconstructed features, and the
  eigenvector × feature heatmaps.
* ``modadd``: the modular-addition MLP (p = 29) at the end of training: the traced eNTK's
  cliffs after 1, 57 and 113 eigenvalues, the overlaps of the two cliff blocks with the
  Fourier families of a, b, a+b, a−b, the two-stage graph-smoothness rotation that separates
  the families inside each block, and the layerwise kernels of W₁ and W₂.
* ``grokking``: at every checkpoint, the overlap of eigenvectors 58–113 with the a+b family,
  its derivative and the epoch where it rises fastest, beside the accuracy curves.
* ``transformer``: the 1-layer modular-addition transformer (p = 29): its key frequencies and
  the overlap of each layer kernel's top eigenvectors with the Fourier modes at those
  frequencies, at the end and over training (:mod:`.reproduce_transformer`).
* ``lm``: a pretrained language model (the packaged all-MiniLM-L6-v2 by default, or
  ``--model``): one layer's eNTK top eigenvectors against PCA of its block's activations as
  part-of-speech detectors (:mod:`.reproduce_lm`; needs the ``lm`` extra, and ``all`` runs it
  only when that is installed).

Everything lands in ``--out``: ``report.json`` (every number, named), one PNG per figure, and
``report.md`` (the figures and our numbers next to the paper's). Runs are trained into
``--runs`` (default ``OUT/runs``) and reused when finished (resumed when interrupted); spectra
and per-checkpoint results are cached under ``OUT/cache``, so an interrupted reproduce rerun
with the same ``--out`` continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import linalg
from .._io import (
    add_json_flag,
    atomic_write_json,
    atomic_write_text,
    print_json,
    stdout_to_stderr,
)
from .._version import __version__
from ..analysis import (
    FAMILIES,
    alignment_curve,
    atoms_found,
    block_overlaps,
    cliff_blocks,
    feature_cliffs,
    feature_heatmap,
    fourier_family,
    frequency_heatmap,
    match_features,
    smoothness_rotation,
)
from ..errors import InvalidArgumentError
from .modadd import ModAddConfig, first_step_above
from .reproduce_base import Log as _Log
from .reproduce_base import Section
from .reproduce_base import config_tag as _tag
from .reproduce_base import figure_links as _figures
from .reproduce_base import trained_run as _run
from .reproduce_lm import LMConfig, lm_available
from .tms import TMSConfig
from .train import torch_threads
from .transformer import TransformerConfig

__all__ = ["SECTIONS", "add_parser", "reproduce"]

SECTIONS = ("tms", "modadd", "grokking", "transformer", "lm")
TMS_SETTINGS = ((10, 0.3), (10, 0.9), (40, 0.9))
BETAS = (0.0, 0.3, 1.0)

# The paper's numbers (arXiv 2510.00468), for the report's comparison columns.
PAPER: dict[str, Any] = {
    "tms_reconstructed": {"10-0.3": "≈ 10", "10-0.9": "≈ 21", "40-0.9": "≈ 42"},
    "tms_cliff": "largest gap right after index n = 50; for (10, 0.3) a second gap at the "
    "number of reconstructed features",
    "tms_beta03": "β = 0.3 on (10, 0.3): 50 distinct features, mean column max ≈ 0.99",
    "modadd_overlaps": {
        "2-57": {"a": "27.6", "b": "27.6", "a+b": "< 0.5", "a-b": "< 0.5"},
        "58-113": {"a": "< 0.5", "b": "< 0.5", "a+b": "26.1–26.5", "a-b": "24.6–25.2"},
    },
    "grokking": "derivative peaks near the onset of the test-accuracy jump (~ epoch 75–80)",
}


@dataclass(frozen=True)
class Plan:
    """What a reproduction trains: the paper's sizes (:meth:`paper`), a smoke test in under a
    minute (:meth:`quick`), or any configs (tests use other seeds and sizes). The first TMS
    config is the dense one (the paper's (10, 0.3)), whose extra checks apply."""

    tms: tuple[TMSConfig, ...]
    modadd: ModAddConfig
    transformer: TransformerConfig = TransformerConfig()
    lm: LMConfig = LMConfig()
    quick: bool = False

    @classmethod
    def paper(cls) -> Plan:
        return cls(
            tuple(TMSConfig(n_hidden=m, sparsity=s) for m, s in TMS_SETTINGS), ModAddConfig()
        )

    @classmethod
    def reduced(cls) -> Plan:
        tms = tuple(
            TMSConfig(n_hidden=m, sparsity=s, n_points=120, steps=1500) for m, s in TMS_SETTINGS
        )
        from .reproduce_lm import QUICK as QUICK_LM
        from .reproduce_transformer import QUICK

        return cls(tms, ModAddConfig(p=23, hidden=256, epochs=300), QUICK, QUICK_LM, quick=True)


def _tms_name(config: TMSConfig) -> str:
    return f"tms-m{config.n_hidden}-s{config.sparsity:g}-{_tag(config)}"


def _modadd_name(config: ModAddConfig) -> str:
    return f"modadd-p{config.p}-{_tag(config)}"


# --- runs and caches ------------------------------------------------------------------------------


def _cached_spectrum(path: Path, compute: Callable[[], Any]) -> Any:
    from ..results import NTKSpectrum

    if path.exists():
        try:
            return NTKSpectrum.load(path)
        except InvalidArgumentError:
            pass  # a stale or foreign file: recompute and overwrite it
    spectrum = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    spectrum.save(path)
    return spectrum


# --- TMS ------------------------------------------------------------------------------------------


def run_tms(plan: Plan, runs: Path, cache: Path, log: _Log) -> Section:
    """Feature recovery in TMS from the flattened eNTK with output metric I^β."""
    from ..spectrum import entk_spectrum
    from .plots import feature_heatmap_figure, spectrum_figure

    section = Section()
    for position, config in enumerate(plan.tms):
        hidden, sparsity = config.n_hidden, config.sparsity
        name = f"{hidden}-{sparsity:g}"
        run = _run(config, runs / _tms_name(config), log)
        model = run.load_checkpoint()
        x = config.dataset()
        importance = config.importance().numpy().astype(np.float64)
        n = config.n_features
        n_rec = int(run.history["n_reconstructed"][-1])
        numbers: dict[str, Any] = {"n_reconstructed": n_rec}
        for beta in BETAS:
            start = time.perf_counter()
            weights = importance**beta

            def compute(
                model: Any = model, x: Any = x, w: np.ndarray = weights, k: int = n + 10
            ) -> Any:
                return entk_spectrum(
                    model, x, k=k, output_metric=w, dtype="float64", progress=False
                )

            spectrum = _cached_spectrum(cache / f"{_tms_name(config)}-beta{beta:g}.npz", compute)
            seconds = time.perf_counter() - start
            report = feature_cliffs(spectrum.eigenvalues, top=3, within=n + 10)
            heat = feature_heatmap(spectrum.eigenvectors[:, :n], x.numpy())
            match = match_features(heat)
            numbers[f"beta={beta:g}"] = {
                "method": spectrum.method,
                "cliffs": [(c.index, c.ratio) for c in report.cliffs],
                "distinct_features_top_n": match.n_distinct,
                "mean_column_max": match.mean_column_max,
                "best_feature_top8": match.best[:8].tolist(),
                "top8_in_importance_order": match.in_order(8),
                "seconds": seconds,
            }
            found = [(c.index, round(c.ratio, 2)) for c in report.cliffs]
            log(
                f"  TMS {name} β={beta:g}: cliffs {found}, {match.n_distinct} distinct features, "
                f"mean column max {match.mean_column_max:.3f} ({spectrum.method}, {seconds:.1f} s)"
            )
            if beta == 0.0:
                section.figures[f"tms_{name}_spectrum"] = spectrum_figure(
                    spectrum.eigenvalues,
                    [c.index for c in report.cliffs[:2]],
                    title=f"TMS (m, S) = ({hidden}, {sparsity}): flattened eNTK, β = 0",
                )
            if beta == 0.0 or position == 0:
                section.figures[f"tms_{name}_heatmap_beta{beta:g}"] = feature_heatmap_figure(
                    heat, title=f"TMS ({hidden}, {sparsity}), β = {beta:g}: top {n} eigenvectors"
                )
        section.numbers[name] = numbers
        zero = numbers["beta=0"]
        top2 = [index for index, _ in zero["cliffs"][:2]]
        section.checks[f"{name}: gap after n = {n} among the two largest"] = n in top2
        if position == 0:
            first, ratio = zero["cliffs"][0]
            second = zero["cliffs"][1][0]
            section.checks[f"{name}: gap after {n} is the largest, ratio > 10"] = (
                first == n and ratio > 10
            )
            section.checks[f"{name}: second gap at the reconstructed count ± 2"] = (
                abs(second - n_rec) <= 2
            )
            b03 = numbers["beta=0.3"]
            section.checks[f"{name}, β = 0.3: all {n} features, mean column max ≥ 0.95"] = (
                b03["distinct_features_top_n"] == n and b03["mean_column_max"] >= 0.95
            )
            section.checks[f"{name}, β = 1: top 8 in importance order"] = numbers["beta=1"][
                "top8_in_importance_order"
            ]
        else:
            section.checks[f"{name}, β = 0: ≥ {n - 5} distinct features in the top {n}"] = (
                zero["distinct_features_top_n"] >= n - 5
            )
    return section


# --- modular addition -----------------------------------------------------------------------------


def _modadd_blocks(p: int) -> list[tuple[int, int]]:
    """(1, 1), (2, 2p − 1), (2p, 4p − 3): the isolated top mode and the two cliff blocks."""
    return cliff_blocks([1, 2 * (p - 1) + 1, 4 * (p - 1) + 1], p * p)


def _union_overlap(vectors: np.ndarray, p: int, families: tuple[str, str]) -> float:
    basis = np.concatenate([fourier_family(p, f) for f in families], axis=1)
    return linalg.subspace_overlap(vectors, basis)


def run_modadd(plan: Plan, runs: Path, cache: Path, log: _Log) -> Section:
    """Cliffs, Fourier overlaps, the smoothness rotation and the layer kernels at the end."""
    from ..ntk import empirical_ntk
    from ..results import EmpiricalNTK
    from .plots import fourier_heatmap_figure, layer_spectra_figure, spectrum_figure

    section = Section()
    config = plan.modadd
    p = config.p
    run = _run(config, runs / _modadd_name(config), log)
    path = cache / f"{_modadd_name(config)}-final.npz"
    start = time.perf_counter()
    try:
        ntk = EmpiricalNTK.load(path)
    except InvalidArgumentError:
        ntk = empirical_ntk(
            run.load_checkpoint(),
            config.dataset().inputs,
            reduction="trace",
            layerwise=True,
            dtype="float64",
            progress=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        ntk.save(path)
    values, vectors = linalg.eigh(ntk.kernel)
    section.seconds["kernel_and_eigh"] = time.perf_counter() - start
    blocks = _modadd_blocks(p)
    cliffs = feature_cliffs(values, top=4, mean_diagonal=float(np.trace(ntk.kernel)) / values.size)
    overlaps = block_overlaps(vectors, p, blocks[1:])
    first, second = (f"{a}-{b}" for a, b in blocks[1:])
    log(f"  modadd p = {p}: cliffs {[(c.index, round(c.ratio, 2)) for c in cliffs.cliffs]}")
    section.numbers["p"] = p
    section.numbers["final_test_acc"] = float(run.history["test_acc"][-1])
    section.numbers["cliffs"] = [(c.index, c.ratio) for c in cliffs.cliffs]
    section.numbers["overlaps"] = overlaps
    section.figures["modadd_spectrum"] = spectrum_figure(
        values, [c.index for c in cliffs.cliffs[:3]], top=4 * p, title=f"traced eNTK, p = {p}"
    )
    top_two = sorted(c.index for c in cliffs.cliffs[:2])
    dim = p - 1
    section.checks[f"largest gaps after 1 and {2 * dim + 1}"] = top_two == [1, 2 * dim + 1]
    section.checks[f"a further gap after {4 * dim + 1}"] = any(
        c.index == 4 * dim + 1 for c in cliffs.cliffs
    )
    section.checks["first cliff vs a and b ≥ 27/28 of p − 1"] = (
        min(overlaps[first]["a"], overlaps[first]["b"]) >= dim * 27 / 28
    )
    section.checks["second cliff: a+b ≥ 25.5/28, a−b ≥ 24/28 of p − 1"] = (
        overlaps[second]["a+b"] >= dim * 25.5 / 28 and overlaps[second]["a-b"] >= dim * 24 / 28
    )
    cross = [overlaps[first]["a+b"], overlaps[first]["a-b"], overlaps[second]["a"]]
    cross.append(overlaps[second]["b"])
    section.checks["cross terms < 1"] = max(cross) < 1

    rotation: dict[str, Any] = {}
    for (a, b), families in zip(blocks[1:], (("a", "b"), ("a+b", "a-b")), strict=True):
        block = vectors[:, a - 1 : b]
        rotated = smoothness_rotation(block, p, families)
        panels = {}
        for fam in families:
            before = frequency_heatmap(block, p, fam)
            after = frequency_heatmap(rotated, p, fam)
            panels[f"{fam}, before"] = before
            panels[f"{fam}, after"] = after
            rotation[fam] = {
                "best_before": before.max(axis=1).tolist(),
                "best_after": after.max(axis=1).tolist(),
                "min_best_after": float(after.max(axis=1).min()),
            }
            section.checks[f"after rotation every {fam} frequency has an atom ≥ 0.9"] = bool(
                atoms_found(after, 0.9).all()
            )
        section.figures[f"modadd_rotation_{families[0]}_{families[1]}"] = fourier_heatmap_figure(
            panels, title=f"eigenvectors {a}–{b}: before / after the smoothness rotation"
        )
    section.numbers["rotation"] = rotation

    layers: dict[str, Any] = {}
    layer_values: dict[str, np.ndarray] = {"full": values}
    for name, kernel in ntk.layer_kernels.items():
        lv, lvec = linalg.eigh(kernel)
        layer_values[name] = lv
        report = feature_cliffs(lv, top=3, mean_diagonal=float(np.trace(kernel)) / lv.size)
        block = lvec[:, 1 : 2 * dim + 1]
        layers[name] = {
            "cliffs": [(c.index, c.ratio) for c in report.cliffs],
            "rank_cliffs": [(c.index, c.ratio) for c in report.rank_cliffs],
            "rank": report.rank,
            "block_2_overlaps": block_overlaps(lvec, p, blocks[1:]),
            "block_2_vs_a_union_b": _union_overlap(block, p, ("a", "b")),
            "block_2_vs_sum_union_diff": _union_overlap(block, p, ("a+b", "a-b")),
        }
    section.numbers["layers"] = layers
    if "W1" in layers:
        w1 = layers["W1"]
        section.checks[f"W1 block 2–{2 * dim + 1} overlaps a ∪ b ≥ {2 * dim - 1}/{2 * dim}"] = (
            w1["block_2_vs_a_union_b"] >= 2 * dim - 1
        )
        section.checks[f"W1 block 2–{2 * dim + 1} overlaps a+b ∪ a−b ≤ 1"] = (
            w1["block_2_vs_sum_union_diff"] <= 1
        )
    section.figures["modadd_layer_spectra"] = layer_spectra_figure(
        layer_values, top=min(values.size, 6 * p)
    )
    return section


def run_grokking(plan: Plan, runs: Path, cache: Path, log: _Log) -> Section:
    """The overlap of eigenvectors 2p − 1 .. 4p − 3 with the a+b family at every checkpoint."""
    from ..analysis import principal_angles_degrees
    from ..ntk import empirical_ntk
    from .plots import alignment_figure

    section = Section()
    config = plan.modadd
    p = config.p
    dim = p - 1
    run = _run(config, runs / _modadd_name(config), log)
    x = config.dataset().inputs
    blocks = _modadd_blocks(p)
    (a1, b1), (a2, b2) = blocks[1], blocks[2]
    cache_file = cache / f"{_modadd_name(config)}-grokking.json"
    done: dict[str, Any] = {}
    if cache_file.exists():
        try:
            done = json.loads(cache_file.read_text(encoding="utf-8"))
        except ValueError:
            done = {}
    start = time.perf_counter()
    steps = run.checkpoint_steps
    family = fourier_family(p, "a+b")
    for i, step in enumerate(steps):
        if str(step) in done:
            continue
        ntk = empirical_ntk(
            run.load_checkpoint(step), x, reduction="trace", dtype="float64", progress=False
        )
        values, vectors = linalg.eigh(ntk.kernel)
        second = vectors[:, a2 - 1 : b2]
        done[str(step)] = {
            "sum_overlap": linalg.subspace_overlap(second, family),
            "sum_angles_deg": principal_angles_degrees(second, family),
            "a_overlap_first": linalg.subspace_overlap(
                vectors[:, a1 - 1 : b1], fourier_family(p, "a")
            ),
        }
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, done)
        if (i + 1) % 10 == 0:
            log(f"  checkpoint {i + 1}/{len(steps)} (epoch {step})")
    section.seconds["sweep"] = time.perf_counter() - start
    ordered = [done[str(step)] for step in steps]
    curve = alignment_curve(steps, [row["sum_overlap"] for row in ordered], dim)
    history = run.history
    above_half = first_step_above(history, "test_acc", 0.5)
    above_95 = first_step_above(history, "test_acc", 0.95)
    section.numbers.update(
        {
            "p": p,
            "n_checkpoints": len(steps),
            "curve": curve.as_dict(),
            "a_overlap_first_cliff": [row["a_overlap_first"] for row in ordered],
            "sum_angles_deg": {
                str(s): row["sum_angles_deg"] for s, row in zip(steps, ordered, strict=True)
            },
            "onset": curve.onset,
            "test_acc_above_50": above_half,
            "test_acc_above_95": above_95,
        }
    )
    log(
        f"  grokking: onset (peak derivative) at epoch {curve.onset}; test accuracy > 50% at "
        f"epoch {above_half}, > 95% at {above_95} ({len(steps)} checkpoints)"
    )
    section.checks["onset within 30 epochs of test accuracy > 50%"] = (
        above_half is not None and abs(curve.onset - above_half) <= 30
    )
    section.checks["onset before test accuracy reaches 95%"] = (
        above_95 is not None and curve.onset < above_95
    )
    section.figures["grokking_alignment"] = alignment_figure(
        curve.steps,
        curve.overlap_percent,
        curve.derivative,
        history,
        onset=curve.onset,
        label=f"eigvecs {a2}–{b2} vs a+b",
    )
    return section


def run_transformer(plan: Plan, runs: Path, cache: Path, log: _Log) -> Section:
    """The modular-addition transformer (:mod:`.reproduce_transformer`)."""
    from .reproduce_transformer import run_transformer as run

    return run(plan.transformer, runs, cache, log)


def run_lm(plan: Plan, runs: Path, cache: Path, log: _Log) -> Section:
    """The pretrained language model (:mod:`.reproduce_lm`)."""
    from .reproduce_lm import run_lm as run

    return run(plan.lm, cache, log)


_RUNNERS: dict[str, Callable[[Plan, Path, Path, _Log], Section]] = {
    "tms": run_tms,
    "modadd": run_modadd,
    "grokking": run_grokking,
    "transformer": run_transformer,
    "lm": run_lm,
}
#: Sections that use every core (a large model); the others run torch on one thread.
_ALL_THREADS = ("lm",)


# --- the report -----------------------------------------------------------------------------------


def reproduce(
    sections: list[str],
    out: str | Path,
    *,
    runs: str | Path | None = None,
    quick: bool = False,
    progress: bool = True,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Run ``sections`` (of :data:`SECTIONS`) and write report.json, report.md and the PNGs.

    ``quick``: reduced sizes (:meth:`Plan.reduced`); ``plan`` overrides both (other seeds or
    sizes). Returns the report (what ``report.json`` holds).
    """
    from .plots import save_figure

    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InvalidArgumentError(
            f"sections: expected some of {', '.join(SECTIONS)} (or 'all'), got {sections}"
        )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs" if runs is None else Path(runs)
    cache = out_dir / "cache"
    log = _Log(progress)
    plan = plan or (Plan.reduced() if quick else Plan.paper())
    report: dict[str, Any] = {
        "entk_fast": __version__,
        "quick": plan.quick,
        "paper": "J. Lin, Feature Identification via the Empirical NTK, arXiv 2510.00468",
        "sections": {},
        "figures": {},
        "checks": {},
        "seconds": {},
    }
    total = time.perf_counter()
    for name in sections:
        log(f"[{name}]")
        start = time.perf_counter()
        # One torch thread: the models are small, and torch's spinning intra-op threads slow
        # everything down many-fold when the machine is shared (Rust keeps its own pool).
        if name in _ALL_THREADS:
            section = _RUNNERS[name](plan, runs_dir, cache, log)
        else:
            with torch_threads(1):
                section = _RUNNERS[name](plan, runs_dir, cache, log)
        report["sections"][name] = _plain(section.numbers)
        report["checks"][name] = section.checks
        report["seconds"][name] = {"total": time.perf_counter() - start, **section.seconds}
        for figure, fig in section.figures.items():
            save_figure(fig, out_dir / f"{figure}.png")
            report["figures"][figure] = f"{figure}.png"
        log(f"  {name} done in {report['seconds'][name]['total']:.1f} s")
    report["seconds"]["all"] = time.perf_counter() - total
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", _markdown(report))
    return report


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Reproduction of *Feature Identification via the Empirical NTK* (arXiv 2510.00468)",
        "",
        f"entk-fast {report['entk_fast']}"
        + (" — **quick** (reduced sizes)" if report["quick"] else "")
        + f"; total {report['seconds']['all']:.0f} s.",
        "",
    ]
    sections = report["sections"]
    if "tms" in sections:
        lines += ["## Toy Models of Superposition", ""]
        lines += [
            "| (m, S) | reconstructed (paper) | β = 0 cliffs (index: ratio) | β = 0 distinct "
            "features in top n | β = 0.3 distinct / mean max | β = 1 top-8 best features |",
            "|---|---|---|---|---|---|",
        ]
        for name, numbers in sections["tms"].items():
            zero, mid, one = numbers["beta=0"], numbers["beta=0.3"], numbers["beta=1"]
            cliffs = ", ".join(f"{i}: {r:.3g}" for i, r in zero["cliffs"][:3])
            lines.append(
                f"| ({name.replace('-', ', ')}) | {numbers['n_reconstructed']} "
                f"({PAPER['tms_reconstructed'].get(name, '')}) | {cliffs} | "
                f"{zero['distinct_features_top_n']} | {mid['distinct_features_top_n']} / "
                f"{mid['mean_column_max']:.3f} | {one['best_feature_top8']} |"
            )
        lines += ["", f"Paper: {PAPER['tms_cliff']}. {PAPER['tms_beta03']}.", ""]
        lines += _figures(report, "tms_")
    if "modadd" in sections:
        m = sections["modadd"]
        lines += [f"## Modular addition (p = {m['p']})", ""]
        lines += [
            f"Largest cliffs (index: ratio): {', '.join(f'{i}: {r:.3g}' for i, r in m['cliffs'])}.",
            "",
        ]
        lines += ["| block | family | ours | paper |", "|---|---|---|---|"]
        for block, fams in m["overlaps"].items():
            paper = PAPER["modadd_overlaps"].get(block, {})
            for fam in FAMILIES:
                lines.append(
                    f"| {block} | {fam} | {fams[fam]:.2f} / {m['p'] - 1} | {paper.get(fam, '')} |"
                )
        lines += [
            "",
            "After the two-stage smoothness rotation, the weakest frequency's best atom:",
            "",
        ]
        lines += [
            f"- {fam}: {v['min_best_after']:.3f} (before: {min(v['best_before']):.3f})"
            for fam, v in m["rotation"].items()
        ]
        lines += ["", "Layer kernels:", ""]
        for name, layer in m["layers"].items():
            cliffs = ", ".join(f"{i}: {r:.3g}" for i, r in layer["cliffs"])
            ranks = ", ".join(f"{i}" for i, _ in layer["rank_cliffs"]) or "none"
            lines.append(
                f"- {name}: cliffs {cliffs}; rank {layer['rank']} (rank cliffs after: {ranks}); "
                f"block 2–{2 * (m['p'] - 1) + 1} vs a ∪ b {layer['block_2_vs_a_union_b']:.2f}, "
                f"vs a+b ∪ a−b {layer['block_2_vs_sum_union_diff']:.2f}"
            )
        lines += [""]
        lines += _figures(report, "modadd_")
    if "grokking" in sections:
        g = sections["grokking"]
        lines += ["## Grokking diagnosis", ""]
        lines += [
            f"Onset (peak derivative of the a+b overlap of the second cliff block) at epoch "
            f"**{g['onset']}**; test accuracy first above 50% at epoch {g['test_acc_above_50']}, "
            f"above 95% at {g['test_acc_above_95']} ({g['n_checkpoints']} checkpoints, "
            f"{report['seconds']['grokking'].get('sweep', 0):.0f} s). Paper: {PAPER['grokking']}.",
            "",
        ]
        lines += _figures(report, "grokking_")
    if "transformer" in sections:
        from .reproduce_transformer import markdown

        lines += markdown(report)
    if "lm" in sections:
        from .reproduce_lm import markdown as lm_markdown

        lines += lm_markdown(report)
    lines += ["## Checks", ""]
    for name, checks in report["checks"].items():
        for text, ok in checks.items():
            lines.append(f"- [{'x' if ok else ' '}] {name}: {text}")
    return "\n".join(lines) + "\n"


# --- CLI ------------------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's findings (TMS, modular addition, grokking, transformer) into "
        "a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=[*SECTIONS, "all"], help="which section(s)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory")
    parser.add_argument(
        "--runs", type=Path, default=None, metavar="DIR", help="run directories (default OUT/runs)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes: a smoke test in under a minute"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    lm = parser.add_argument_group("the lm section")
    lm.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="a local Hugging Face model directory or a hub name in the local cache (default: "
        "the packaged all-MiniLM-L6-v2)",
    )
    lm.add_argument(
        "--layer",
        default=None,
        metavar="L",
        help="the Linear / Conv1D module (default: the last-but-one block's MLP output)",
    )
    lm.add_argument(
        "--text", default=None, metavar="FILE", help="English text (default: Python's docs)"
    )
    lm.add_argument(
        "--readout",
        choices=("word", "mask"),
        default="word",
        help="encoders: read at the labelled word or at a mask token in its place",
    )
    add_json_flag(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    sections = list(SECTIONS) if args.what == "all" else [args.what]
    if args.what == "all" and lm_available() is not None:
        print(f"skipping lm: {lm_available()}", file=sys.stderr)
        sections.remove("lm")
    plan = Plan.reduced() if args.quick else Plan.paper()
    lm_options = {
        "model": args.model,
        "layer": args.layer,
        "text": None if args.text is None else str(args.text),
        "readout": args.readout,
    }
    plan = replace(plan, lm=replace(plan.lm, **lm_options))
    with stdout_to_stderr(args.json):
        report = reproduce(
            sections, args.out, runs=args.runs, progress=not args.no_progress, plan=plan
        )
    failed = [
        f"{name}: {text}"
        for name, checks in report["checks"].items()
        for text, ok in checks.items()
        if not ok
    ]
    if args.json:
        print_json(
            {
                "report": args.out / "report.md",
                "report_json": args.out / "report.json",
                "seconds": report["seconds"],
                "checks": report["checks"],
                "not_reproduced": failed,
            }
        )
        return 0
    print(f"report written to {args.out / 'report.md'} ({report['seconds']['all']:.0f} s)")
    for text in failed:
        print(f"  not reproduced: {text}")
    return 0
