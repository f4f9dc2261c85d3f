"""entk_fast.linalg against numpy/scipy references. Torch-free on purpose."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import entk_fast as ef
from entk_fast import linalg

RTOL = {np.float64: 1e-12, np.float32: 2e-5}
EIG_RTOL = {np.float64: 1e-10, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / scale)


def random_matrix(rng: np.random.Generator, shape: tuple[int, int], dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def spd_with_spectrum(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((len(values), len(values))))
    k = (q * values) @ q.T
    return (k + k.T) / 2


def projector(v: np.ndarray) -> np.ndarray:
    return v @ v.T


def clusters(values: np.ndarray, tol: float) -> list[slice]:
    """Index ranges of (descending) eigenvalues closer than tol to a neighbour."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i - 1] - values[i] > tol:
            out.append(slice(start, i))
            start = i
    return out


# ---------------------------------------------------------------- gram family
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (37, 11), (11, 37), (300, 50), (64, 1000), (2000, 24)]
)
def test_gram_matches_numpy(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    j = random_matrix(rng, shape, dtype)
    k = linalg.gram(j)
    assert k.dtype == dtype and k.shape == (shape[0], shape[0])
    assert np.array_equal(k, k.T), "gram must be exactly symmetric"
    ref = j.astype(np.float64) @ j.astype(np.float64).T
    assert rel_err(k, ref) < RTOL[dtype]


def test_gram_accepts_strided_views_without_changing_result():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((80, 60))
    for view in (base[::2, ::3], base.T, np.asfortranarray(base)):
        assert rel_err(linalg.gram(view), view @ view.T) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_accumulate_over_column_chunks_equals_full_gram(dtype):
    rng = np.random.default_rng(2)
    j = random_matrix(rng, (150, 97), dtype)
    k = np.zeros((150, 150), dtype)
    for start in range(0, 97, 20):
        linalg.gram_accumulate(k, j[:, start : start + 20])
    ref = j.astype(np.float64) @ j.astype(np.float64).T
    assert rel_err(k, ref) < RTOL[dtype]
    assert np.array_equal(k, k.T)


def test_gram_accumulate_alpha_and_existing_content():
    rng = np.random.default_rng(3)
    j = rng.standard_normal((40, 9))
    k0 = spd_with_spectrum(rng, np.linspace(1, 2, 40))
    k = k0.copy()
    linalg.gram_accumulate(k, j, alpha=-0.25)
    assert rel_err(k, k0 - 0.25 * j @ j.T) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [(1, 1), (13, 29), (200, 3)])
def test_gram_cross_matches_numpy(rows, dtype):
    rng = np.random.default_rng(rows[0] * 31 + rows[1])
    a = random_matrix(rng, (rows[0], 17), dtype)
    b = random_matrix(rng, (rows[1], 17), dtype)
    out = linalg.gram_cross(a, b)
    assert out.shape == rows and out.dtype == dtype
    assert rel_err(out, a.astype(np.float64) @ b.astype(np.float64).T) < RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,block,q", [(1, 1, 1), (5, 3, 4), (70, 4, 9), (300, 1, 20)])
def test_hadamard_gram_accumulate_matches_kron_formula(n, block, q, dtype):
    rng = np.random.default_rng(n + block + q)
    g = random_matrix(rng, (n * block, q), dtype)
    a = rng.standard_normal((n, 6))
    s = (a @ a.T).astype(dtype)
    k = np.zeros((n * block, n * block), dtype)
    linalg.hadamard_gram_accumulate(k, g, s, block=block, alpha=0.5)
    g64 = g.astype(np.float64)
    ref = 0.5 * np.kron(s.astype(np.float64), np.ones((block, block))) * (g64 @ g64.T)
    assert rel_err(k, ref) < RTOL[dtype] * 10
    assert np.array_equal(k, k.T)


# ---------------------------------------------------------------- eigh
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 10, 150, 600])
def test_eigh_matches_numpy(n, dtype):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, n))
    k = ((x + x.T) / 2).astype(dtype)
    values, vectors = linalg.eigh(k)
    assert values.dtype == dtype and vectors.shape == (n, n)
    ref = np.linalg.eigvalsh(k.astype(np.float64))[::-1]
    assert np.all(np.diff(values) <= 0), "eigenvalues must be descending"
    assert rel_err(values, ref) < EIG_RTOL[dtype]
    v = vectors.astype(np.float64)
    assert rel_err(v.T @ v, np.eye(n)) < EIG_RTOL[dtype] * 10
    assert (
        rel_err((v * values.astype(np.float64)) @ v.T, k.astype(np.float64)) < EIG_RTOL[dtype] * 10
    )


def test_eigh_float32_is_as_accurate_as_lapack():
    # A Wishart (eNTK-like, PSD) matrix in float32: eigenvalues against float64 LAPACK on the
    # same entries. LAPACK's ssyevd is off by ~5e-8 of the largest; faer's float32 solver was
    # off by 6e-5 (residuals 2e-3), so float32 runs in float64 inside the core.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((841, 1600))
    k = (x @ x.T).astype(np.float32)
    exact = np.linalg.eigvalsh(k.astype(np.float64))[::-1]
    values, vectors = linalg.eigh(k)
    assert values.dtype == np.float32
    assert np.abs(values - exact).max() < 1e-6 * exact[0]
    v = vectors.astype(np.float64)
    residual = np.linalg.norm(k.astype(np.float64) @ v - v * values, axis=0).max()
    assert residual < 1e-5 * exact[0]


def test_eigh_large_matches_numpy_projectors():
    rng = np.random.default_rng(7)
    n = 2000
    j = rng.standard_normal((n, 300))
    k = j @ j.T  # rank 300: a 1700-dimensional null space
    values, vectors = linalg.eigh(k)
    ref_values, ref_vectors = np.linalg.eigh(k)
    ref_values, ref_vectors = ref_values[::-1], ref_vectors[:, ::-1]
    assert rel_err(values, ref_values) < 1e-10
    top = slice(0, 300)  # separated from the null space by a gap of ~ 1e2
    assert rel_err(projector(vectors[:, top]), projector(ref_vectors[:, top])) < 1e-8


def test_eigh_degenerate_eigenspaces_compared_by_projector():
    rng = np.random.default_rng(8)
    spectrum = np.repeat([9.0, 5.0, 5.0 - 1e-3, 1.0], [2, 3, 1, 4])
    k = spd_with_spectrum(rng, spectrum)
    values, vectors = linalg.eigh(k)
    ref_values, ref_vectors = np.linalg.eigh(k)
    ref_values, ref_vectors = ref_values[::-1], ref_vectors[:, ::-1]
    assert rel_err(values, spectrum) < 1e-12
    for block in clusters(ref_values, 1e-6):
        assert rel_err(projector(vectors[:, block]), projector(ref_vectors[:, block])) < 1e-9


# ---------------------------------------------------------------- top-k
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(5, 1), (5, 5), (60, 7), (600, 10), (900, 32)])
def test_eigh_topk_equals_top_of_full_solve(n, k, dtype):
    rng = np.random.default_rng(n + k)
    j = rng.standard_normal((n, n // 2 + 3)) * np.geomspace(1, 1e-2, n // 2 + 3)
    kern = (j @ j.T).astype(dtype)
    values, vectors, info = linalg.eigh_topk(kern, k, return_info=True)
    assert values.shape == (k,) and vectors.shape == (n, k) and values.dtype == dtype
    if n >= 600:
        assert info["method"] == "krylov", info
        assert info["cycles"] >= 1 and info["n_matvec"] >= info["block"]
    else:
        assert info["method"] == "dense" and info["n_matvec"] == 0
    # The documented bound, checked independently: ‖K v − λ v‖ / |λ_1| ≤ tol per pair.
    k64, v64 = kern.astype(np.float64), vectors.astype(np.float64)
    residual = np.linalg.norm(k64 @ v64 - v64 * values.astype(np.float64), axis=0)
    bound = residual / abs(float(values[0]))
    tol = 1e-11 if dtype == np.float64 else 1e-4
    assert info["tol"] == tol
    assert np.max(bound) <= tol * 1.01 + 10 * np.finfo(dtype).eps
    assert info["max_residual"] == pytest.approx(
        np.max(bound), rel=0.1, abs=float(np.finfo(dtype).eps) * 10
    )
    full_values, full_vectors = linalg.eigh(kern)
    assert rel_err(values, full_values[:k]) < EIG_RTOL[dtype]
    for block in clusters(full_values[: k + 1], 1e-6 * full_values[0]):
        if block.stop <= k:
            got = projector(vectors[:, block].astype(np.float64))
            want = projector(full_vectors[:, block].astype(np.float64))
            assert rel_err(got, want) < (1e-7 if dtype == np.float64 else 5e-2)


def test_eigh_topk_resolves_degenerate_pairs_like_fourier_modes():
    # cos/sin pairs give exactly doubled eigenvalues; single-vector Lanczos misses partners.
    rng = np.random.default_rng(11)
    n = 1000
    top = np.repeat(np.linspace(10, 6, 14), 2)
    spectrum = np.concatenate([top, rng.uniform(0, 1, n - len(top))])
    kern = spd_with_spectrum(rng, spectrum)
    values, vectors, info = linalg.eigh_topk(kern, 28, return_info=True)
    assert info["method"] == "krylov" and info["converged"]
    assert rel_err(values, top) < 1e-10
    full = np.linalg.eigh(kern)[1][:, ::-1][:, :28]
    assert linalg.subspace_overlap(vectors, full) == pytest.approx(28, abs=1e-8)


def test_eigh_topk_on_indefinite_matrix_returns_algebraic_top():
    rng = np.random.default_rng(12)
    n = 500
    spectrum = np.concatenate([[-50.0, -40.0], np.linspace(5, 1, 10), rng.uniform(-1, 0.5, n - 12)])
    kern = spd_with_spectrum(rng, spectrum)
    values, _ = linalg.eigh_topk(kern, 5)
    assert rel_err(values, np.sort(spectrum)[::-1][:5]) < 1e-10


@pytest.mark.parametrize("n", [400, 1000])
def test_eigh_topk_zero_and_low_rank_matrices(n):
    rng = np.random.default_rng(n)
    values, vectors = linalg.eigh_topk(np.zeros((n, n)), 4)
    assert np.all(values == 0) and rel_err(vectors.T @ vectors, np.eye(4)) < 1e-10
    j = rng.standard_normal((n, 3))  # rank 3 < k = 6
    values, vectors = linalg.eigh_topk(j @ j.T, 6)
    ref = np.linalg.eigvalsh(j @ j.T)[::-1][:6]
    assert np.allclose(values, ref, rtol=0, atol=1e-9 * ref[0])
    assert rel_err(vectors.T @ vectors, np.eye(6)) < 1e-9


# ---------------------------------------------------------------- angles
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,m", [(5, 1, 1), (10, 3, 5), (10, 5, 3), (200, 20, 20), (50, 50, 10)])
def test_principal_angles_match_scipy(n, d, m, dtype):
    rng = np.random.default_rng(n * d + m)
    a = random_matrix(rng, (n, d), dtype)
    b = random_matrix(rng, (n, m), dtype)
    got = linalg.principal_angles(a, b)
    want = np.sort(scipy.linalg.subspace_angles(a.astype(np.float64), b.astype(np.float64)))
    assert got.dtype == np.float64 and got.shape == want.shape
    assert np.max(np.abs(got - want)) < (1e-12 if dtype == np.float64 else 5e-4)
    overlap = linalg.subspace_overlap(a, b)
    assert overlap == pytest.approx(
        np.sum(np.cos(want) ** 2), abs=1e-10 if dtype == np.float64 else 1e-4
    )


def test_principal_angles_small_angles_are_accurate():
    rng = np.random.default_rng(21)
    a = np.linalg.qr(rng.standard_normal((100, 4)))[0]
    b = a + 1e-9 * rng.standard_normal((100, 4))
    got = linalg.principal_angles(a, b)
    want = np.sort(scipy.linalg.subspace_angles(a, b))
    assert np.max(np.abs(got - want)) < 1e-15 + 1e-6 * np.max(want)
    assert np.all(got > 0)  # arccos alone would round these to exactly 0


def test_principal_angles_closed_form_in_a_plane():
    theta = 0.3
    a = np.array([[1.0], [0.0], [0.0]])
    b = np.array([[np.cos(theta)], [np.sin(theta)], [0.0]])
    assert linalg.principal_angles(a, b) == pytest.approx([theta], abs=1e-15)
    assert linalg.subspace_overlap(a, b) == pytest.approx(np.cos(theta) ** 2, abs=1e-15)
    # 1-D vectors are taken as single columns
    assert linalg.principal_angles(a[:, 0], b[:, 0]) == pytest.approx([theta], abs=1e-15)


def test_principal_angles_rank_deficient_input_uses_column_space():
    rng = np.random.default_rng(22)
    base = rng.standard_normal((30, 2))
    a = np.hstack([base, base @ [[1.0], [2.0]]])  # rank 2 in 3 columns
    b = rng.standard_normal((30, 4))
    got = linalg.principal_angles(a, b)
    want = np.sort(scipy.linalg.subspace_angles(a, b))
    assert got.shape == (2,) and np.max(np.abs(got - want)) < 1e-12


# ---------------------------------------------------------------- properties
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)


@given(
    hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=finite_floats
    )
)
def test_property_gram_is_symmetric_psd_and_matches_numpy(j):
    k = linalg.gram(j)
    ref = j @ j.T
    assert np.array_equal(k, k.T)
    assert np.max(np.abs(k - ref)) <= 1e-12 * max(np.max(np.abs(ref)), 1e-300) + 1e-300
    if np.max(np.abs(k)) > 0:
        assert np.linalg.eigvalsh(k).min() >= -1e-9 * np.max(np.abs(k))


@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_property_accumulate_is_split_invariant(rows, cols, pieces, seed):
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((rows, cols))
    cuts = np.sort(rng.integers(0, cols + 1, size=pieces))
    k = np.zeros((rows, rows))
    for part in np.split(j, cuts, axis=1):
        if part.shape[1]:
            linalg.gram_accumulate(k, part)
    assert rel_err(k, linalg.gram(j)) < 1e-12


@given(st.integers(2, 25), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_property_angles_bounded_symmetric_and_basis_invariant(n, d, m, seed):
    rng = np.random.default_rng(seed)
    d, m = min(d, n), min(m, n)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, m))
    angles = linalg.principal_angles(a, b)
    assert np.all(angles >= 0) and np.all(angles <= np.pi / 2 + 1e-12)
    assert np.all(np.diff(angles) >= -1e-12)
    assert np.allclose(angles, linalg.principal_angles(b, a), atol=1e-9)
    mix = rng.standard_normal((d, d)) + 3 * np.eye(d)  # invertible change of basis
    assert np.allclose(angles, linalg.principal_angles(a @ mix, b), atol=1e-7)
    overlap = linalg.subspace_overlap(a, b)
    assert -1e-12 <= overlap <= min(d, m) + 1e-9


@given(st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_property_eigh_reconstructs(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n))
    k = x + x.T
    values, vectors = linalg.eigh(k)
    assert np.all(np.diff(values) <= 0)
    assert rel_err((vectors * values) @ vectors.T, k) < 1e-12


# ---------------------------------------------------------------- bad input
BAD_CALLS = [
    (
        lambda: linalg.gram(np.ones(3)),
        ef.InvalidArgumentError,
        r"J: expected a 2-D array, got shape \(3,\)",
    ),
    (lambda: linalg.gram(np.ones((2, 2, 2))), ef.InvalidArgumentError, "J: expected a 2-D array"),
    (
        lambda: linalg.gram(np.ones((3, 4), dtype=np.int64)),
        ef.InvalidTypeError,
        "J: expected dtype float32 or float64, got int64",
    ),
    (
        lambda: linalg.gram(np.ones((3, 4), dtype=bool)),
        ef.InvalidTypeError,
        "J: expected dtype float32",
    ),
    (
        lambda: linalg.gram(np.ones((0, 4))),
        ef.InvalidArgumentError,
        "J: expected a non-empty array",
    ),
    (
        lambda: linalg.gram(np.ones((4, 0))),
        ef.InvalidArgumentError,
        "J: expected a non-empty array",
    ),
    (
        lambda: linalg.gram(np.array([[1.0, np.nan]])),
        ef.InvalidArgumentError,
        r"J: expected only finite values, found NaN or inf at index \(0, 1\)",
    ),
    (lambda: linalg.gram(np.array([[np.inf]])), ef.InvalidArgumentError, "J: expected only finite"),
    (lambda: linalg.gram("abc"), ef.InvalidTypeError, "J: expected dtype float32 or float64"),
    (
        lambda: linalg.gram(object()),
        ef.InvalidTypeError,
        "J: expected a numpy array or a torch tensor",
    ),
    (
        lambda: linalg.gram_cross(np.ones((3, 4)), np.ones((3, 5))),
        ef.InvalidArgumentError,
        "B: expected 4 columns",
    ),
    (
        lambda: linalg.gram_cross(np.ones((3, 4)), np.ones((3, 4), np.float32)),
        ef.InvalidTypeError,
        "expected one dtype",
    ),
    (
        lambda: linalg.gram_accumulate(np.zeros((3, 3)), np.ones((4, 2))),
        ef.InvalidArgumentError,
        "K: expected 4 rows",
    ),
    (
        lambda: linalg.gram_accumulate(np.zeros((3, 4)), np.ones((3, 2))),
        ef.InvalidArgumentError,
        r"K: expected a square matrix",
    ),
    (
        lambda: linalg.gram_accumulate(np.array([[0.0, 1.0], [0.0, 0.0]]), np.ones((2, 2))),
        ef.InvalidArgumentError,
        "K: expected a symmetric matrix",
    ),
    (
        lambda: linalg.gram_accumulate(np.zeros((2, 2)), np.ones((2, 2)), alpha=np.nan),
        ef.InvalidArgumentError,
        "alpha: expected a finite number",
    ),
    (
        lambda: linalg.gram_accumulate(np.zeros((2, 2)), np.ones((2, 2)), alpha="x"),
        ef.InvalidTypeError,
        "alpha: expected a real number",
    ),
    (
        lambda: linalg.gram_accumulate(np.zeros((2, 2), np.float32), np.ones((2, 2))),
        ef.InvalidTypeError,
        "expected one dtype",
    ),
    (
        lambda: linalg.hadamard_gram_accumulate(
            np.zeros((6, 6)), np.ones((6, 2)), np.eye(2), block=4
        ),
        ef.InvalidArgumentError,
        "block: expected a positive divisor of the 6 rows of G",
    ),
    (
        lambda: linalg.hadamard_gram_accumulate(
            np.zeros((6, 6)), np.ones((6, 2)), np.eye(3), block=3
        ),
        ef.InvalidArgumentError,
        "S: expected 2 rows",
    ),
    (
        lambda: linalg.hadamard_gram_accumulate(
            np.zeros((6, 6)), np.ones((6, 2)), np.eye(6), block=0
        ),
        ef.InvalidArgumentError,
        r"block: expected a positive divisor of the 6 rows of G, got 0",
    ),
    (
        lambda: linalg.eigh(np.ones((3, 4))),
        ef.InvalidArgumentError,
        r"K: expected a square matrix \(n, n\), got shape \(3, 4\)",
    ),
    (
        lambda: linalg.eigh(np.array([[1.0, 2.0], [0.0, 1.0]])),
        ef.InvalidArgumentError,
        "K: expected a symmetric matrix",
    ),
    (
        lambda: linalg.eigh(np.full((2, 2), np.nan)),
        ef.InvalidArgumentError,
        "K: expected only finite values",
    ),
    (
        lambda: linalg.eigh(np.zeros((0, 0))),
        ef.InvalidArgumentError,
        "K: expected a non-empty array",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 0),
        ef.InvalidArgumentError,
        r"k: expected an integer in \[1, 4\] \(the order of K\), got 0",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), -2),
        ef.InvalidArgumentError,
        r"k: expected a non-negative integer, got -2",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 5),
        ef.InvalidArgumentError,
        r"k: expected an integer in \[1, 4\]",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 2.0),
        ef.InvalidTypeError,
        "k: expected an integer, got float",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), True),
        ef.InvalidTypeError,
        "k: expected an integer, got bool",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 2, tol=-1.0),
        ef.InvalidArgumentError,
        r"tol: expected a number in \[2.2e-16, 1\) \(a relative residual\), got -1",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 2, tol=np.nan),
        ef.InvalidArgumentError,
        r"tol: expected a number in \[2.2e-16, 1\)",
    ),
    (
        lambda: linalg.eigh_topk(np.eye(4), 2, tol="a"),
        ef.InvalidTypeError,
        "tol: expected a real number",
    ),
    (
        lambda: linalg.principal_angles(np.ones((3, 2)), np.ones((4, 2))),
        ef.InvalidArgumentError,
        "B: expected 3 rows",
    ),
    (
        lambda: linalg.principal_angles(np.zeros((3, 2)), np.ones((3, 2))),
        ef.InvalidArgumentError,
        r"A: expected columns spanning a subspace of dimension ≥ 1, got an all-zero matrix",
    ),
    (
        lambda: linalg.subspace_overlap(np.ones((3, 2)), np.full((3, 1), np.inf)),
        ef.InvalidArgumentError,
        "B: expected only finite values",
    ),
    (
        lambda: linalg.set_num_threads(0),
        ef.InvalidArgumentError,
        r"n: expected an integer in \[1, 1024\] \(or None for all cores\), got 0",
    ),
]


@pytest.mark.parametrize("call,exc,message", BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_input_raises_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_errors_are_builtin_subclasses():
    with pytest.raises(ValueError):
        linalg.gram(np.ones(3))
    with pytest.raises(TypeError):
        linalg.gram(np.ones((2, 2), dtype=np.int32))


def test_read_only_accumulator_is_rejected_and_left_untouched():
    k = np.zeros((2, 2))
    k.setflags(write=False)
    with pytest.raises(ef.InvalidArgumentError, match="K: expected a writable array"):
        linalg.gram_accumulate(k, np.ones((2, 2)))
    assert np.all(k == 0)


def test_failed_accumulate_leaves_k_unchanged():
    k = np.eye(3)
    with pytest.raises(ef.InvalidArgumentError):
        linalg.gram_accumulate(k, np.array([[1.0], [np.nan], [0.0]]))
    assert np.array_equal(k, np.eye(3))


# ---------------------------------------------------------------- threads and GIL
def test_num_threads_round_trip_and_same_result():
    rng = np.random.default_rng(31)
    j = rng.standard_normal((300, 200))
    before = linalg.get_num_threads()
    try:
        linalg.set_num_threads(1)
        assert linalg.get_num_threads() == 1
        one = linalg.gram(j)
        linalg.set_num_threads(2)
        assert linalg.get_num_threads() == 2
        assert rel_err(linalg.gram(j), one) < 1e-13
    finally:
        linalg.set_num_threads(before)


# The GIL test lives in test_linalg_reliability.py (it can tell a held GIL from a released one).


def test_top_level_holds_the_module_and_thread_controls():
    assert ef.linalg is linalg
    assert ef.set_num_threads is linalg.set_num_threads
    assert ef.get_num_threads is linalg.get_num_threads
    assert "gram" not in ef.__all__ and "linalg" in ef.__all__


def test_linalg_does_not_import_torch():
    import subprocess

    code = "import sys, entk_fast, entk_fast.linalg; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------- hostile memory layouts
def test_misaligned_accumulator_is_rejected_not_silently_copied():
    buf = np.zeros(8 * 9 + 1, np.uint8)
    k = np.frombuffer(buf.data, np.float64, 9, offset=1).reshape(3, 3)
    assert not k.flags.aligned
    with pytest.raises(
        ef.InvalidArgumentError, match="K: expected an aligned float array in CPU memory"
    ):
        linalg.gram_accumulate(k, np.ones((3, 2)))


def test_self_overlapping_accumulator_is_rejected():
    k = np.lib.stride_tricks.as_strided(np.zeros(20), (20, 20), (0, 8), writeable=True)
    with pytest.raises(
        ef.InvalidTypeError, match="K: expected an array whose elements do not overlap"
    ):
        linalg.gram_accumulate(k, np.ones((20, 3)))


def test_operands_aliasing_the_accumulator_are_read_before_it_changes():
    rng = np.random.default_rng(41)
    j = rng.standard_normal((300, 300))
    k = j @ j.T
    k0 = k.copy()
    linalg.gram_accumulate(k, k)  # J is K itself
    assert rel_err(k, k0 + k0 @ k0.T) < 1e-12
    k = k0.copy()
    s = np.eye(60)
    linalg.hadamard_gram_accumulate(k, k[:, :5], s, block=5)
    g = k0[:, :5]
    assert rel_err(k, k0 + np.kron(s, np.ones((5, 5))) * (g @ g.T)) < 1e-12


def test_overflow_is_an_error_not_inf():
    with pytest.raises(ef.LinAlgError, match="overflowed"):
        linalg.gram_cross(np.array([[1e200, -1e200]]), np.array([[1e200, 1e200]]))
    k = np.zeros((1, 1), np.float32)
    with pytest.raises(ef.LinAlgError, match="K was left unchanged"):
        linalg.gram_accumulate(k, np.full((1, 4), 1e19, np.float32))
    assert k[0, 0] == 0


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_badly_scaled_but_finite_input_is_solved(scale):
    rng = np.random.default_rng(42)
    j = rng.standard_normal((400, 8))
    k0 = j @ j.T
    k = k0 * scale
    values = linalg.eigh(k)[0]
    ref = np.linalg.eigvalsh(k0)[::-1]
    assert rel_err(values / scale, ref) < 1e-10
    assert rel_err(linalg.eigh_topk(k, 3)[0] / scale, ref[:3]) < 1e-10
    a, b = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))
    assert np.allclose(
        linalg.principal_angles(a * scale, b), linalg.principal_angles(a, b), atol=1e-12
    )


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: linalg.eigh_topk(np.eye(300), 2, basis_blocks=257),
            r"basis_blocks: expected an integer in \[3, 256\], got 257",
        ),
        (
            lambda: linalg.eigh_topk(np.eye(300), 2, seed=2**64),
            r"seed: expected an integer in \[0, 2\*\*64 - 1\]",
        ),
        (
            lambda: linalg.eigh_topk(np.eye(300), 2, seed=-1),
            r"seed: expected an integer in \[0, 2\*\*64 - 1\], got -1",
        ),
        (lambda: linalg.set_num_threads(10**6), r"n: expected an integer in \[1, 1024\]"),
        (
            lambda: linalg.hadamard_gram_accumulate(
                np.zeros((2, 2)), np.ones((2, 1)), np.eye(2), block=2**70
            ),
            "block: expected an integer ≤ 18446744073709551615",
        ),
        (
            lambda: linalg.gram(np.ones((2, 2))) if linalg.set_num_threads(2**200) else None,
            "n: expected an integer of at most 128 bits",
        ),
    ],
)
def test_out_of_range_tuning_arguments(call, message):
    with pytest.raises(ef.InvalidArgumentError, match=message):
        call()


def test_huge_oversample_is_clamped_not_a_hang():
    values, _ = linalg.eigh_topk(np.diag(np.arange(300.0)), 2, oversample=2**40)
    assert np.array_equal(values, [299.0, 298.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("r,s_rows,block", [(1, 1, 1), (6, 9, 3), (300, 40, 4)])
def test_hadamard_gram_cross_matches_kron_formula(r, s_rows, block, dtype):
    rng = np.random.default_rng(r + s_rows)
    ga = random_matrix(rng, (r * block, 7), dtype)
    gb = random_matrix(rng, (s_rows * block, 7), dtype)
    s = random_matrix(rng, (r, s_rows), dtype)
    out = linalg.hadamard_gram_cross(ga, gb, s, block=block, alpha=2.0)
    want = (
        2.0
        * np.kron(s.astype(np.float64), np.ones((block, block)))
        * (ga.astype(np.float64) @ gb.astype(np.float64).T)
    )
    assert out.dtype == dtype and out.shape == (r * block, s_rows * block)
    assert rel_err(out, want) < RTOL[dtype] * 10


def test_hadamard_gram_cross_tiles_assemble_the_accumulated_block():
    rng = np.random.default_rng(51)
    n, c = 30, 3
    g = rng.standard_normal((n * c, 5))
    a = rng.standard_normal((n, 4))
    k = np.zeros((n * c, n * c))
    linalg.hadamard_gram_accumulate(k, g, a @ a.T, block=c)
    tiles = [slice(0, 12), slice(12, 30)]
    for ti in tiles:
        for tj in tiles:
            rows = slice(ti.start * c, ti.stop * c)
            cols = slice(tj.start * c, tj.stop * c)
            tile = linalg.hadamard_gram_cross(g[rows], g[cols], a[ti] @ a[tj].T, block=c)
            assert rel_err(tile, k[rows, cols]) < 1e-13


def test_hadamard_gram_cross_bad_shapes():
    with pytest.raises(ef.InvalidArgumentError, match="S: expected 3 columns"):
        linalg.hadamard_gram_cross(np.ones((4, 2)), np.ones((6, 2)), np.ones((2, 2)), block=2)
    with pytest.raises(
        ef.InvalidArgumentError, match="block: expected a positive divisor of the 5 rows of Gb"
    ):
        linalg.hadamard_gram_cross(np.ones((4, 2)), np.ones((5, 2)), np.ones((2, 2)), block=2)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
# Python ≥ 3.12 warns that fork() in a threaded process may deadlock: that is what this tests.
@pytest.mark.filterwarnings("ignore:This process.*is multi-threaded:DeprecationWarning")
def test_forked_child_gets_a_working_thread_pool():
    import multiprocessing

    j = np.random.default_rng(61).standard_normal((400, 300))
    want = linalg.gram(j)  # the parent's pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(linalg.gram, (j,)).get(timeout=60)
    assert rel_err(got, want) < 1e-13
