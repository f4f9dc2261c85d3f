"""Spectral cliffs: the largest ratios λ_k / λ_{k+1} of a descending spectrum, and the blocks of
eigenvectors they delimit (J. Lin, arXiv 2510.00468: sharp cliffs separate feature families).

The ratio primitive is defined with the result types (``NTKSpectrum.gaps`` uses it); this
module adds the analyses: cliffs that are features rather than the kernel's rank, and blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import InvalidArgumentError
from ..results import RIDGE_EPSILON, SpectralCliff, spectral_cliffs

__all__ = [
    "RIDGE_EPSILON",
    "CliffReport",
    "SpectralCliff",
    "cliff_blocks",
    "feature_cliffs",
    "spectral_cliffs",
]


@dataclass(frozen=True)
class CliffReport:
    """The cliffs of one spectrum: feature cliffs (both sides above the floor) and rank cliffs.

    ``rank`` is the number of eigenvalues above the floor ε·mean(diag K); a cliff whose lower
    side is under the floor marks the kernel's rank (e.g. a layer with fewer parameters than
    samples), not a feature family, and is listed in ``rank_cliffs`` only. Made by
    `feature_cliffs`.

    Examples:
        >>> from entk_fast.analysis import feature_cliffs
        >>> report = feature_cliffs([10.0, 9.0, 3.0, 2.9, 1e-12, 1e-13], top=1)
        >>> report.rank, [c.index for c in report.cliffs], [c.index for c in report.rank_cliffs]
        (4, [2], [4])
    """

    cliffs: list[SpectralCliff]
    """Feature cliffs, largest ratio first."""
    rank_cliffs: list[SpectralCliff]
    """Cliffs from above the floor to below it (the kernel's rank)."""
    floor: float
    """ε·mean(diag K), ε = `RIDGE_EPSILON`."""
    rank: int
    """The number of eigenvalues above the floor."""

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready dicts and numbers."""
        return {
            "cliffs": [c.__dict__ for c in self.cliffs],
            "rank_cliffs": [c.__dict__ for c in self.rank_cliffs],
            "floor": self.floor,
            "rank": self.rank,
        }


def feature_cliffs(
    values: Any,
    *,
    top: int = 5,
    within: int | None = None,
    mean_diagonal: float | None = None,
) -> CliffReport:
    """The ``top`` largest cliffs λ_k / λ_{k+1} among the first ``within`` eigenvalues whose
    lower side λ_{k+1} is above the ridge floor ε·mean(diag K) (ε = `RIDGE_EPSILON`).

    Args:
        values: (n,) eigenvalues, descending.
        top: how many feature cliffs to report (largest ratio first).
        within: only cliffs with k + 1 ≤ ``within`` (e.g. 60: "among the top 60 eigenvalues").
        mean_diagonal: mean(diag K) (default: the mean of ``values``, exact for a full
            spectrum; pass trace(K)/n when only the top eigenvalues are known).

    Returns:
        A `CliffReport`. Sharp cliffs separate feature families (J. Lin, arXiv
        2510.00468).

    Raises:
        InvalidTypeError: ``top`` or ``within`` is not an integer.
        InvalidArgumentError: ``values`` is not a finite descending 1-D spectrum of at least
            two eigenvalues, ``top`` < 1 or ``within`` < 2.

    Examples:
        >>> from entk_fast.analysis import feature_cliffs
        >>> report = feature_cliffs([10.0, 9.0, 3.0, 2.9, 1e-12, 1e-13], top=2)
        >>> [(c.index, round(c.ratio, 3)) for c in report.cliffs]
        [(2, 3.0), (1, 1.111)]
        >>> report.rank_cliffs[0].index  # 2.9 -> 1e-12: the kernel's rank, not a feature
        4
    """
    v = np.asarray(values, dtype=np.float64)
    check_int("top", top, minimum=1)
    every = spectral_cliffs(v, top=max(1, v.size - 1), mean_diagonal=mean_diagonal)
    scale = float(np.mean(v)) if mean_diagonal is None else float(mean_diagonal)
    floor = RIDGE_EPSILON * max(scale, np.finfo(np.float64).tiny)
    limit = v.size if within is None else check_int("within", within, minimum=2)
    kept = [c for c in every if c.index + 1 <= limit]
    features = [c for c in kept if c.after > floor][:top]
    rank_cliffs = [c for c in kept if c.after <= floor < c.before]
    return CliffReport(features, rank_cliffs, floor, int((v > floor).sum()))


def cliff_blocks(cuts: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Blocks of eigenvector indices between cliffs: 1-based inclusive (first, last).

    ``cuts`` are cliff indices k (a cliff after eigenvalue k); e.g. cuts (1, 57, 113) give
    (1, 1), (2, 57), (58, 113) — the eigenvalue before the first cut is a block of its own.
    Eigenvalues after the last cut form no block.

    Args:
        cuts: cliff indices k ≥ 1, in any order (duplicates are merged).
        size: the number of eigenvectors; every cut must be ≤ size.

    Returns:
        (first, last) 1-based inclusive index pairs, ascending, e.g. for
        `block_overlaps`.

    Raises:
        InvalidArgumentError: a cut is < 1 or > ``size``. Cuts go through ``int()`` first, so
            a float is truncated and a non-number raises ``int()``'s own error.

    Examples:
        >>> from entk_fast.analysis import cliff_blocks
        >>> cliff_blocks((1, 57, 113), 120)
        [(1, 1), (2, 57), (58, 113)]
    """
    points = sorted({check_int("cut", int(c), minimum=1) for c in cuts})
    if points and points[-1] > size:
        raise InvalidArgumentError(f"cuts: expected indices ≤ {size}, got {points[-1]}")
    blocks = []
    start = 1
    for cut in points:
        blocks.append((start, cut))
        start = cut + 1
    return blocks
