"""Alignment over training: how an eigenvector block's overlap with a feature family grows
across checkpoints, its rate of change, and the epoch where the rise is fastest (J. Lin,
arXiv 2510.00468: the eNTK diagnoses the grokking transition).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import linalg
from ..errors import InvalidArgumentError

__all__ = ["AlignmentCurve", "alignment_curve", "central_difference", "principal_angles_degrees"]


def central_difference(steps: Any, values: Any) -> np.ndarray:
    """d values / d step on a possibly uneven grid: central differences inside, one-sided at
    the ends (second-order accurate, as ``numpy.gradient``).

    Args:
        steps: (T,) strictly increasing checkpoint steps, T ≥ 2.
        values: (T,) a value per step.

    Returns:
        (T,) float64 derivative, in units of ``values`` per step.

    Raises:
        InvalidArgumentError: the arrays are not 1-D of one length ≥ 2, or ``steps`` is not
            strictly increasing.

    Examples:
        >>> from entk_fast.analysis import central_difference
        >>> central_difference([0, 1, 2, 4], [0.0, 1.0, 4.0, 16.0])  # d(s²)/ds = 2s
        array([0., 2., 4., 8.])
    """
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape or x.size < 2:
        raise InvalidArgumentError(
            f"steps, values: expected two 1-D arrays of the same length ≥ 2, got {x.shape}, "
            f"{y.shape}"
        )
    if np.any(np.diff(x) <= 0):
        raise InvalidArgumentError("steps: expected strictly increasing steps")
    return np.gradient(y, x, edge_order=2 if x.size > 2 else 1)


@dataclass(frozen=True)
class AlignmentCurve:
    """An overlap per checkpoint (in % of the family's dimension) and its derivative.

    Made by `alignment_curve`; the paper's alignment-over-training curves (J. Lin,
    arXiv 2510.00468), whose `onset` marks the grokking transition.

    Examples:
        >>> from entk_fast.analysis import alignment_curve
        >>> curve = alignment_curve([0, 10, 20, 30], [0.0, 0.4, 3.2, 3.6], dimension=4)
        >>> curve.overlap_percent, curve.onset
        (array([ 0., 10., 80., 90.]), 10)
    """

    steps: np.ndarray
    """(T,) int64 checkpoint steps, increasing."""
    overlap_percent: np.ndarray
    """(T,) float64 overlap in % of the family's dimension, in [0, 100]."""
    derivative: np.ndarray
    """Percentage points per step."""

    @property
    def onset(self) -> int:
        """The step where the overlap rises fastest (the peak of the derivative)."""
        return int(self.steps[int(np.argmax(self.derivative))])

    def as_dict(self) -> dict[str, Any]:
        """The curve as JSON-ready lists, with its ``onset``."""
        return {
            "steps": self.steps.tolist(),
            "overlap_percent": self.overlap_percent.tolist(),
            "derivative": self.derivative.tolist(),
            "onset": self.onset,
        }


def alignment_curve(steps: Any, overlaps: Any, dimension: int) -> AlignmentCurve:
    """The curve of overlaps (Σ cos², one per checkpoint) with a family of ``dimension``.

    Args:
        steps: (T,) strictly increasing checkpoint steps (integers), T ≥ 2.
        overlaps: (T,) subspace overlaps Σ cos² (`entk_fast.linalg.subspace_overlap`)
            of an eigenvector block with the family, one per checkpoint, in [0, dimension].
        dimension: the family's dimension (p − 1 for a Fourier family).

    Returns:
        An `AlignmentCurve`: overlaps in % and their derivative in points per step.

    Raises:
        InvalidArgumentError: ``dimension`` < 1, or ``steps`` and ``overlaps`` are not 1-D
            of one length ≥ 2 with increasing steps.

    Examples:
        >>> from entk_fast.analysis import alignment_curve
        >>> curve = alignment_curve([0, 10, 20, 30], [0.0, 0.4, 3.2, 3.6], dimension=4)
        >>> curve.derivative  # percentage points per step
        array([-2.,  4.,  4., -2.])
        >>> curve.onset  # the first step of the fastest rise
        10
    """
    if dimension < 1:
        raise InvalidArgumentError(f"dimension: expected ≥ 1, got {dimension}")
    percent = 100.0 * np.asarray(overlaps, dtype=np.float64) / dimension
    x = np.asarray(steps, dtype=np.float64)
    return AlignmentCurve(x.astype(np.int64), percent, central_difference(x, percent))


def principal_angles_degrees(a: Any, b: Any) -> list[float]:
    """Principal angles between span(a) and span(b), in degrees, ascending.

    Args:
        a: (n, d) float32/float64 matrix or (n,) vector.
        b: (n, m) matrix or vector of the same dtype.

    Returns:
        min(rank a, rank b) angles in [0, 90], as a list of floats
        (`entk_fast.linalg.principal_angles` in degrees).

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: a and b differ in rows, or hold NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import principal_angles_degrees
        >>> a = np.array([1.0, 0.0, 0.0])
        >>> b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> [round(angle, 6) for angle in principal_angles_degrees(a, b)]
        [45.0]
    """
    return np.degrees(linalg.principal_angles(a, b)).tolist()
