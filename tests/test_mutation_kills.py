"""Tests that kill mutants tools/mutate.py found alive: each pins a number the mutated code
would get wrong, against an independent reference (brute-force loops, numpy / scipy, closed
forms). Grouped by the module they guard; the names carry the module so that
``tools/mutate.py`` can map them (see ``TARGETS`` there).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ntk_reference import make_case, reference_jacobian, reference_kernel, relative_error

from entk_fast import empirical_ntk, entk_spectrum
from entk_fast.analysis.alignment import (
    alignment_curve,
    central_difference,
    principal_angles_degrees,
)
from entk_fast.analysis.cliffs import RIDGE_EPSILON, cliff_blocks, feature_cliffs
from entk_fast.analysis.fourier import fourier_family, smoothness_rotation
from entk_fast.analysis.tms import feature_heatmap, feature_indicators, match_features
from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.ntk.assemble import (
    assemble_cross,
    assemble_square,
    cross_units,
    spans,
    square_units,
)
from entk_fast.ntk.checks import (
    all_finite,
    close,
    close_per_sample,
    first_nonfinite,
    sample_namer,
)
from entk_fast.ntk.problem import REDUCTIONS, normalise_metric

# --- ntk/problem.py: reductions, output map, metric ---------------------------------------


def _metric(kind: str, c: int) -> np.ndarray | None:
    rng = np.random.default_rng(11)
    if kind == "none":
        return None
    if kind == "vector":
        w = rng.uniform(0.2, 2.0, c)
        w[1] = 0.0  # a zero weight is PSD: allowed
        return w
    a = rng.standard_normal((c, c))
    return a @ a.T + 0.3 * np.eye(c)


@pytest.mark.parametrize("metric_kind", ["none", "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_problem_reductions_match_brute_force(reduction: str, metric_kind: str) -> None:
    model, x = make_case("mlp", n=4)
    jac = reference_jacobian(model, x)
    metric = _metric(metric_kind, jac.shape[1])
    got = empirical_ntk(model, x, reduction=reduction, output_metric=metric, progress=False)
    assert relative_error(got.kernel, reference_kernel(jac, reduction, metric)) < 1e-10
    if metric is None:
        assert got.output_metric is None
    else:  # the result reports S itself (a matrix), not its square root
        full = np.diag(metric) if metric.ndim == 1 else metric
        np.testing.assert_allclose(got.output_metric, full, rtol=0, atol=1e-15)


def test_problem_reduction_objects_closed_form() -> None:
    trace, flat, mean = REDUCTIONS["trace"], REDUCTIONS["flattened"], REDUCTIONS["mean_pairs"]
    assert (trace.scale(4), flat.scale(4), mean.scale(4)) == (0.25, 1.0, 1.0)
    assert (trace.kernel_rows_per_sample(3), flat.kernel_rows_per_sample(3)) == (1, 3)
    assert (trace.dual_columns(3, 10), flat.dual_columns(3, 10)) == (30, 10)
    assert (flat.per_output, trace.per_output, mean.per_output) == (True, False, False)
    block = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(2, 3, 5)
    assert torch.equal(trace.arrange(block), block.reshape(2, 15))
    assert torch.equal(flat.arrange(block), block.reshape(6, 5))


def test_problem_metric_root_squares_to_the_metric() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 2))
    s = a @ a.T  # rank 2: the root keeps the null space
    sym, root, diagonal = normalise_metric(s, 4)
    assert not diagonal
    np.testing.assert_allclose(sym, s, rtol=0, atol=1e-15)
    np.testing.assert_allclose(root @ root, s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(root, root.T, rtol=0, atol=1e-15)
    # Round-off eigenvalues are cut relative to the largest: at scale 1e8 the root must still
    # vanish on S's null space (keeping them would put √(1e-8)-sized noise there).
    _, big_root, _ = normalise_metric(1e8 * s, 4)
    null = np.linalg.svd(a.T)[2][2:].T  # (4, 2), orthogonal to a's columns
    assert np.abs(big_root @ null).max() < 1e-6
    w = np.array([0.0, 0.25, 4.0])
    full, half, diagonal = normalise_metric(w, 3)
    assert diagonal
    np.testing.assert_array_equal(full, np.diag(w))
    np.testing.assert_array_equal(half, [0.0, 0.5, 2.0])


def test_problem_metric_tolerances_scale_with_dtype_and_size() -> None:
    # float32: asymmetry is allowed up to 8·eps32·C·max|S| (here 1.9e-6), no further.
    for d, ok in ((1e-6, True), (3e-6, False)):
        s = np.array([[1.0, 0.5], [0.5 + d, 1.0]], dtype=np.float32)
        if ok:
            sym, _, _ = normalise_metric(s, 2)
            np.testing.assert_allclose(sym, sym.T, rtol=0, atol=0)
        else:
            with pytest.raises(InvalidArgumentError, match="symmetric"):
                normalise_metric(s, 2)
    # float64: 1e-10·C·max|S| with C = 3 (3e-10).
    for d, ok in ((2e-10, True), (4e-10, False)):
        s = np.eye(3)
        s[0, 1] = 0.25
        s[1, 0] = 0.25 + d
        if ok:
            normalise_metric(s, 3)
        else:
            with pytest.raises(InvalidArgumentError, match="symmetric"):
                normalise_metric(s, 3)


def test_problem_keyword_inputs_and_partial_nan() -> None:
    model, (x,) = make_case("mlp", n=4)

    class Keyword(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapped = Keyword()
    by_key = empirical_ntk(wrapped, {"x": x}, progress=False).kernel
    np.testing.assert_array_equal(by_key, empirical_ntk(model, x, progress=False).kernel)
    with pytest.raises(InvalidTypeError, match="keyword names must be strings"):
        empirical_ntk(wrapped, {1: x}, progress=False)
    bad = x.clone()
    bad[2, 1] = float("nan")  # one feature of one sample
    with pytest.raises(InvalidArgumentError, match="first at sample 2"):
        empirical_ntk(model, bad, progress=False)


# --- ntk/checks.py: the batched-vs-lone comparison and the NaN checks ----------------------


def test_checks_close_tolerance_and_nonfinite() -> None:
    # allclose with rtol and atol = rtol·max|x|: the largest entry may move by 2·rtol of itself.
    a64 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert close(a64, a64 * (1 + 1.5e-9))
    assert not close(a64, a64 * (1 + 3e-9))
    a32 = a64.float()
    assert close(a32, a32 * (1 + 1.5e-4))
    assert not close(a32, a32 * (1 + 3e-4))
    assert close(a64, a64 * (1 + 1.5e-6), rtol=1e-6)
    assert not close(a64, a64 * (1 + 3e-6), rtol=1e-6)
    assert not close(a64, a64.float())  # dtype differs
    assert not close(a64, a64[:2])  # shape differs
    ints = torch.tensor([1, 2, 3])
    assert close(ints, ints.clone()) and not close(ints, ints + 1)
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([1.0, nan, inf], dtype=torch.float64)
    assert close(x, x.clone())
    assert not close(x, torch.tensor([1.0, inf, nan], dtype=torch.float64))
    assert not close(x, torch.tensor([1.0, nan, -inf], dtype=torch.float64))
    assert not close(x, torch.tensor([1.1, nan, inf], dtype=torch.float64))
    empty = torch.zeros(0, dtype=torch.float64)
    assert close(empty, empty)
    one = torch.ones(1, dtype=torch.float64)
    assert close(one, one.clone()) and not close(one, 2 * one)
    huge = torch.tensor([1e300, 2.0], dtype=torch.float64)  # a scale beyond float32's range
    assert close(huge, huge.clone()) and not close(huge, huge * 1.01)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=12),
    st.lists(st.floats(-3e-4, 3e-4), min_size=12, max_size=12),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_checks_close_is_allclose_with_atol_at_the_scale(
    values: list[float], noise: list[float], dtype: torch.dtype
) -> None:
    """The fast comparison (one max difference, the elementwise test only in the band where
    it decides) gives exactly ``allclose(rtol, atol = rtol · max(|a|, |b|))``."""
    a = torch.tensor(values, dtype=dtype)
    rtol = 1e-4
    scale = float(a.abs().max()) or 1.0
    b = a + torch.tensor(noise[: len(values)], dtype=dtype) * scale
    big = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    assert close(a, b, rtol=rtol) == bool(torch.allclose(a, b, rtol=rtol, atol=rtol * big))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6),
    st.lists(st.floats(-3e-4, 3e-4), min_size=6, max_size=6),
    st.floats(1e-6, 1.0),
)
def test_checks_close_per_sample_is_close_slice_by_slice(
    values: list[float], noise: list[float], shrink: float
) -> None:
    """Each sample is held to its own scale: a small sample's error is not hidden by a large
    one (whole-batch ``close`` would accept it)."""
    a = torch.tensor(values, dtype=torch.float64).reshape(3, 2)
    a[1] *= shrink  # one sample much smaller than the others
    b = a + torch.tensor(noise, dtype=torch.float64).reshape(3, 2) * a.abs().amax()
    want = all(close(p, q, rtol=1e-4) for p, q in zip(a, b, strict=True))
    assert close_per_sample(a, b, rtol=1e-4) == want


def test_checks_close_per_sample_edges() -> None:
    big = torch.tensor([[1000.0, 2.0], [1e-3, 2e-3]], dtype=torch.float64)
    off = big.clone()
    off[1, 0] *= 1.01  # 1% off on the small sample: far below the large one's round-off
    assert close(big, off, rtol=1e-4) and not close_per_sample(big, off, rtol=1e-4)
    nan = big.clone()
    nan[0, 1] = float("nan")
    assert close_per_sample(nan, nan.clone()) and not close_per_sample(nan, big)
    ints = torch.tensor([[1, 2], [3, 4]])
    assert close_per_sample(ints, ints.clone()) and not close_per_sample(ints, ints + 1)
    assert not close_per_sample(big, big[:1])
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert close_per_sample(empty, empty)


def test_checks_finite_helpers_and_names() -> None:
    x = torch.zeros(3, 4, dtype=torch.float64)
    assert all_finite(x) and first_nonfinite(x) is None
    x[2, 1] = float("nan")
    x[1, 3] = float("inf")
    assert not all_finite(x)
    assert first_nonfinite(x) == 1
    assert first_nonfinite(x, dim=1) == 1
    assert all_finite(torch.tensor([1, 2])) and all_finite(torch.zeros(0))
    name = sample_namer(5, 2)
    assert [name(i) for i in (0, 2, 3, 4)] == ["sample 0", "sample 2", "x2 sample 0", "x2 sample 1"]
    assert sample_namer(4)(3) == "sample 3"


# --- ntk/assemble.py: the tile loop, against J Jᵀ -------------------------------------------


class _Rows:
    """A tile source over fixed rows J (n·per, p): the kernel is J Jᵀ (or J Jᵀ₂)."""

    def __init__(self, jac: np.ndarray, per: int, target: np.ndarray) -> None:
        self.jac, self.per, self.target = jac, per, target
        self.loads: list[tuple[int, int, bool]] = []
        self.whole = 0

    def load(self, start: int, stop: int, *, check: bool) -> np.ndarray:
        self.loads.append((start, stop, check))
        return self.jac[start * self.per : stop * self.per]

    def add_diagonal(self, tile: np.ndarray, rows: slice) -> None:
        self.target[rows, rows] += tile @ tile.T

    def cross(self, left: np.ndarray, right: np.ndarray):  # type: ignore[no-untyped-def]
        yield self.target, left @ right.T

    def add_whole(self, tick) -> None:  # type: ignore[no-untyped-def]
        self.whole += 1
        self.target += self.jac @ self.jac.T
        tick(1)


def test_assemble_spans_and_units() -> None:
    assert spans(0, 10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert spans(4, 6, 5) == [(4, 6)]
    assert spans(0, 3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert square_units(10, 3) == 10 and square_units(3, 3) == 1
    assert cross_units(10, 7, 3) == 12 and cross_units(2, 2, 5) == 1


@pytest.mark.parametrize("tile", [1, 2, 3, 7, 9])
def test_assemble_square_is_the_gram(tile: int) -> None:
    n, per = 7, 2
    jac = np.random.default_rng(tile).standard_normal((n * per, 5))
    k = np.zeros((n * per, n * per))
    source = _Rows(jac, per, k)
    ticks: list[int] = []
    assemble_square(source, n, tile, per, ticks.append)
    np.testing.assert_allclose(k, jac @ jac.T, rtol=0, atol=1e-12)
    if tile >= n:
        assert source.whole == 1 and not source.loads and sum(ticks) == 1
    else:
        assert sum(ticks) == square_units(n, tile) and source.whole == 0
        checked = [(a, b) for a, b, check in source.loads if check]
        assert checked == spans(0, n, tile)  # each tile verified exactly once


@pytest.mark.parametrize("tile", [1, 2, 4, 10])
def test_assemble_cross_is_the_cross_gram(tile: int) -> None:
    n, n2, per = 5, 4, 3
    jac = np.random.default_rng(tile).standard_normal(((n + n2) * per, 6))
    k = np.zeros((n * per, n2 * per))
    source = _Rows(jac, per, k)
    ticks: list[int] = []
    assemble_cross(source, n, n2, tile, per, ticks.append)
    np.testing.assert_allclose(k, jac[: n * per] @ jac[n * per :].T, rtol=0, atol=1e-12)
    assert sum(ticks) == cross_units(n, n2, tile)
    checked = sorted((a, b) for a, b, check in source.loads if check)
    assert checked == sorted(spans(0, n, tile) + spans(n, n + n2, tile))


# --- spectrum.py: dense / dual / matrix-free against numpy's eigh of the reference ------


def _small_model() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    """P = 14 parameters, C = 2 outputs, N = 40: the dual Gram (≤ 28 columns) is smaller than
    the kernel for every reduction."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 2)
    ).double()
    return model.eval(), (torch.randn(40, 3, generator=gen, dtype=torch.float64),)


def _reference_spectrum(reduction: str, metric: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    model, x = _small_model()
    kernel = reference_kernel(reference_jacobian(model, x), reduction, metric)
    values, vectors = np.linalg.eigh(kernel)
    return model, x, kernel, values[::-1], vectors[:, ::-1]


def _check_pairs(spec, kernel, want, k: int, tol: float) -> None:  # type: ignore[no-untyped-def]
    got = spec.eigenvalues[:k]
    np.testing.assert_allclose(got, want[:k], rtol=tol, atol=tol * want[0])
    vecs = spec.eigenvectors[:, :k]
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-8)
    residual = np.linalg.norm(kernel @ vecs - vecs * got, axis=0).max()
    assert residual < 1e-7 * want[0]


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_spectrum_dual_matches_numpy(reduction: str) -> None:
    model, x, kernel, want, _ = _reference_spectrum(reduction)
    spec = entk_spectrum(model, x, reduction=reduction, method="dual", progress=False)
    assert spec.method == "dual"
    rank = int((want > want[0] * 1e-10).sum())
    assert spec.info["rank"] == rank == len(spec.eigenvalues)
    assert 1 <= spec.info["chunk"] <= 40  # samples per Jacobian block: at most N
    _check_pairs(spec, kernel, want, rank, 1e-9)


def test_spectrum_dual_with_k_and_ridge() -> None:
    model, x, kernel, want, _ = _reference_spectrum("trace")
    ridge = 1e-3
    spec = entk_spectrum(model, x, 4, reduction="trace", method="dual", ridge=ridge, progress=False)
    shift = ridge * np.trace(kernel) / kernel.shape[0]
    assert math.isclose(spec.ridge, shift, rel_tol=1e-12)
    np.testing.assert_allclose(spec.eigenvalues, want[:4] + shift, rtol=1e-9)
    assert spec.info["n_dropped"] == 0 and len(spec.eigenvalues) == 4


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_spectrum_dense_and_matrix_free_match_numpy(method: str) -> None:
    model, x, kernel, want, _ = _reference_spectrum("flattened")
    spec = entk_spectrum(model, x, 5, method=method, progress=False)
    assert spec.method == method
    if method == "matrix_free":  # vectors per torch product: at most the block (k + 8)
        assert 1 <= spec.info["columns"] <= 13 and 1 <= spec.info["chunk"] <= 40
    _check_pairs(spec, kernel, want, 5, 1e-9)


# --- analysis/: closed forms ---------------------------------------------------------------


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


# --- linalg.py ------------------------------------------------------------------------------


def test_linalg_overlap_of_a_vector_and_integer_range() -> None:
    from entk_fast import linalg

    t = 0.6
    v = np.array([math.cos(t), math.sin(t), 0.0])  # a 1-D vector is a one-column basis
    plane = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert math.isclose(linalg.subspace_overlap(v, plane), math.cos(t) ** 2, rel_tol=1e-12)
    assert math.isclose(linalg.subspace_overlap(plane, v), math.cos(t) ** 2, rel_tol=1e-12)
    for n in (2**127, -(2**127) - 1):
        with pytest.raises(InvalidArgumentError, match="128 bits"):
            linalg.set_num_threads(n)


def test_spectrum_auto_takes_dual_only_with_fewer_columns_than_rows() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False).double().eval()  # Q = P = 6, C = 2
    for n, method in ((3, "dense"), (4, "dual")):  # kernel side N·C = 6 (= Q), then 8 (> Q)
        x = torch.randn(n, 3, dtype=torch.float64)
        assert entk_spectrum(model, x, progress=False).method == method
