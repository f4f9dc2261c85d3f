"""The modular-addition section: cliffs, Fourier-family overlaps, the smoothness rotation and the
layerwise kernels of the grokked MLP (arXiv 2510.00468)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ... import linalg
from ...analysis import (
    atoms_found,
    block_overlaps,
    cliff_blocks,
    feature_cliffs,
    fourier_family,
    frequency_heatmap,
    smoothness_rotation,
)
from ...errors import InvalidArgumentError
from .base import Log, Section, trained_run
from .plan import Plan, modadd_run_name

__all__ = ["modadd_blocks", "run_modadd"]

# --- modular addition -----------------------------------------------------------------------------


def modadd_blocks(p: int) -> list[tuple[int, int]]:
    """(1, 1), (2, 2p − 1), (2p, 4p − 3): the isolated top mode and the two cliff blocks."""
    return cliff_blocks([1, 2 * (p - 1) + 1, 4 * (p - 1) + 1], p * p)


def _union_overlap(vectors: np.ndarray, p: int, families: tuple[str, str]) -> float:
    basis = np.concatenate([fourier_family(p, f) for f in families], axis=1)
    return linalg.subspace_overlap(vectors, basis)


def run_modadd(plan: Plan, runs: Path, cache: Path, log: Log) -> Section:
    """Cliffs, Fourier overlaps, the smoothness rotation and the layer kernels at the end."""
    from ...ntk import empirical_ntk
    from ...results import EmpiricalNTK
    from ..figures import fourier_heatmap_figure, layer_spectra_figure, spectrum_figure

    section = Section()
    config = plan.modadd
    p = config.p
    run = trained_run(config, runs / modadd_run_name(config), log)
    path = cache / f"{modadd_run_name(config)}-final.npz"
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
    blocks = modadd_blocks(p)
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
