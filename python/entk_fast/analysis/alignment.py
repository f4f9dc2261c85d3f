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
    the ends (second-order accurate, as ``numpy.gradient``)."""
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
    """An overlap per checkpoint (in % of the family's dimension) and its derivative."""

    steps: np.ndarray
    overlap_percent: np.ndarray
    derivative: np.ndarray
    """Percentage points per step."""

    @property
    def onset(self) -> int:
        """The step where the overlap rises fastest (the peak of the derivative)."""
        return int(self.steps[int(np.argmax(self.derivative))])

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps.tolist(),
            "overlap_percent": self.overlap_percent.tolist(),
            "derivative": self.derivative.tolist(),
            "onset": self.onset,
        }


def alignment_curve(steps: Any, overlaps: Any, dimension: int) -> AlignmentCurve:
    """The curve of overlaps (Σ cos², one per checkpoint) with a family of ``dimension``."""
    if dimension < 1:
        raise InvalidArgumentError(f"dimension: expected ≥ 1, got {dimension}")
    percent = 100.0 * np.asarray(overlaps, dtype=np.float64) / dimension
    x = np.asarray(steps, dtype=np.float64)
    return AlignmentCurve(x.astype(np.int64), percent, central_difference(x, percent))


def principal_angles_degrees(a: Any, b: Any) -> list[float]:
    """Principal angles between span(a) and span(b), in degrees, ascending."""
    return np.degrees(linalg.principal_angles(a, b)).tolist()
