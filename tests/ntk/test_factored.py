"""Factored matrix-free products (structured layers' inputs and cotangents gathered once) equal
K V from the brute-force kernel, their exact compressions keep every inner product, and
``entk_topk`` mixes them with the kept-graph products of the other parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ntk_reference import make_case, reference_jacobian, reference_kernel
from torch import nn

from entk_fast import entk_topk
from entk_fast.ntk.factored import FactoredOperator, compress_columns, compress_trace
from entk_fast.ntk.problem import evaluation_mode, prepare
from entk_fast.ntk.sources.cotangents import verify_layers
from entk_fast.ntk.sources.layer_search import find_layers

#: Cases whose structured layers cover plain Linear (with and without bias, one-hot inputs:
#: the sparse path), an embedding, attention projections and two inputs.
CASES = ["mlp", "modadd", "tokens", "attention", "two_inputs", "padded"]


class _Padded(nn.Module):
    """An embedding with a padding index, then a Linear with bias and a tanh read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 5, padding_idx=0)
        self.lin = nn.Linear(5, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(self.emb(tokens))))


def _case(name: str, n: int = 8) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if name == "padded":
        torch.manual_seed(0)
        tokens = torch.randint(0, 9, (8,), generator=torch.Generator().manual_seed(1))
        tokens[:2] = 0
        return _Padded().double().eval(), (tokens,)
    return make_case(name, n=n)


def _factored(
    name: str,
    reduction: str,
    metric: np.ndarray | None = None,
    transient: int = 2**26,
    n: int = 8,
) -> tuple[FactoredOperator, np.ndarray, nn.Module]:
    model, inputs = _case(name, n)
    with evaluation_mode(model):
        problem = prepare(model, inputs, reduction=reduction, output_metric=metric)
        layers = verify_layers(problem, find_layers(problem))
        op = FactoredOperator(problem, layers, chunk=3, transient=transient)
    assert layers, f"{name}: no structured layer"
    named = dict(model.named_parameters())
    names = [n for layer in layers for n in layer.names]
    names = [n for n in named if n in names]  # model order, as problem.selected
    kernel = reference_kernel(reference_jacobian(model, inputs, names), reduction, metric)
    return op, kernel, model


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_factored_products_equal_brute_force(name: str, reduction: str) -> None:
    op, kernel, _ = _factored(name, reduction)
    block = np.random.default_rng(2).standard_normal((kernel.shape[0], 5))
    np.testing.assert_allclose(
        op.matmat(block), kernel @ block, rtol=1e-10, atol=1e-10 * abs(kernel).max()
    )
    assert op.n_matvec == 5


def test_one_column_per_call_gives_the_same_products() -> None:
    op, kernel, _ = _factored("mlp", "flattened", transient=1)
    block = np.random.default_rng(3).standard_normal((kernel.shape[0], 4))
    np.testing.assert_allclose(op.matmat(block), kernel @ block, rtol=1e-10, atol=1e-12)


def test_factored_products_with_an_output_metric() -> None:
    rng = np.random.default_rng(4)
    root = rng.standard_normal((3, 3))
    metric = root @ root.T
    for reduction in ("flattened", "trace"):
        op, kernel, _ = _factored("mlp", reduction, metric)
        block = rng.standard_normal((kernel.shape[0], 3))
        np.testing.assert_allclose(op.matmat(block), kernel @ block, rtol=1e-10, atol=1e-12)


def test_trace_compression_finds_rank_one_units_of_the_modadd_mlp() -> None:
    # f = W2 (W1 x)² / H: W1's unit k reaches output c only through W2[c, k], so its
    # cotangents over the C outputs have rank 1 (width H, not C·H); W2's are e_c / H.
    op, kernel, _ = _factored("modadd", "trace", n=30)
    block = np.random.default_rng(6).standard_normal((30, 2))
    np.testing.assert_allclose(op.matmat(block), kernel @ block, rtol=1e-10, atol=1e-14)
    widths = op.widths
    assert widths["W1"] == (10, 8)  # one-hot inputs 2p = 10, hidden H = 8
    assert widths["W2"][1] == 1  # every output's cotangent is the same constant


def _unit_gram(cot: torch.Tensor) -> torch.Tensor:
    """Σ_c ⟨g_nct, g_n'ct'⟩ over (n, t) pairs, for (N, C, T, d) cotangents."""
    rows = cot.permute(0, 2, 1, 3).reshape(cot.shape[0] * cot.shape[2], -1)
    return rows @ rows.T


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(1, 5),
    t=st.integers(1, 3),
    d=st.integers(1, 5),
    rank=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_trace_compression_keeps_every_inner_product(
    n: int, c: int, t: int, d: int, rank: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    rank = min(rank, c)
    # each unit's (N·T × C) cotangents of rank ≤ `rank` (0: all zero)
    left = torch.randn(d, n * t, rank, generator=gen, dtype=torch.float64)
    right = torch.randn(d, rank, c, generator=gen, dtype=torch.float64)
    units = left @ right  # (d, N·T, C)
    cot = units.reshape(d, n, t, c).permute(1, 3, 2, 0).contiguous()  # (N, C, T, d)
    packed = compress_trace(cot, 1e-12)
    assert packed.shape[:3] == (n, 1, t)
    assert packed.shape[3] <= (max(1, rank * d) if c > 1 else d)  # one output: nothing to do
    rows = packed.reshape(n * t, -1)
    torch.testing.assert_close(rows @ rows.T, _unit_gram(cot), rtol=1e-9, atol=1e-9)
    narrow = compress_columns(packed, 1e-12)
    rows = narrow.reshape(n * t, -1)
    torch.testing.assert_close(rows @ rows.T, _unit_gram(cot), rtol=1e-9, atol=1e-9)


def _assert_columns_compress_to(shape: tuple[int, ...], rank: int, seed: int) -> None:
    """Cotangents of ``shape`` whose rows span ``rank`` directions compress to ``rank``
    columns with the same inner products."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, shape[-1], generator=gen, dtype=torch.float64)
    wide = torch.randn(*shape[:-1], rank, generator=gen, dtype=torch.float64) @ basis
    narrow = compress_columns(wide, 1e-12)
    assert narrow.shape == (*shape[:-1], rank)
    flat, small = wide.reshape(-1, shape[-1]), narrow.reshape(-1, rank)
    torch.testing.assert_close(small @ small.T, flat @ flat.T, rtol=1e-10, atol=1e-10)


def test_column_compression_keeps_the_row_space_only() -> None:
    _assert_columns_compress_to((6, 2, 4, 40), rank=3, seed=5)


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_topk_mixes_factored_and_kept_graph_products(reduction: str) -> None:
    # conv: Conv2d and BatchNorm take kept graphs, the Linear head factored products
    model, inputs = make_case("conv", n=9)
    kernel = reference_kernel(reference_jacobian(model, inputs), reduction)
    values = np.linalg.eigvalsh(kernel)[::-1][:4]
    spec = entk_topk(model, inputs, 4, reduction=reduction, progress=False)
    assert spec.info["factored_layers"] and spec.info["chunks"] >= 1
    assert spec.info["factored_bytes"] > 0
    np.testing.assert_allclose(spec.eigenvalues, values, rtol=1e-8)
    plain = entk_topk(model, inputs, 4, reduction=reduction, structured=False, progress=False)
    assert plain.info["factored_layers"] == []
    np.testing.assert_allclose(plain.eigenvalues, values, rtol=1e-8)


def test_topk_all_factored_runs_no_graph_products() -> None:
    model, inputs = make_case("modadd", n=20)
    kernel = reference_kernel(reference_jacobian(model, inputs), "trace")
    values, vectors = np.linalg.eigh(kernel)
    spec = entk_topk(model, inputs, 3, reduction="trace", progress=False)
    assert sorted(spec.info["factored_layers"]) == ["W1", "W2"]
    assert spec.info["chunks"] == spec.info["kept_chunks"] == 0
    np.testing.assert_allclose(spec.eigenvalues, values[::-1][:3], rtol=1e-8)
    overlap = np.linalg.norm(vectors[:, ::-1][:, :3].T @ spec.eigenvectors, axis=0)
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_factors_that_do_not_fit_take_the_general_path() -> None:
    model, inputs = make_case("mlp", n=10)
    kernel = reference_kernel(reference_jacobian(model, inputs), "flattened")
    # a budget the Krylov basis fits but the factors (held beside it) do not
    spec = entk_topk(model, inputs, 3, max_memory="1.2MB", progress=False)
    np.testing.assert_allclose(spec.eigenvalues, np.linalg.eigvalsh(kernel)[::-1][:3], rtol=1e-8)
    assert spec.info["chunks"] >= 1


def test_compressions_in_row_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from entk_fast.ntk import factored

    gen = torch.Generator().manual_seed(7)
    # rank-2 units over C = 4 outputs, T = 2 positions, d = 3 units, N = 9 samples
    units = torch.randn(3, 18, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 2, 4, generator=gen, dtype=torch.float64
    )
    cot = units.reshape(3, 9, 2, 4).permute(1, 3, 2, 0).contiguous()
    whole = compress_trace(cot, 1e-12)
    monkeypatch.setattr(factored, "_CHUNK_BYTES", 1)  # one sample (row) per chunk
    chunked = compress_trace(cot, 1e-12)
    assert chunked.shape == whole.shape == (9, 1, 2, 6)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    rows = chunked.reshape(18, -1)
    torch.testing.assert_close(rows @ rows.T, _unit_gram(cot), rtol=1e-10, atol=1e-10)
    _assert_columns_compress_to((9, 3, 2, 10), rank=2, seed=8)  # one row (of 54) a chunk


@pytest.mark.parametrize("reduction", ["trace", "flattened"])
def test_float32_compressions_stay_at_float32_round_off(reduction: str) -> None:
    # C = 60 outputs: a tolerance scaled by C·eps(float32) once dropped real directions and
    # shrank the kernel by 3e-4; products must stay at float32 round-off (~1e-7).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 48), nn.Tanh())
    model.append(nn.Linear(48, 60))
    x = torch.randn(30, 6)
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]

    def operator(dtype: torch.dtype) -> FactoredOperator:
        with evaluation_mode(model):
            problem = prepare(model, x, reduction=reduction, params=names, dtype=dtype)
            return FactoredOperator(problem, verify_layers(problem, find_layers(problem)), 8, 2**26)

    exact = operator(torch.float64)
    block = np.random.default_rng(8).standard_normal((exact.problem.kernel_size, 3))
    reference = exact.matmat(block)
    single = operator(torch.float32).matmat(block).astype(np.float64)
    assert np.abs(single - reference).max() < 1e-6 * np.abs(reference).max()
