"""entk_fast.analysis against closed forms: cliffs, TMS heatmaps, Fourier rotation, alignment.

Torch-free: the analyses take numpy arrays (eigenpairs) and return numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from entk_fast.analysis import (
    alignment_curve,
    atoms_found,
    block_overlaps,
    central_difference,
    cliff_blocks,
    feature_cliffs,
    feature_heatmap,
    feature_indicators,
    fourier_family,
    frequency_heatmap,
    match_features,
    orbit_laplacian,
    smoothness_rotation,
    torus_laplacian,
)
from entk_fast.errors import InvalidArgumentError


def _random_rotation(k: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((k, k)))[0]


# --- cliffs ---------------------------------------------------------------------------------------


def test_rank_cliffs_are_kept_apart_from_feature_cliffs() -> None:
    values = np.array([10.0, 9.0, 1.0, 0.9, 0.5, 1e-17, 0.0])
    report = feature_cliffs(values, top=3)
    assert [c.index for c in report.cliffs] == [2, 4, 1]
    assert [c.index for c in report.rank_cliffs] == [5]
    assert report.rank == 5
    assert report.floor == pytest.approx(1e-8 * values.mean())
    within = feature_cliffs(values, top=3, within=3)
    assert [c.index for c in within.cliffs] == [2, 1]


def test_cliff_blocks() -> None:
    assert cliff_blocks([57, 1, 113], 841) == [(1, 1), (2, 57), (58, 113)]
    with pytest.raises(InvalidArgumentError, match="cuts"):
        cliff_blocks([900], 841)


# --- TMS ------------------------------------------------------------------------------------------


def test_feature_indicators_follow_the_row_layout() -> None:
    x = np.array([[1.0, 2.0], [3.0, 0.0]])
    z = feature_indicators(x, n_outputs=3)
    assert z.shape == (6, 2)
    expected = np.zeros((6, 2))
    expected[0 * 3 + 0, 0], expected[0 * 3 + 1, 1] = 1.0, 2.0
    expected[1 * 3 + 0, 0] = 3.0
    np.testing.assert_array_equal(z, expected)
    with pytest.raises(InvalidArgumentError, match="n_outputs"):
        feature_indicators(x, n_outputs=1)


def test_heatmap_finds_planted_features_in_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(30, 6))
    z = feature_indicators(x)
    # eigenvectors = the indicators (unit), in reverse order, plus a little noise
    vectors = z[:, ::-1] / np.linalg.norm(z, axis=0)[::-1]
    vectors = vectors + 0.01 * rng.standard_normal(vectors.shape)
    heat = feature_heatmap(vectors, x)
    assert heat.shape == (6, 6)
    np.testing.assert_allclose(np.linalg.norm(heat, axis=0), 1.0)
    match = match_features(heat)
    np.testing.assert_array_equal(match.best, np.arange(6)[::-1])
    assert match.n_distinct == 6 and match.mean_column_max > 0.99
    assert not match.in_order(2)
    assert match_features(heat[:, ::-1]).in_order(6)


def test_heatmap_of_mixed_features_is_spread() -> None:
    x = np.random.default_rng(1).uniform(size=(20, 4))
    z = feature_indicators(x)
    mixed = z / np.linalg.norm(z, axis=0) @ np.full((4, 1), 0.5)  # equal mix of all four
    heat = feature_heatmap(mixed, x)
    np.testing.assert_allclose(heat[:, 0], 0.5)


# --- Fourier --------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [7, 11, 23])
def test_torus_laplacian_eigenvalues_of_fourier_atoms(p: int) -> None:
    lap = torus_laplacian(p, (0, 1))
    np.testing.assert_allclose(lap, lap.T)
    np.testing.assert_allclose(lap.sum(axis=1), 0.0, atol=1e-12)
    family = fourier_family(p, "b")
    for k in range(1, (p - 1) // 2 + 1):
        atom = family[:, 2 * (k - 1)]
        np.testing.assert_allclose(
            lap @ atom, (2 - 2 * np.cos(2 * np.pi * k / p)) * atom, atol=1e-10
        )
    np.testing.assert_allclose(lap @ fourier_family(p, "a"), 0.0, atol=1e-10)  # constant along b


def test_orbit_laplacian_is_the_projector_off_invariant_functions() -> None:
    p = 7
    lap = orbit_laplacian(p, (1, 1))
    np.testing.assert_allclose(lap @ lap, lap, atol=1e-12)
    np.testing.assert_allclose(lap @ fourier_family(p, "a-b"), 0.0, atol=1e-12)
    np.testing.assert_allclose(lap @ fourier_family(p, "a+b"), fourier_family(p, "a+b"), atol=1e-12)


def test_frequency_heatmap_is_phase_insensitive() -> None:
    p = 11
    family = fourier_family(p, "a+b")
    k = 3
    atoms = np.stack(
        [np.cos(t) * family[:, 2 * (k - 1)] + np.sin(t) * family[:, 2 * k - 1] for t in (0.3, 2.0)],
        axis=1,
    )
    heat = frequency_heatmap(5.0 * atoms, p, "a+b")
    np.testing.assert_allclose(heat[k - 1], 1.0)
    np.testing.assert_allclose(np.delete(heat, k - 1, axis=0), 0.0, atol=1e-12)
    assert frequency_heatmap(atoms, p, "a").max() < 1e-12


@pytest.mark.parametrize("p", [7, 13])
@pytest.mark.parametrize("families", [("a", "b"), ("a+b", "a-b")])
def test_rotation_recovers_atoms_from_a_mixed_block(p: int, families: tuple[str, str]) -> None:
    basis = np.concatenate([fourier_family(p, f) for f in families], axis=1)
    rng = np.random.default_rng(p)
    block = basis @ _random_rotation(basis.shape[1], p)
    block += (0.1 / p) * rng.standard_normal(block.shape)  # not exactly the two families
    before = [frequency_heatmap(block, p, f).max(axis=1).min() for f in families]
    rotated = smoothness_rotation(block, p, families)
    half = p - 1
    invariant, other = families[1], families[0]
    inv_heat = frequency_heatmap(rotated[:, :half], p, invariant)
    other_heat = frequency_heatmap(rotated[:, half:], p, other)
    assert atoms_found(inv_heat, 0.95).all() and atoms_found(other_heat, 0.95).all()
    assert max(before) < 0.9  # the raw block mixes frequencies
    # the invariant half is sorted by its Laplacian eigenvalue 2 − 2cos(2π·s·k/p), in cos/sin
    # pairs: s = 1 along b; s = 2 along (+1, −1), where a − b moves by 2
    stride = 1 if families == ("a", "b") else 2
    freqs = np.arange(1, half // 2 + 1)
    order = np.argsort(2 - 2 * np.cos(2 * np.pi * stride * freqs / p), kind="stable")
    assert list(inv_heat.argmax(axis=0)) == [k for k in order for _ in range(2)]
    overlaps = block_overlaps(rotated, p, [(1, half), (half + 1, 2 * half)])
    assert overlaps[f"1-{half}"][invariant] > 0.97 * half
    assert overlaps[f"{half + 1}-{2 * half}"][other] > 0.97 * half


def test_rotation_rejects_unknown_families() -> None:
    with pytest.raises(InvalidArgumentError, match="families"):
        smoothness_rotation(np.zeros((49, 4)), 7, ("a", "a+b"))


# --- alignment ------------------------------------------------------------------------------------


def test_central_difference_is_exact_on_quadratics_with_uneven_steps() -> None:
    steps = np.array([0.0, 1.0, 3.0, 4.0, 7.0])
    values = 2 * steps**2 - steps
    np.testing.assert_allclose(central_difference(steps, values), 4 * steps - 1, atol=1e-9)
    with pytest.raises(InvalidArgumentError, match="increasing"):
        central_difference([0, 2, 1], [0, 1, 2])


def test_onset_is_the_steepest_rise() -> None:
    steps = np.arange(0, 500, 10)
    overlaps = 28 / (1 + np.exp(-(steps - 130) / 15))
    curve = alignment_curve(steps, overlaps, 28)
    assert curve.onset == 130
    assert curve.overlap_percent[-1] == pytest.approx(100.0, abs=0.01)
    assert curve.as_dict()["onset"] == 130
