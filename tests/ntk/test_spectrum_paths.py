"""ntk/spectrum.py: the dense, dual and matrix-free paths against numpy's eigh of the reference kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ntk_reference import reference_jacobian, reference_kernel

from entk_fast import entk_spectrum


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


def test_spectrum_auto_takes_dual_only_with_fewer_columns_than_rows() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False).double().eval()  # Q = P = 6, C = 2
    for n, method in ((3, "dense"), (4, "dual")):  # kernel side N·C = 6 (= Q), then 8 (> Q)
        x = torch.randn(n, 3, dtype=torch.float64)
        assert entk_spectrum(model, x, progress=False).method == method
