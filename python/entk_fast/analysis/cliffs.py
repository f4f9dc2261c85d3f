"""Spectral cliffs: the largest ratios λ_k / λ_{k+1} of a descending spectrum, and the blocks of
eigenvectors they delimit (J. Lin, arXiv 2510.00468: sharp cliffs separate feature families).

The ratio primitive `spectral_cliffs` (``NTKSpectrum.gaps`` uses it), the cliffs that are
features rather than the kernel's rank (`feature_cliffs`), and the blocks they delimit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import InvalidArgumentError

__all__ = [
    "RIDGE_EPSILON",
    "CliffReport",
    "SpectralCliff",
    "cliff_blocks",
    "feature_cliffs",
    "spectral_cliffs",
]


RIDGE_EPSILON = 1e-8
"""Relative ridge ε (J. Lin, arXiv 2510.00468): eigenvalues are floored at ε · mean(diag K)
before spectral ratios are taken, so round-off zeros give large but finite ratios.

Examples:
    >>> from entk_fast.analysis import RIDGE_EPSILON, spectral_cliffs
    >>> RIDGE_EPSILON
    1e-08
    >>> cliff = spectral_cliffs([2.0, 1.0, 0.0], top=1, mean_diagonal=1.0)[0]
    >>> cliff.index, cliff.ratio  # 1.0 / (ε · 1.0), not 1.0 / 0
    (2, 100000000.0)
"""


@dataclass(frozen=True)
class SpectralCliff:
    """A gap after the ``index``-th eigenvalue (counted from 1): λ_index / λ_{index+1}.

    One entry of `spectral_cliffs`; a sharp cliff separates feature families
    (J. Lin, arXiv 2510.00468).

    Examples:
        >>> from entk_fast.analysis import spectral_cliffs
        >>> spectral_cliffs([10.0, 9.0, 3.0, 2.9], top=1)[0]
        SpectralCliff(index=2, ratio=3.0, before=9.0, after=3.0)
    """

    index: int
    """k, counted from 1: the cliff lies between λ_k and λ_{k+1}."""
    ratio: float
    """λ_k / λ_{k+1}, both floored at ε·mean(diag K) (`RIDGE_EPSILON`)."""
    before: float
    """λ_k, unfloored."""
    after: float
    """λ_{k+1}, unfloored."""


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

    Returns:
        Up to ``top`` `SpectralCliff` s, largest ratio first (ties: smaller k first).

    Raises:
        InvalidArgumentError: ``values`` is not a finite, descending 1-D array of at least two
            eigenvalues, or ``top`` < 1.

    Examples:
        >>> from entk_fast.analysis import spectral_cliffs
        >>> for cliff in spectral_cliffs([10.0, 9.0, 3.0, 2.9, 0.1], top=2):
        ...     print(cliff.index, round(cliff.ratio, 2))
        4 29.0
        2 3.0
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
        InvalidArgumentError: a cut is < 1 or > ``size``.
        InvalidTypeError: a cut is not an integer (``2.7`` is refused, not truncated).

    Examples:
        >>> from entk_fast.analysis import cliff_blocks
        >>> cliff_blocks((1, 57, 113), 120)
        [(1, 1), (2, 57), (58, 113)]
    """
    points = sorted({check_int("cut", c, minimum=1) for c in cuts})
    if points and points[-1] > size:
        raise InvalidArgumentError(f"cuts: expected indices ≤ {size}, got {points[-1]}")
    blocks = []
    start = 1
    for cut in points:
        blocks.append((start, cut))
        start = cut + 1
    return blocks
