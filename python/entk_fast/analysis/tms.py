"""TMS feature recovery from the flattened eNTK (J. Lin, arXiv 2510.00468, Toy Models of
Superposition): how the top eigenvectors line up with the input features.

The feature indicator of feature a is z^a ∈ R^{N·C} with x_a(n) at row n·C + a and 0
elsewhere (the kernel's row layout). The heatmap H[a, j] = |⟨ẑ^a, ê_j⟩| compares unit
indicators with unit eigenvectors, then each eigenvector's column is normalised to unit
length over a, so a column with one dominant feature has a maximum near 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import InvalidArgumentError

__all__ = ["FeatureMatch", "feature_heatmap", "feature_indicators", "match_features"]


def feature_indicators(x: Any, n_outputs: int | None = None) -> np.ndarray:
    """Z (N·C, n): column a is z^a, x_a(n) at row n·C + a (C = ``n_outputs``, default n)."""
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2 or data.size == 0:
        raise InvalidArgumentError(f"x: expected the inputs as a matrix (N, n), got {data.shape}")
    n_samples, n_features = data.shape
    c = n_features if n_outputs is None else check_int("n_outputs", n_outputs, minimum=1)
    if c < n_features:
        raise InvalidArgumentError(
            f"n_outputs: feature a sits at output a, so C must be ≥ n = {n_features}, got {c}"
        )
    z = np.zeros((n_samples, c, n_features))
    idx = np.arange(n_features)
    z[:, idx, idx] = data
    return z.reshape(n_samples * c, n_features)


def feature_heatmap(eigenvectors: Any, x: Any) -> np.ndarray:
    """H (n, k): |cos| between each unit feature indicator and each eigenvector, then each
    column (eigenvector) normalised to unit L2 norm over the features.

    Args:
        eigenvectors: (N·C, k), columns of a flattened kernel's eigenvectors (row = n·C + c).
        x: (N, n) the inputs; C = N·C / N.
    """
    v = np.asarray(eigenvectors, dtype=np.float64)
    data = np.asarray(x, dtype=np.float64)
    if v.ndim != 2 or data.ndim != 2 or v.shape[0] % max(data.shape[0], 1):
        raise InvalidArgumentError(
            f"eigenvectors: expected (N·C, k) rows for the N = {data.shape[0]} inputs, got "
            f"{v.shape}"
        )
    z = feature_indicators(data, v.shape[0] // data.shape[0])
    zn = np.linalg.norm(z, axis=0)
    vn = np.linalg.norm(v, axis=0)
    cos = np.abs(z.T @ v) / np.maximum(np.outer(zn, vn), np.finfo(np.float64).tiny)
    cn = np.linalg.norm(cos, axis=0)
    return cos / np.maximum(cn, np.finfo(np.float64).tiny)


@dataclass(frozen=True)
class FeatureMatch:
    """Which feature each eigenvector matches best (arg-max of its heatmap column)."""

    best: np.ndarray
    """(k,) the best feature of each eigenvector."""
    strength: np.ndarray
    """(k,) each column's maximum."""

    @property
    def n_distinct(self) -> int:
        """How many different features the eigenvectors match."""
        return int(np.unique(self.best).size)

    @property
    def mean_column_max(self) -> float:
        return float(self.strength.mean())

    def in_order(self, count: int) -> bool:
        """Whether the first ``count`` eigenvectors match features 0, 1, …, count − 1."""
        return bool(np.array_equal(self.best[:count], np.arange(count)))


def match_features(heatmap: Any) -> FeatureMatch:
    """The best feature of each eigenvector column of a :func:`feature_heatmap`."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise InvalidArgumentError(f"heatmap: expected a matrix (n, k), got {h.shape}")
    return FeatureMatch(best=h.argmax(axis=0), strength=h.max(axis=0))
