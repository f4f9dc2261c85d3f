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
    """Z (N·C, n): column a is z^a, x_a(n) at row n·C + a (C = ``n_outputs``, default n).

    Args:
        x: (N, n) the inputs, one row a sample.
        n_outputs: C ≥ n, the model's outputs (feature a sits at output a).

    Returns:
        (N·C, n) float64, in the flattened kernel's row layout.

    Raises:
        InvalidTypeError: ``n_outputs`` is not an integer.
        InvalidArgumentError: ``x`` is not a non-empty 2-D array, or ``n_outputs`` < n.

    Examples:
        >>> from entk_fast.analysis import feature_indicators
        >>> feature_indicators([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])  # N = 2, n = C = 3
        array([[1., 0., 0.],
               [0., 0., 0.],
               [0., 0., 2.],
               [0., 0., 0.],
               [0., 3., 0.],
               [0., 0., 0.]])
    """
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

    The paper's TMS feature × eigenvector heatmap (J. Lin, arXiv 2510.00468).

    Args:
        eigenvectors: (N·C, k), columns of a flattened kernel's eigenvectors (row = n·C + c).
        x: (N, n) the inputs; C = N·C / N.

    Returns:
        (n, k) float64 in [0, 1]; row a is feature a, column j eigenvector j.

    Raises:
        InvalidArgumentError: the arrays are not 2-D, the rows of ``eigenvectors`` are no
            multiple of N, or C < n.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import feature_heatmap, feature_indicators
        >>> x = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
        >>> vectors = feature_indicators(x)[:, [2, 0]]  # eigenvectors = features 2 and 0
        >>> feature_heatmap(vectors, x)
        array([[0., 1.],
               [0., 0.],
               [1., 0.]])
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
    """Which feature each eigenvector matches best (arg-max of its heatmap column).

    Made by `match_features`.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import match_features
        >>> match = match_features(np.array([[0.9, 0.1, 0.8], [0.2, 0.95, 0.3]]))
        >>> match.best, match.n_distinct, match.in_order(2)
        (array([0, 1, 0]), 2, True)
    """

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
        """The mean of ``strength``: how cleanly, on average, an eigenvector is one feature."""
        return float(self.strength.mean())

    def in_order(self, count: int) -> bool:
        """Whether the first ``count`` eigenvectors match features 0, 1, …, count − 1."""
        return bool(np.array_equal(self.best[:count], np.arange(count)))


def match_features(heatmap: Any) -> FeatureMatch:
    """The best feature of each eigenvector column of a `feature_heatmap`.

    Args:
        heatmap: (n, k) features × eigenvectors.

    Returns:
        A `FeatureMatch` (ties: the lower feature).

    Raises:
        InvalidArgumentError: ``heatmap`` is not a non-empty 2-D array.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import match_features
        >>> match = match_features(np.array([[0.9, 0.1], [0.2, 0.95]]))
        >>> match.best, match.strength
        (array([0, 1]), array([0.9 , 0.95]))
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise InvalidArgumentError(f"heatmap: expected a matrix (n, k), got {h.shape}")
    return FeatureMatch(best=h.argmax(axis=0), strength=h.max(axis=0))
