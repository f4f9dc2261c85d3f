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
    (the Mann–Whitney statistic, with average ranks).

    Args:
        scores: (N,) real scores, higher meaning more likely positive.
        positive: (N,) bool labels (or anything ``numpy`` reads as bool).

    Returns:
        The AUROC in [0, 1] (0.5: chance).

    Raises:
        InvalidArgumentError: ``scores`` and ``positive`` differ in length, or ``positive``
            is all True or all False.

    Examples:
        >>> from entk_fast.analysis.language import auroc
        >>> auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
        0.75
    """
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
    first (scikit-learn's definition: no interpolation).

    Args:
        scores: (N,) real scores, higher meaning more likely positive.
        positive: (N,) bool labels.

    Returns:
        The AP in [0, 1] (chance: the fraction of positives).

    Raises:
        InvalidArgumentError: ``scores`` and ``positive`` differ in length, or ``positive``
            is all True or all False.

    Examples:
        >>> from entk_fast.analysis.language import average_precision
        >>> round(average_precision([0.1, 0.4, 0.35, 0.8], [False, False, True, True]), 6)
        0.833333
    """
    s, y = _binary(scores, positive)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each tie group
    hits = np.cumsum(y)[last]
    precision = hits / (last + 1)
    recall = hits / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_at_quota(scores: np.ndarray, positive: np.ndarray) -> float:
    """The fraction of positives among the q highest scores, q = the number of positives.

    Args:
        scores: (N,) real scores, higher meaning more likely positive.
        positive: (N,) bool labels.

    Returns:
        The precision in [0, 1] (ties at the cut are broken by order, stably).

    Raises:
        InvalidArgumentError: ``scores`` and ``positive`` differ in length, or ``positive``
            is all True or all False.

    Examples:
        >>> from entk_fast.analysis.language import precision_at_quota
        >>> precision_at_quota([0.1, 0.4, 0.35, 0.8], [False, False, True, True])  # top 2: 0.8, 0.4
        0.5
    """
    s, y = _binary(scores, positive)
    q = int(y.sum())
    top = np.argsort(-s, kind="mergesort")[:q]
    return float(y[top].mean())


def eigenvector_scores(vectors: np.ndarray, n_samples: int, width: int) -> np.ndarray:
    """(N, k) scores: eigenvector j (N·d,) reshaped to (N, d), its top left singular vector
    times the singular value (u·σ), one score per context.

    Args:
        vectors: (N·d, k) eigenvectors of a flattened kernel, row = n·d + c.
        n_samples: N.
        width: d, the outputs per context.

    Returns:
        (N, k) float64; a score's sign is the SVD's (arbitrary), which `best_mode`
        tries both ways.

    Raises:
        InvalidArgumentError: ``vectors`` is not (N·d, k).

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import eigenvector_scores
        >>> v = np.outer([3.0, 4.0], [1.0, 0.0]).reshape(4, 1) / 5  # N = 2 contexts, d = 2
        >>> np.abs(eigenvector_scores(v, n_samples=2, width=2))
        array([[0.6],
               [0.8]])
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
    """(N, k) principal-component scores of the centred activations (N, d).

    The baseline the eNTK eigenvectors are compared with (J. Lin, arXiv 2510.00468).

    Args:
        activations: (N, d) real.
        k: the number of components, 1 ≤ k ≤ min(N, d).

    Returns:
        (N, k) float64, column j the scores on the j-th principal axis (variance
        descending); signs are the SVD's.

    Raises:
        InvalidArgumentError: ``activations`` is not 2-D, or k is out of range.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import pca_scores
        >>> x = np.random.default_rng(0).standard_normal((6, 3))
        >>> scores = pca_scores(x, 2)
        >>> scores.shape, bool(scores[:, 0].var() >= scores[:, 1].var())
        ((6, 2), True)
    """
    x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= min(x.shape):
        raise InvalidArgumentError(f"activations must be (N, d) with k ≤ min(N, d), got {x.shape}")
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] * s[:k]


def random_scores(activations: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N, k) projections of the centred activations on k random unit directions: what any
    k directions score, the floor both methods must clear.

    Args:
        activations: (N, d) real.
        k: the number of directions.
        seed: seeds the directions (numpy's ``default_rng``).

    Returns:
        (N, k) float64.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import random_scores
        >>> x = np.random.default_rng(0).standard_normal((6, 3))
        >>> random_scores(x, 4).shape
        (6, 4)
    """
    x = np.asarray(activations, dtype=np.float64)
    x = x - x.mean(axis=0)
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], k))
    directions /= np.linalg.norm(directions, axis=0)
    return x @ directions


def stratified_split(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,) bool: a train half of each label's samples (rounded down), chosen at random.

    Args:
        labels: (N,) labels of any comparable type (e.g. one tag per context).
        seed: seeds the choice (numpy's ``default_rng``).

    Returns:
        (N,) bool, True for the train half; the rest is the test half.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import stratified_split
        >>> labels = np.array(["NOUN", "NOUN", "VERB", "VERB", "VERB", "VERB"])
        >>> train = stratified_split(labels)
        >>> int(train[labels == "NOUN"].sum()), int(train[labels == "VERB"].sum())
        (1, 2)
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train = np.zeros(len(y), dtype=bool)
    for value in np.unique(y):
        members = np.flatnonzero(y == value)
        train[rng.permutation(members)[: len(members) // 2]] = True
    return train


def best_mode(scores: np.ndarray, positive: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """The (mode, sign) of ``scores`` (N, k) with the best train AP for ``positive`` (N,), and
    its test AUROC, AP and precision at quota.

    Args:
        scores: (N, k) numpy array, one column per mode (`eigenvector_scores`,
            `pca_scores`).
        positive: (N,) bool labels.
        train: (N,) bool, the train half (`stratified_split`); the rest is the test
            half. Both halves need positives and negatives.

    Returns:
        ``{"mode", "sign", "train_ap", "auroc", "ap", "precision_at_quota"}``: the column,
        ±1, and floats in [0, 1] (the last three on the test half).

    Raises:
        InvalidArgumentError: a half holds only positives or only negatives.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import best_mode
        >>> scores = np.column_stack([np.ones(12), np.arange(12.0)])  # mode 1, sign -1
        >>> positive = np.arange(12) < 6
        >>> train = np.arange(12) % 2 == 0
        >>> best_mode(scores, positive, train)
        {'mode': 1, 'sign': -1, 'train_ap': 1.0, 'auroc': 1.0, 'ap': 1.0, 'precision_at_quota': 1.0}
    """
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
    """Per label `best_mode`, and the macro means of test AUROC, AP and precision.

    Returns ``{"per_label": {name: {...}}, "macro": {"auroc", "ap", "precision_at_quota"}}``.

    Args:
        scores: (N, k) numpy array, one column per mode.
        positives: label name -> (N,) bool.
        train: (N,) bool, the train half.

    Raises:
        InvalidArgumentError: as `best_mode`, for any label.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import evaluate_labels
        >>> scores = np.column_stack([np.arange(12.0)])
        >>> late = np.arange(12) >= 6
        >>> result = evaluate_labels(scores, {"late": late, "early": ~late}, np.arange(12) % 2 == 0)
        >>> result["per_label"]["early"]["sign"], result["macro"]["auroc"]
        (-1, 1.0)
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
    activations, fit on the train half; test AUROC, AP and precision at quota, and macros.

    Needs scikit-learn (the ``lm`` extra). Returns what `evaluate_labels` returns,
    without ``mode``, ``sign`` and ``train_ap``.

    Args:
        activations: (N, d) real.
        positives: label name -> (N,) bool.
        train: (N,) bool, the train half.

    Raises:
        InvalidArgumentError: scikit-learn is not installed, or a test half holds only
            positives or only negatives.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis.language import probe_ceiling
        >>> activations = np.column_stack([np.arange(12.0), np.zeros(12)])
        >>> late = np.arange(12) >= 6
        >>> probe_ceiling(activations, {"late": late}, np.arange(12) % 2 == 0)["macro"]
        {'auroc': 1.0, 'ap': 1.0, 'precision_at_quota': 1.0}
    """
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
    """Which labels each chosen mode serves: {mode: [label, ...]} over ``names``.

    Args:
        per_label: ``evaluate_labels(...)["per_label"]``.
        names: the labels to list, in the order they are listed under each mode.

    Returns:
        Mode -> labels, by ascending mode.

    Raises:
        KeyError: a name is not in ``per_label``.

    Examples:
        >>> from entk_fast.analysis.language import modes_served
        >>> per_label = {"NOUN": {"mode": 3}, "VERB": {"mode": 0}, "ADJ": {"mode": 3}}
        >>> modes_served(per_label, ["NOUN", "VERB", "ADJ"])
        {0: ['VERB'], 3: ['NOUN', 'ADJ']}
    """
    served: dict[int, list[str]] = {}
    for name in names:
        served.setdefault(int(per_label[name]["mode"]), []).append(name)
    return dict(sorted(served.items()))
