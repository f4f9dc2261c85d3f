"""Scoring eigenvectors against linguistic labels: the language-model experiment's numbers.

J. Lin, arXiv 2510.00468 (v4), on a pretrained language model: each top eigenvector of one
layer's flattened eNTK, reshaped to (N, d), gives one score per context from its top singular
pair (u·σ); each PCA mode of the same layer's activations gives its PC score. For every label
(a part-of-speech tag, a morphology feature) the best (mode, sign) is chosen by average
precision on a stratified train half, and scored on the test half by AUROC, AP and precision
at the label's quota (the number of positives). Torch-free: numpy only (scikit-learn for the
linear-probe ceiling alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "auroc",
    "average_precision",
    "best_mode",
    "evaluate_labels",
    "eigenvector_scores",
    "modes_served",
    "pca_scores",
    "precision_at_quota",
    "probe_ceiling",
    "random_scores",
    "stratified_split",
]


def _binary(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if s.shape != y.shape:
        raise InvalidArgumentError(
            f"scores and positive must have the same length, got {s.shape} and {y.shape}"
        )
    if not y.any() or y.all():
        raise InvalidArgumentError("positive must hold both positives and negatives")
    return s, y


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count ½
    (the Mann–Whitney statistic, with average ranks)."""
    s, y = _binary(scores, positive)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average rank of each tie group (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = 0.5 * (a + b - 1) + 1.0
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision Σ_k (R_k − R_{k−1}) P_k over the distinct score thresholds, highest
    first (scikit-learn's definition: no interpolation)."""
    s, y = _binary(scores, positive)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie group
    hits = np.cumsum(y)[last]
    precision = hits / (last + 1)
    recall = hits / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_at_quota(scores: np.ndarray, positive: np.ndarray) -> float:
    """The fraction of positives among the q highest scores, q = the number of positives."""
    s, y = _binary(scores, positive)
    q = int(y.sum())
    top = np.argsort(-s, kind="mergesort")[:q]
    return float(y[top].mean())


def eigenvector_scores(vectors: np.ndarray, n_samples: int, width: int) -> np.ndarray:
    """(N, k) scores: eigenvector j (N·d,) reshaped to (N, d), its top left singular vector
    times the singular value (u·σ), one score per context.

    Args:
        vectors: (N·d, k) eigenvectors of a flattened kernel, row = n·d + c.
        n_samples: N. width: d, the outputs per context.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != n_samples * width:
        raise InvalidArgumentError(
            f"vectors must be (N·d, k) = ({n_samples * width}, k), got {v.shape}"
        )
    out = np.empty((n_samples, v.shape[1]))
    for j in range(v.shape[1]):
        u, s, _ = np.linalg.svd(v[:, j].reshape(n_samples, width), full_matrices=False)
        out[:, j] = u[:, 0] * s[0]
    return out


def pca_scores(activations: np.ndarray, k: int) -> np.ndarray:
    """(N, k) principal-component scores of the centred activations (N, d)."""
    x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= min(x.shape):
        raise InvalidArgumentError(f"activations must be (N, d) with k ≤ min(N, d), got {x.shape}")
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] * s[:k]


def random_scores(activations: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N, k) projections of the centred activations on k random unit directions: what any
    k directions score, the floor both methods must clear."""
    x = np.asarray(activations, dtype=np.float64)
    x = x - x.mean(axis=0)
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], k))
    directions /= np.linalg.norm(directions, axis=0)
    return x @ directions


def stratified_split(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) bool: a train half of each label's samples (rounded down), chosen at random."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train = np.zeros(len(y), dtype=bool)
    for value in np.unique(y):
        members = np.flatnonzero(y == value)
        train[rng.permutation(members)[: len(members) // 2]] = True
    return train


def best_mode(scores: np.ndarray, positive: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """The (mode, sign) of ``scores`` (N, k) with the best train AP for ``positive`` (N,), and
    its test AUROC, AP and precision at quota."""
    y = np.asarray(positive, dtype=bool)
    tr = np.asarray(train, dtype=bool)
    te = ~tr
    best = (-1.0, 0, 1)
    for j in range(scores.shape[1]):
        for sign in (1, -1):
            ap = average_precision(sign * scores[tr, j], y[tr])
            if ap > best[0]:
                best = (ap, j, sign)
    ap_train, j, sign = best
    s = sign * scores[te, j]
    return {
        "mode": j,
        "sign": sign,
        "train_ap": ap_train,
        "auroc": auroc(s, y[te]),
        "ap": average_precision(s, y[te]),
        "precision_at_quota": precision_at_quota(s, y[te]),
    }


def evaluate_labels(
    scores: np.ndarray, positives: dict[str, np.ndarray], train: np.ndarray
) -> dict[str, Any]:
    """Per label :func:`best_mode`, and the macro means of test AUROC, AP and precision.

    Returns ``{"per_label": {name: {...}}, "macro": {"auroc", "ap", "precision_at_quota"}}``.
    """
    per = {name: best_mode(scores, y, train) for name, y in positives.items()}
    macro = {
        key: float(np.mean([r[key] for r in per.values()]))
        for key in ("auroc", "ap", "precision_at_quota")
    }
    return {"per_label": per, "macro": macro}


def probe_ceiling(
    activations: np.ndarray, positives: dict[str, np.ndarray], train: np.ndarray
) -> dict[str, Any]:
    """A supervised ceiling: per label, a logistic regression on the full (standardised)
    activations, fit on the train half; test AUROC, AP and precision at quota, and macros."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:  # pragma: no cover - the lm extra installs it
        raise InvalidArgumentError(
            f"the probe ceiling needs scikit-learn: pip install 'entk-fast[lm]' ({e})"
        ) from None
    x = np.asarray(activations, dtype=np.float64)
    tr = np.asarray(train, dtype=bool)
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0) + 1e-12
    z = (x - mean) / std
    per: dict[str, Any] = {}
    for name, y in positives.items():
        y = np.asarray(y, dtype=bool)
        clf = LogisticRegression(C=0.1, max_iter=2000)
        clf.fit(z[tr], y[tr])
        s = clf.decision_function(z[~tr])
        per[name] = {
            "auroc": auroc(s, y[~tr]),
            "ap": average_precision(s, y[~tr]),
            "precision_at_quota": precision_at_quota(s, y[~tr]),
        }
    macro = {
        key: float(np.mean([r[key] for r in per.values()]))
        for key in ("auroc", "ap", "precision_at_quota")
    }
    return {"per_label": per, "macro": macro}


def modes_served(per_label: dict[str, dict[str, Any]], names: Sequence[str]) -> dict[int, list]:
    """Which labels each chosen mode serves: {mode: [label, ...]} over ``names``."""
    served: dict[int, list[str]] = {}
    for name in names:
        served.setdefault(int(per_label[name]["mode"]), []).append(name)
    return dict(sorted(served.items()))
