"""Spectra: dense, dual (P < N·C) and matrix-free top-k agree with the dense eigendecomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import MLP, make_case, relative_error
from torch import nn

from entk_fast import empirical_ntk, entk_spectrum, entk_topk, linalg


def _gap_k(values: np.ndarray, lo: int = 2, hi: int = 6) -> int:
    """A k in [lo, hi] with a clear gap after it, so the top-k subspace is well defined."""
    hi = min(hi, len(values) - 2)
    ratios = values[lo - 1 : hi] / values[lo : hi + 1]
    return lo + int(np.argmax(ratios))


def _wide_mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = MLP(4, (8, 8), 3).double().eval()
    return model, torch.randn(10, 4, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
@pytest.mark.parametrize("with_metric", [False, True])
def test_topk_matches_dense(reduction: str, with_metric: bool) -> None:
    model, x = _wide_mlp()
    metric = np.array([1.0, 0.5, 0.2]) if with_metric else None
    kernel = empirical_ntk(model, x, reduction=reduction, output_metric=metric, progress=False)
    values, vectors = linalg.eigh(kernel.kernel)
    k = _gap_k(values)
    top = entk_topk(model, x, k, reduction=reduction, output_metric=metric, progress=False)
    assert top.method == "matrix_free"
    assert top.eigenvalues.shape == (k,) and top.eigenvectors.shape == (kernel.shape[0], k)
    assert np.all(np.diff(top.eigenvalues) <= 0)
    assert relative_error(top.eigenvalues, values[:k]) < 1e-6
    assert linalg.subspace_overlap(top.eigenvectors, vectors[:, :k]) >= k - 1e-6
    assert top.info["n_matvec"] > 0


def test_topk_on_general_path_model() -> None:
    model, inputs = make_case("conv", n=6)
    kernel = empirical_ntk(model, inputs, reduction="trace", progress=False)
    values, vectors = linalg.eigh(kernel.kernel)
    k = _gap_k(values)
    top = entk_topk(model, inputs, k, reduction="trace", progress=False)
    assert relative_error(top.eigenvalues, values[:k]) < 1e-6
    assert linalg.subspace_overlap(top.eigenvectors, vectors[:, :k]) >= k - 1e-6


def test_topk_restricted_to_a_layer_matches_layer_kernel() -> None:
    model, x = _wide_mlp()
    kernel = empirical_ntk(model, x, reduction="trace", layerwise=True, progress=False)
    values, vectors = linalg.eigh(kernel.layer_kernels["layers.2"])
    k = _gap_k(values, 1, 3)
    top = entk_topk(model, x, k, reduction="trace", params=["layers.2"], progress=False)
    assert relative_error(top.eigenvalues, values[:k]) < 1e-6
    assert linalg.subspace_overlap(top.eigenvectors, vectors[:, :k]) >= k - 1e-6


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_auto_picks_dual_when_parameters_are_few(reduction: str) -> None:
    # TMS with n = 6, m = 3: P = 24 parameters, N·C = 10·6 = 60 rows.
    model, inputs = make_case("tms", n=10)
    dense = empirical_ntk(model, inputs, reduction=reduction, progress=False)
    values, vectors = linalg.eigh(dense.kernel)
    spec = entk_spectrum(model, inputs, reduction=reduction, progress=False)
    q = 24 if reduction == "flattened" else 24 * 6
    if q < dense.shape[0]:
        assert spec.method == "dual"
        assert spec.info["dual_size"] == q
    count = len(spec)
    assert count <= min(q, dense.shape[0])
    assert relative_error(spec.eigenvalues, values[:count]) < 1e-9
    # Eigenvectors agree up to sign where eigenvalues are simple.
    sep = 1e-6 * values[0]
    for i in range(count):
        above = i == 0 or values[i - 1] - values[i] > sep
        below = i == len(values) - 1 or values[i] - values[i + 1] > sep
        if above and below:
            assert abs(abs(spec.eigenvectors[:, i] @ vectors[:, i]) - 1) < 1e-7
    # The remaining spectrum really is zero.
    assert np.abs(values[count:]).max(initial=0.0) < 1e-10 * values[0]


def test_dual_with_k_and_metric() -> None:
    model, inputs = make_case("tms", n=10)
    metric = 0.8 ** np.arange(6)
    dense = empirical_ntk(model, inputs, output_metric=metric, progress=False)
    values, vectors = linalg.eigh(dense.kernel)
    spec = entk_spectrum(model, inputs, 5, output_metric=metric, method="dual", progress=False)
    assert spec.method == "dual"
    assert relative_error(spec.eigenvalues, values[:5]) < 1e-9
    k = _gap_k(values, 2, 5)
    assert linalg.subspace_overlap(spec.eigenvectors[:, :k], vectors[:, :k]) >= k - 1e-8


def test_auto_picks_dense_when_kernel_is_small() -> None:
    model, x = _wide_mlp()
    spec = entk_spectrum(model, x, progress=False)
    assert spec.method == "dense"
    kernel = empirical_ntk(model, x, progress=False)
    values, _ = linalg.eigh(kernel.kernel)
    assert relative_error(spec.eigenvalues, values) < 1e-12
    top = entk_spectrum(model, x, 3, progress=False)
    assert top.method == "dense" and len(top) == 3
    assert relative_error(top.eigenvalues, values[:3]) < 1e-9


def test_explicit_matrix_free_method() -> None:
    model, x = _wide_mlp()
    spec = entk_spectrum(model, x, 2, method="matrix_free", progress=False)
    assert spec.method == "matrix_free"


def test_ridge_is_reported_and_added() -> None:
    model, x = _wide_mlp()
    plain = entk_spectrum(model, x, progress=False)
    ridged = entk_spectrum(model, x, ridge=1e-8, progress=False)
    kernel = empirical_ntk(model, x, progress=False).kernel
    expected = 1e-8 * np.trace(kernel) / kernel.shape[0]
    assert ridged.ridge == pytest.approx(expected)
    assert plain.ridge == 0.0
    np.testing.assert_allclose(ridged.eigenvalues, plain.eigenvalues + expected, rtol=1e-9)


def test_ridge_on_the_dual_path() -> None:
    model, inputs = make_case("tms", n=10)
    kernel = empirical_ntk(model, inputs, progress=False).kernel
    plain = entk_spectrum(model, inputs, 4, progress=False)
    ridged = entk_spectrum(model, inputs, 4, ridge=1e-6, progress=False)
    assert ridged.method == "dual"
    expected = 1e-6 * np.trace(kernel) / kernel.shape[0]
    assert ridged.ridge == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(ridged.eigenvalues, plain.eigenvalues + expected, rtol=1e-10)


def test_dual_in_float32_keeps_small_eigenvalues() -> None:
    model, inputs = make_case("tms", n=40)
    model = model.float()
    x = inputs[0].float()
    reference = linalg.eigh(empirical_ntk(model, x, dtype=torch.float64, progress=False).kernel)[0]
    spec = entk_spectrum(model, x, progress=False)
    assert spec.method == "dual" and spec.eigenvalues.dtype == np.float32
    # Everything above ~1e-4 of the top eigenvalue survives, and is accurate.
    assert len(spec) >= int((reference > 1e-4 * reference[0]).sum())
    top = reference[: len(spec)]
    assert np.abs(spec.eigenvalues - top).max() < 1e-5 * reference[0]


def test_kernel_spectrum_method_and_gaps() -> None:
    model, x = _wide_mlp()
    kernel = empirical_ntk(model, x, progress=False)
    spec = kernel.spectrum()
    assert spec.method == "dense" and len(spec) == kernel.shape[0]
    gaps = spec.gaps(3)
    assert len(gaps) == 3
    ratios = spec.eigenvalues[:-1] / spec.eigenvalues[1:]
    best = int(np.argmax(ratios))
    assert gaps[0][0] == best + 1 and gaps[0][1] == pytest.approx(ratios[best])
    assert gaps[0][1] >= gaps[1][1] >= gaps[2][1]


def test_unflatten_round_trip() -> None:
    model, x = _wide_mlp()
    kernel = empirical_ntk(model, x, progress=False)
    spec = kernel.spectrum(4)
    grid = spec.unflatten(spec.eigenvectors)
    assert grid.shape == (10, 3, 4)
    np.testing.assert_array_equal(grid[2, 1], spec.eigenvectors[2 * 3 + 1])
    np.testing.assert_array_equal(spec.flatten(grid), spec.eigenvectors)
    np.testing.assert_array_equal(kernel.unflatten(spec.eigenvectors[:, 0]), grid[:, :, 0])


def test_float32_dual_keeps_small_real_eigenvalues() -> None:
    """The dual path's float64 Gram resolves a float32 model's eigenvalues far below
    ε₃₂·λ₁: none above round-off is dropped, and they match the float64 ones."""
    torch.manual_seed(0)
    n, p = 40, 6
    scales = torch.tensor([1.0, 1e-1, 1e-2, 1e-3, 3e-4, 1e-4])  # λ down to 1e-8·λ₁
    q, _ = torch.linalg.qr(torch.randn(n, p, dtype=torch.float64))
    x = (q * scales * n**0.5).to(torch.float64)
    model = nn.Linear(p, 1, bias=False)
    exact = entk_spectrum(model.double(), x, method="dual", progress=False)
    single = entk_spectrum(model.float(), x.float(), method="dual", progress=False)
    assert exact.info["rank"] == p and single.info["rank"] == p
    np.testing.assert_allclose(single.eigenvalues, exact.eigenvalues, rtol=1e-3)
