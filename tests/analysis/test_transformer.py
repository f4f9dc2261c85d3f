"""Key frequencies of an embedding and overlaps with the key-frequency Fourier families
(arXiv 2510.00468 v3), on planted embeddings and hand-built subspaces with closed-form answers."""

from __future__ import annotations

import numpy as np
import pytest

from entk_fast.analysis.fourier import family_values
from entk_fast.analysis.transformer import (
    fourier_norms,
    kernel_key_overlaps,
    key_family,
    key_frequencies,
    key_overlaps,
)
from entk_fast.errors import InvalidArgumentError

P = 13


def _wave(p: int, k: int, phase: float = 0.0) -> np.ndarray:
    return np.cos(2 * np.pi * k * np.arange(p) / p + phase)


def _planted(p: int, amplitudes: dict[int, float], d: int = 8, noise: float = 0.0) -> np.ndarray:
    """(p + 1, d): frequency k along orthonormal direction j with the given amplitude, a
    constant offset, optional noise, and an extra "=" row that must be ignored."""
    rng = np.random.default_rng(0)
    directions = np.linalg.qr(rng.standard_normal((d, d)))[0]
    w = np.full((p, d), 0.3)
    for j, (k, amp) in enumerate(amplitudes.items()):
        w += amp * np.outer(_wave(p, k, phase=0.4 * j), directions[:, j])
    w += noise * rng.standard_normal((p, d))
    return np.vstack([w, 100 * np.ones(d)])


def test_fourier_norms_closed_form() -> None:
    # a·cos(2πk·t/p + φ) has norm a·√(p/2) at frequency k, whatever the phase; the constant
    # and the "=" row contribute nothing
    norms = fourier_norms(_planted(P, {2: 1.0, 5: 0.5}), P)
    expected = np.zeros(6)
    expected[[1, 4]] = [np.sqrt(P / 2), 0.5 * np.sqrt(P / 2)]
    np.testing.assert_allclose(norms, expected, atol=1e-12)


def test_fourier_norms_are_parseval() -> None:
    w = np.random.default_rng(1).standard_normal((P, 5))
    centred = w - w.mean(axis=0)
    assert np.sum(fourier_norms(w, P) ** 2) == pytest.approx(np.sum(centred**2), rel=1e-12)


def test_key_frequencies_cut_at_the_largest_cliff() -> None:
    # unequal key norms (1, 0.6, 0.25): half the largest norm would miss frequency 6
    found = key_frequencies(_planted(P, {1: 1.0, 3: 0.6, 6: 0.25}, noise=0.002), P)
    assert found.frequencies == (1, 3, 6)
    assert found.cliff > 10
    assert found.fraction > 0.999
    assert found.as_dict()["frequencies"] == [1, 3, 6]


def test_key_frequencies_single_and_capped() -> None:
    one = key_frequencies(_planted(P, {4: 1.0}, noise=0.01), P)
    assert one.frequencies == (4,) and one.cliff > 20
    # with at most one key frequency the cut is after the largest norm
    assert key_frequencies(_planted(P, {1: 1.0, 3: 0.9}), P, max_keys=1).frequencies == (1,)
    assert key_frequencies(np.ones((3, 2)), 3).frequencies == (1,)  # p = 3: one frequency
    with pytest.raises(InvalidArgumentError, match="max_keys"):
        key_frequencies(_planted(P, {1: 1.0}), P, max_keys=7)
    with pytest.raises(InvalidArgumentError, match="embedding"):
        key_frequencies(np.ones((P - 1, 4)), P)


def test_key_family_is_the_cos_sin_columns_at_the_key_frequencies() -> None:
    basis = key_family(P, "a+b", [5, 2])
    assert basis.shape == (P * P, 4)
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    v = family_values(P, "a+b")
    cos2 = np.cos(2 * np.pi * 2 * v / P)
    np.testing.assert_allclose(basis[:, 0], cos2 / np.linalg.norm(cos2), atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="frequencies"):
        key_family(P, "a", [0])
    with pytest.raises(InvalidArgumentError, match="frequencies"):
        key_family(P, "a", [2, 2])


def test_overlaps_with_a_hand_built_fourier_subspace() -> None:
    a, b, s = (family_values(P, f) for f in ("a", "b", "a+b"))
    keys = (2, 5)
    columns = [np.ones(P * P)]
    for k in keys:
        columns += [np.cos(2 * np.pi * k * s / P), np.sin(2 * np.pi * k * s / P)]
    exact = key_overlaps(np.stack(columns, axis=1), P, keys)
    assert exact == pytest.approx({"a+b": 4.0, "a": 0.0, "b": 0.0}, abs=1e-10)
    # one vector, half a+b and half a at frequency 2: cos² = 1/2 with each family
    mixed = np.cos(2 * np.pi * 2 * s / P) + np.cos(2 * np.pi * 2 * a / P)
    half = key_overlaps(mixed[:, None], P, keys)
    assert half == pytest.approx({"a+b": 0.5, "a": 0.5, "b": 0.0}, abs=1e-10)
    # the same modes at a frequency that is not key overlap nothing
    other = np.stack([np.cos(2 * np.pi * 3 * b / P), np.sin(2 * np.pi * 3 * s / P)], axis=1)
    assert key_overlaps(other, P, keys) == pytest.approx({"a+b": 0, "a": 0, "b": 0}, abs=1e-10)


def test_kernel_overlaps_use_the_top_two_k_plus_one_eigenvectors() -> None:
    s = family_values(P, "a+b")
    a = family_values(P, "a")
    top = [np.ones(P * P), np.cos(2 * np.pi * 4 * s / P), np.sin(2 * np.pi * 4 * s / P)]
    below = [np.cos(2 * np.pi * 1 * a / P)]
    u = np.linalg.qr(np.stack(top + below, axis=1))[0]
    kernel = u @ np.diag([9.0, 5.0, 4.0, 3.0]) @ u.T
    result = kernel_key_overlaps({"unembed": kernel}, P, [4])["unembed"]
    assert result["overlaps"] == pytest.approx({"a+b": 2.0, "a": 0.0, "b": 0.0}, abs=1e-10)
    np.testing.assert_allclose(result["top_eigenvalues"], [9, 5, 4, 3], atol=1e-10)
    wider = kernel_key_overlaps({"k": kernel}, P, [4], n_vectors=4)["k"]["overlaps"]
    assert wider["a"] == pytest.approx(0.0, abs=1e-10)  # a at frequency 1 is not key
    assert kernel_key_overlaps({"k": kernel}, P, [1, 4], n_vectors=4)["k"]["overlaps"][
        "a"
    ] == pytest.approx(1.0, abs=1e-10)
