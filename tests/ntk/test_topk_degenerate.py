"""Matrix-free top-k finds every copy of a repeated eigenvalue: linear models (C-fold
eigenvalues), exact cos/sin pairs, and an attention model, against the dense spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ntk_reference import make_case, reference_jacobian, reference_kernel
from torch import nn

from entk_fast import empirical_ntk, entk_topk
from entk_fast.linalg import subspace_overlap


def _dense_top(kernel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh(kernel)
    return values[::-1][:k], vectors[:, ::-1][:, :k]


class FourierFeatures(nn.Module):
    """y = w · e_a + b with fixed embeddings e_a = [c_k cos(2πka/p), c_k sin(2πka/p)]_k: the
    eNTK of (w, b) is circulant in a − a', with eigenvalue pairs on each frequency's cos/sin."""

    def __init__(self, p: int, freqs: int) -> None:
        super().__init__()
        a = torch.arange(p, dtype=torch.float64)[:, None]
        k = torch.arange(1, freqs + 1, dtype=torch.float64)[None, :]
        scale = 1.0 / k
        table = torch.cat(
            [
                scale * torch.cos(2 * math.pi * k * a / p),
                scale * torch.sin(2 * math.pi * k * a / p),
            ],
            1,
        )
        self.register_buffer("table", table)
        self.head = nn.Linear(2 * freqs, 1).double()

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.table[a])


#: Both product paths: factored (structured layers, gathered once) and kept autograd graphs.
PATHS = pytest.mark.parametrize("structured", [True, False], ids=["factored", "graphs"])


@PATHS
@pytest.mark.parametrize("block", [None, 4])
def test_linear_model_c_fold_eigenvalues(block: int | None, structured: bool) -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 6).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    kernel = empirical_ntk(model, x, progress=False).kernel
    expected = np.kron(x.numpy() @ x.numpy().T + 1.0, np.eye(6))
    np.testing.assert_allclose(kernel, expected, rtol=1e-12, atol=1e-12)
    values, vectors = _dense_top(expected, 12)
    # 4: fewer than the six copies of the top eigenvalue; 9 cuts through the second group
    for k in (4, 9, 12):
        spec = entk_topk(model, x, k, block=block, structured=structured, progress=False)
        np.testing.assert_allclose(spec.eigenvalues, values[:k], rtol=1e-8)
        assert spec.info["converged"] and spec.info["max_residual"] <= 1e-8
        assert bool(spec.info["factored_layers"]) == structured
        if k == 4:  # any 4 vectors of the six-fold top eigenspace
            assert subspace_overlap(spec.eigenvectors, vectors[:, :6]) >= 4 - 1e-6
    # the two complete groups span the same subspace as the dense solver's
    assert subspace_overlap(spec.eigenvectors, vectors) >= 12 - 1e-6
    assert np.sum(np.isclose(spec.eigenvalues, values[0], rtol=1e-8)) == 6


@PATHS
def test_exact_cos_sin_pairs(structured: bool) -> None:
    model = FourierFeatures(p=11, freqs=4)
    a = torch.arange(11)
    jac = reference_jacobian(model, (a,))
    kernel = reference_kernel(jac, "flattened")
    values, vectors = _dense_top(kernel, 9)
    assert np.isclose(values[1], values[2], rtol=1e-10)  # a cos/sin pair
    spec = entk_topk(model, a, 9, block=2, structured=structured, progress=False)
    np.testing.assert_allclose(spec.eigenvalues, values, rtol=1e-8)
    assert subspace_overlap(spec.eigenvectors, vectors) >= 9 - 1e-6
    assert spec.info["factored_layers"] == (["head"] if structured else [])


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
@PATHS
def test_attention_model_matches_dense(reduction: str, structured: bool) -> None:
    model, inputs = make_case("attention", n=6)
    kernel = reference_kernel(reference_jacobian(model, inputs), reduction)
    k = 4
    values, vectors = _dense_top(kernel, k + 1)
    assert values[k - 1] > values[k] * (1 + 1e-6)  # a gap after k: the subspace is unique
    spec = entk_topk(model, inputs, k, reduction=reduction, structured=structured, progress=False)
    np.testing.assert_allclose(spec.eigenvalues, values[:k], rtol=1e-8)
    assert subspace_overlap(spec.eigenvectors, vectors[:, :k]) >= k - 1e-6
    assert spec.method == "matrix_free" and spec.info["n_matvec"] > 0
    # factored: the embedding, attention projections and head; graphs: position table, norm
    assert bool(spec.info["factored_layers"]) == structured and spec.info["chunks"] >= 1
