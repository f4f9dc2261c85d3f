"""The TMS section: feature recovery from the flattened eNTK with output metric I^β
(arXiv 2510.00468, Toy Models of Superposition)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ...analysis import (
    feature_cliffs,
    feature_heatmap,
    match_features,
)
from .base import Log, Section, cached_spectrum, trained_run
from .plan import BETAS, Plan, tms_run_name

__all__ = ["run_tms"]

# --- TMS ------------------------------------------------------------------------------------------


def run_tms(plan: Plan, runs: Path, cache: Path, log: Log) -> Section:
    """Feature recovery in TMS from the flattened eNTK with output metric I^β."""
    from ...ntk.spectrum import entk_spectrum
    from ..figures import feature_heatmap_figure, spectrum_figure

    section = Section()
    for position, config in enumerate(plan.tms):
        hidden, sparsity = config.n_hidden, config.sparsity
        name = f"{hidden}-{sparsity:g}"
        run = trained_run(config, runs / tms_run_name(config), log)
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

            spectrum = cached_spectrum(cache / f"{tms_run_name(config)}-beta{beta:g}.npz", compute)
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
