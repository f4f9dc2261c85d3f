"""The language experiment's scoring against independent references: AUROC and AP against
scikit-learn, eigenvector scores against an explicit SVD, PCA against scikit-learn's, the
best-mode choice on planted data, and the stratified split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entk_fast.analysis.language import (
    auroc,
    average_precision,
    best_mode,
    eigenvector_scores,
    evaluate_labels,
    modes_served,
    pca_scores,
    precision_at_quota,
    random_scores,
    stratified_split,
)
from entk_fast.errors import InvalidArgumentError

metrics = pytest.importorskip("sklearn.metrics")


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=2, max_value=60),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.booleans(),
)
def test_auroc_and_ap_equal_scikit_learn(n: int, seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n).astype(float) if ties else rng.standard_normal(n)
    positive = rng.random(n) < 0.4
    positive[0], positive[1] = True, False  # both classes present
    assert auroc(scores, positive) == pytest.approx(
        metrics.roc_auc_score(positive, scores), abs=1e-12
    )
    assert average_precision(scores, positive) == pytest.approx(
        metrics.average_precision_score(positive, scores), abs=1e-12
    )


def test_precision_at_quota_counts_the_top_q() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05])
    positive = np.array([True, False, True, True, False])  # q = 3: top 3 hold 2 positives
    assert precision_at_quota(scores, positive) == pytest.approx(2 / 3)


def test_one_class_labels_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="both positives and negatives"):
        auroc(np.arange(4.0), np.ones(4, dtype=bool))


def test_eigenvector_scores_are_the_top_singular_pair() -> None:
    rng = np.random.default_rng(0)
    n, d, k = 7, 5, 3
    vectors = rng.standard_normal((n * d, k))
    scores = eigenvector_scores(vectors, n, d)
    for j in range(k):
        m = vectors[:, j].reshape(n, d)
        u, s, vt = np.linalg.svd(m)
        # u σ is defined up to the sign of the pair; the rank-1 part u σ vᵀ is not
        np.testing.assert_allclose(np.abs(scores[:, j]), np.abs(u[:, 0] * s[0]), rtol=1e-12)
        best = np.outer(scores[:, j], vt[0] * np.sign(scores[0, j] * u[0, 0]))
        np.testing.assert_allclose(best, s[0] * np.outer(u[:, 0], vt[0]), atol=1e-12)
    with pytest.raises(InvalidArgumentError, match=r"\(N·d, k\) = \(35, k\)"):
        eigenvector_scores(vectors[:-1], n, d)


def test_pca_scores_equal_scikit_learn() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 3.0
    ours = pca_scores(x, 4)
    theirs = decomposition.PCA(4, svd_solver="full").fit_transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), rtol=1e-8, atol=1e-10)


def test_random_scores_are_projections_on_unit_directions() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5))
    scores = random_scores(x, 3, seed=4)
    assert scores.shape == (30, 3)
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-12)  # centred
    # a unit direction never scores beyond the largest row norm
    assert np.abs(scores).max() <= np.linalg.norm(x - x.mean(0), axis=1).max() + 1e-12


def test_stratified_split_takes_half_of_every_label() -> None:
    labels = np.repeat(np.arange(4), [10, 11, 6, 7])
    train = stratified_split(labels, seed=3)
    assert [int(train[labels == c].sum()) for c in range(4)] == [5, 5, 3, 3]
    assert not np.array_equal(train, stratified_split(labels, seed=4))


def test_best_mode_finds_the_planted_mode_and_sign() -> None:
    rng = np.random.default_rng(5)
    n = 200
    positive = rng.random(n) < 0.3
    scores = rng.standard_normal((n, 6))
    scores[:, 4] -= 3.0 * positive  # mode 4, negative sign
    train = stratified_split(positive.astype(int), seed=0)
    result = best_mode(scores, positive, train)
    assert (result["mode"], result["sign"]) == (4, -1)
    assert result["auroc"] > 0.95
    report = evaluate_labels(scores, {"x": positive, "y": ~positive}, train)
    assert set(report["per_label"]) == {"x", "y"}
    assert report["macro"]["auroc"] == pytest.approx(
        np.mean([r["auroc"] for r in report["per_label"].values()])
    )
    assert modes_served(report["per_label"], ["x", "y"]) == {4: ["x", "y"]}
