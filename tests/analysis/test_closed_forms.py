"""analysis/: cliffs, alignment, the TMS heatmap and the Fourier rotation against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entk_fast.analysis.alignment import (
    alignment_curve,
    central_difference,
    principal_angles_degrees,
)
from entk_fast.analysis.cliffs import RIDGE_EPSILON, cliff_blocks, feature_cliffs
from entk_fast.analysis.fourier import fourier_family, smoothness_rotation
from entk_fast.analysis.tms import feature_heatmap, feature_indicators, match_features
from entk_fast.errors import InvalidArgumentError


def test_analysis_feature_cliffs_closed_form() -> None:
    values = [16.0, 8.0, 8.0, 2.0, 1.0, 1e-12, 1e-13]  # mean 5: floor 5e-8
    report = feature_cliffs(values, top=2)
    assert math.isclose(report.floor, RIDGE_EPSILON * 5.0, rel_tol=1e-12)
    assert [c.index for c in report.cliffs] == [3, 1]  # ratios 4, then 2 (first of a tie)
    assert [c.ratio for c in report.cliffs] == [4.0, 2.0]
    assert [c.index for c in report.rank_cliffs] == [5] and report.rank == 5
    within = feature_cliffs(values, top=5, within=3)
    assert [c.index for c in within.cliffs] == [1, 2] and not within.rank_cliffs
    low = feature_cliffs(values, top=1, mean_diagonal=1e-5)  # floor 1e-13: 1e-12 is a feature
    assert [c.index for c in low.cliffs] == [5] and low.rank == 6
    assert [c.index for c in low.rank_cliffs] == [6]
    assert len(feature_cliffs(2.0 ** -np.arange(9)).cliffs) == 5  # the default top
    assert [c.index for c in feature_cliffs(values, within=2).cliffs] == [1]  # smallest within
    assert cliff_blocks((113, 1, 57, 57), 120) == [(1, 1), (2, 57), (58, 113)]
    assert cliff_blocks([5], 5) == [(1, 5)] and cliff_blocks([], 3) == []
    with pytest.raises(InvalidArgumentError):
        cliff_blocks([6], 5)


def test_analysis_alignment_closed_form() -> None:
    np.testing.assert_allclose(central_difference([0.0, 2.0], [1.0, 5.0]), [2.0, 2.0])
    for steps, values in (
        ([[0.0, 1.0]], [[0.0, 1.0]]),
        ([0.0, 1.0], [0.0, 1.0, 2.0]),
        ([0.0], [1.0]),
    ):
        with pytest.raises(InvalidArgumentError, match="same length"):
            central_difference(steps, values)
    for steps in ([0.0, 1.0, 1.0], [0.0, 2.0, 1.0]):
        with pytest.raises(InvalidArgumentError, match="increasing"):
            central_difference(steps, [0.0, 1.0, 2.0])
    curve = alignment_curve([0, 10, 20], [0.0, 1.0, 4.0], dimension=4)
    np.testing.assert_allclose(curve.overlap_percent, [0.0, 25.0, 100.0])
    # Second-order one-sided ends: (−3·0 + 4·25 − 100)/20 = 0 and (0 − 4·25 + 3·100)/20 = 10.
    np.testing.assert_allclose(curve.derivative, [0.0, 5.0, 10.0], atol=1e-12)
    assert curve.onset == 20 and curve.steps.dtype == np.int64
    assert alignment_curve([0, 1], [0.5, 1.0], dimension=1).overlap_percent.tolist() == [50, 100]
    with pytest.raises(InvalidArgumentError):
        alignment_curve([0, 1], [0.5, 1.0], dimension=0)
    t = 0.3
    a = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(principal_angles_degrees(a, b), [0.0, 90.0], atol=1e-12)
    rot = np.array([[math.cos(t)], [math.sin(t)], [0.0]])
    np.testing.assert_allclose(principal_angles_degrees(a[:, :1], rot), [math.degrees(t)])


def test_analysis_tms_heatmap_closed_form() -> None:
    z = feature_indicators([[1.0, 2.0], [3.0, 4.0]], n_outputs=3)
    want = np.zeros((6, 2))
    want[0, 0], want[1, 1], want[3, 0], want[4, 1] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(z, want)
    assert feature_indicators([[1.0, 2.0]]).shape == (2, 2)  # C = n is allowed
    with pytest.raises(InvalidArgumentError):
        feature_indicators([[1.0, 2.0]], n_outputs=1)
    x = np.array([[3.0, 4.0], [4.0, 3.0]])  # both indicators have norm 5
    zx = feature_indicators(x)
    v = np.stack([zx[:, 1] / 5.0, 7.0 * (zx[:, 0] + zx[:, 1])], axis=1)
    heat = feature_heatmap(v, x)
    np.testing.assert_allclose(heat, [[0.0, 0.5**0.5], [1.0, 0.5**0.5]], atol=1e-15)
    match = match_features(heat)
    assert match.best.tolist() == [1, 0] and match.n_distinct == 2
    np.testing.assert_allclose(match.strength, [1.0, 0.5**0.5])
    assert math.isclose(match.mean_column_max, (1.0 + 0.5**0.5) / 2)
    assert not match.in_order(1)
    skew = match_features([[0.9, 0.1, 0.8], [0.1, 0.9, 0.2]])  # (features, eigenvectors)
    assert skew.best.tolist() == [0, 1, 0] and skew.strength.tolist() == [0.9, 0.9, 0.8]
    assert match_features([[0.5]]).best.tolist() == [0]
    for bad in (np.ones(3), np.zeros((0, 2))):
        with pytest.raises(InvalidArgumentError, match="heatmap"):
            match_features(bad)
    # One sample (N = 1) with C = 3 outputs: each eigenvector e_c is feature c's indicator.
    np.testing.assert_allclose(feature_heatmap(np.eye(3), [[1.0, 2.0, 3.0]]), np.eye(3))
    assert match_features(np.eye(3)).in_order(3) and not match_features(np.eye(3)[::-1]).in_order(2)


def test_analysis_fourier_rotation_of_a_two_column_block() -> None:
    p = 5
    fa, fb = fourier_family(p, "a")[:, 0], fourier_family(p, "b")[:, 0]
    block = np.stack([fa + fb, fa - fb], axis=1) / 2**0.5
    rotated = smoothness_rotation(block, p, ("a", "b"))
    # First the family invariant along a (functions of b), then the other one.
    assert abs(rotated[:, 0] @ fb) > 1 - 1e-12 and abs(rotated[:, 1] @ fa) > 1 - 1e-12
    with pytest.raises(InvalidArgumentError, match="block"):
        smoothness_rotation(block[:, :1], p, ("a", "b"))
