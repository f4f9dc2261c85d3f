"""The matrix-free products through kept forward graphs (one forward per chunk for the whole
solve; Mᵀ v a backward through it, M w its transpose) equal K V from the brute-force kernel,
with all, some or none of the chunks kept, and fall back where an op has no second derivative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ntk_reference import make_case, reference_jacobian, reference_kernel
from torch import nn

from entk_fast import entk_topk
from entk_fast.ntk.operator import KernelOperator
from entk_fast.ntk.problem import evaluation_mode, prepare

CASES = ["mlp", "conv", "two_inputs", "attention", "tokens"]


def _operator(name: str, reduction: str, keep_bytes: int, chunk: int = 3) -> tuple:
    model, inputs = make_case(name, n=7)
    kernel = reference_kernel(reference_jacobian(model, inputs), reduction)
    with evaluation_mode(model):
        problem = prepare(model, inputs, reduction=reduction)
    return KernelOperator(problem, chunk, columns=2, keep_bytes=keep_bytes), kernel, model


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_kept_products_equal_brute_force(name: str, reduction: str) -> None:
    op, kernel, model = _operator(name, reduction, keep_bytes=2**40)
    block = np.random.default_rng(1).standard_normal((kernel.shape[0], 5))
    with evaluation_mode(model):
        first = op.matmat(block)
        again = op.matmat(block[:, ::-1])
    assert op.kept_chunks == op.kept_transposes == 3  # 7 samples in chunks of 3: all kept
    np.testing.assert_allclose(first, kernel @ block, rtol=1e-10, atol=1e-10 * abs(kernel).max())
    np.testing.assert_allclose(again, kernel @ block[:, ::-1], rtol=1e-10, atol=1e-9)
    assert op.n_matvec == 10


def test_without_room_no_graph_is_kept_and_products_agree() -> None:
    op, kernel, model = _operator("mlp", "flattened", keep_bytes=0)
    block = np.random.default_rng(2).standard_normal((kernel.shape[0], 3))
    with evaluation_mode(model):
        out = op.matmat(block)
    assert op.kept_chunks == 0 and op.kept_bytes == 0
    np.testing.assert_allclose(out, kernel @ block, rtol=1e-10, atol=1e-10)


def _budgeted(
    monkeypatch: pytest.MonkeyPatch, name: str, reduction: str, units: float, growth: int
) -> tuple[KernelOperator, np.ndarray, nn.Module, int]:
    """A one-sample-chunk operator (7 samples) with a kept-memory budget of ``units`` samples'
    outputs (the unit, returned), whose resident memory grows by ``growth`` units a read."""
    op, kernel, model = _operator(name, reduction, keep_bytes=0, chunk=1)
    unit = op.problem.rows_per_sample * op.problem.itemsize
    reads = itertools.count(0, growth * unit)
    monkeypatch.setattr("entk_fast.ntk.operator._resident_bytes", lambda trim=False: next(reads))
    op.keep_bytes, op._keeping = int(units * unit), True
    return op, kernel, model, unit


def _assert_products_exact(op: KernelOperator, kernel: np.ndarray, model: nn.Module) -> None:
    block = np.random.default_rng(3).standard_normal((kernel.shape[0], 3))
    with evaluation_mode(model):
        first = op.matmat(block)
        again = op.matmat(block[:, ::-1])
    atol = 1e-10 * abs(kernel).max()
    np.testing.assert_allclose(first, kernel @ block, rtol=1e-10, atol=atol)
    np.testing.assert_allclose(again, kernel @ block[:, ::-1], rtol=1e-10, atol=atol)


def test_some_chunks_kept_when_only_some_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # resident memory that never grows: each sample then counts as its outputs' bytes, and a
    # budget of 3.5 samples keeps the first chunk (always) and the next two one-sample chunks
    op, kernel, model, unit = _budgeted(monkeypatch, "attention", "flattened", 3.5, growth=0)
    _assert_products_exact(op, kernel, model)
    assert op.kept_chunks == 3 and op.kept_transposes == 0 and op.kept_bytes == 3 * unit


def test_forward_graphs_kept_without_transposes_when_only_they_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # as above: 7.5 samples' outputs keep the 7 one-sample forward graphs, and no transpose
    # (about twice a forward graph), so each product rebuilds M from the kept forward
    op, kernel, model, unit = _budgeted(monkeypatch, "tokens", "flattened", 7.5, growth=0)
    _assert_products_exact(op, kernel, model)
    assert op.kept_chunks == 7 and op.kept_transposes == 0 and op.kept_bytes == 7 * unit


def test_transposes_kept_while_they_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # resident memory growing by a step of 4 units a graph: the 7 forward graphs take 7 steps;
    # the transposes are estimated at twice that for the first, then the measured step each,
    # so 10.5 steps keep three of them
    op, kernel, model, unit = _budgeted(monkeypatch, "mlp", "trace", 10.5 * 4, growth=4)
    _assert_products_exact(op, kernel, model)
    assert op.kept_chunks == 7 and op.kept_transposes == 3 and op.kept_bytes == 40 * unit


class _OnceDifferentiableSquare(torch.autograd.Function):
    """x² with a backward that cannot itself be differentiated."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return torch.ops.aten.mul.Tensor(grad.detach(), 2 * x.detach())

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return 2 * ctx.saved_tensors[0] * tangent

    @staticmethod
    def vmap(info, in_dims, x):  # type: ignore[no-untyped-def]
        return _OnceDifferentiableSquare.apply(x), in_dims[0]


class _SquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6).double()
        self.last = nn.Linear(6, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(_OnceDifferentiableSquare.apply(self.first(x)))


def test_op_without_second_derivative_falls_back_to_vjp_and_jvp() -> None:
    torch.manual_seed(0)
    model = _SquareNet()
    x = torch.randn(9, 4, dtype=torch.float64)
    kernel = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    values = np.linalg.eigvalsh(kernel)[::-1][:3]
    spec = entk_topk(model, x, 3, progress=False)
    assert spec.info["kept_chunks"] == 0
    np.testing.assert_allclose(spec.eigenvalues, values, rtol=1e-8)


def test_topk_reports_kept_graphs() -> None:
    model, inputs = make_case("mlp", n=10)
    kernel = reference_kernel(reference_jacobian(model, inputs), "flattened")
    # structured=False: the MLP's Linear layers would take factored products (no graphs)
    spec = entk_topk(model, inputs, 3, structured=False, progress=False)
    np.testing.assert_allclose(spec.eigenvalues, np.linalg.eigvalsh(kernel)[::-1][:3], rtol=1e-8)
    assert spec.info["factored_layers"] == []
    assert spec.info["kept_chunks"] == spec.info["chunks"] >= 1
    assert spec.info["kept_bytes"] >= 0


def test_float32_problem_runs_a_float64_solver_to_float32_tolerance() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    x = torch.randn(40, 6)
    kernel = reference_kernel(reference_jacobian(model.double(), (x.double(),)), "flattened")
    values = np.linalg.eigvalsh(kernel)[::-1][:6]
    spec = entk_topk(model.float(), x, 6, progress=False)
    assert spec.eigenvalues.dtype == np.float32 and spec.eigenvectors.dtype == np.float32
    assert spec.info["converged"] and spec.info["tol"] == pytest.approx(1e-4)
    assert spec.info["max_residual"] <= 1e-4
    # |θ − λ| ≤ ‖r‖ ≤ tol · λ₁ (Weyl), with float32 round-off in the products
    np.testing.assert_allclose(spec.eigenvalues, values, rtol=0, atol=2e-4 * values[0])
