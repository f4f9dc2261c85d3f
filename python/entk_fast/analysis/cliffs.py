"""Spectral cliffs: the largest ratios λ_k / λ_{k+1} of a descending spectrum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

__all__ = ["SpectralCliff", "spectral_cliffs", "RIDGE_EPSILON"]

#: Relative ridge ε of SPEC §1: eigenvalues are floored at ε · mean(diag K) before ratios.
RIDGE_EPSILON = 1e-8


@dataclass(frozen=True)
class SpectralCliff:
    """A gap after the ``index``-th eigenvalue (counted from 1): λ_index / λ_{index+1}."""

    index: int
    ratio: float
    before: float
    after: float


def spectral_cliffs(
    values: Any, *, top: int = 3, mean_diagonal: float | None = None
) -> list[SpectralCliff]:
    """The ``top`` largest ratios λ_k / λ_{k+1} of a descending spectrum, largest first.

    Args:
        values: (n,) eigenvalues in descending order (a kernel's, so ≥ 0 up to round-off).
        top: how many cliffs to report.
        mean_diagonal: mean(diag K) = trace / n, which sets the floor ε·mean(diag K) applied to
            eigenvalues before taking ratios (ε = RIDGE_EPSILON), so round-off zeros do not
            produce infinite ratios. Default: the mean of ``values`` (exact for a full spectrum).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise InvalidArgumentError(
            f"values: expected a 1-D spectrum with at least 2 eigenvalues, got shape {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise InvalidArgumentError("values: expected finite eigenvalues")
    if np.any(np.diff(v) > 1e-12 * max(abs(v[0]), 1e-300)):
        raise InvalidArgumentError("values: expected eigenvalues in descending order")
    if top < 1:
        raise InvalidArgumentError(f"top: expected an integer ≥ 1, got {top}")
    scale = float(np.mean(v)) if mean_diagonal is None else float(mean_diagonal)
    floor = RIDGE_EPSILON * max(scale, np.finfo(np.float64).tiny)
    clipped = np.maximum(v, floor)
    ratios = clipped[:-1] / clipped[1:]
    order = np.argsort(-ratios, kind="stable")[:top]
    return [
        SpectralCliff(
            index=int(i) + 1, ratio=float(ratios[i]), before=float(v[i]), after=float(v[i + 1])
        )
        for i in order
    ]
