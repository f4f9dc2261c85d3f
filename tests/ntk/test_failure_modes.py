"""The eNTK engine, second round: a backward that is not the forward's derivative is refused on
every path, recurrent layers fall back to per-sample autograd, weight-normalised layers get
top-k eigenpairs without forward mode, the user's buffers are never changed, and tensors the
engine cannot read are named.

Numbers are compared with the brute-force per-sample autograd kernel (tests/ntk_reference.py)
or with the dense path; refusals with the package's own exception and the argument's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from ntk_reference import Routed, reference_jacobian, reference_kernel, relative_error
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import entk_fast as ef
from entk_fast.errors import EntkError, InvalidArgumentError, InvalidTypeError
from entk_fast.ntk.operator import KernelOperator
from entk_fast.ntk.problem import evaluation_mode, prepare

PATHS: dict[str, Callable[..., Any]] = {
    "dense": lambda m, x, **kw: ef.empirical_ntk(m, x, progress=False, **kw),
    "general": lambda m, x, **kw: ef.empirical_ntk(m, x, structured=False, progress=False, **kw),
    "dual": lambda m, x, **kw: ef.entk_spectrum(m, x, method="dual", progress=False, **kw),
    "topk": lambda m, x, **kw: ef.entk_topk(m, x, 3, progress=False, **kw),
    "topk_general": lambda m, x, **kw: ef.entk_topk(
        m, x, 3, structured=False, progress=False, **kw
    ),
}

# --- W1: a backward that is not the forward's derivative -------------------------------------


class HookedMLP(nn.Module):
    """fc2(tanh(a · fc1(x))) whose forward doubles the gradient reaching a · fc1(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.a = nn.Parameter(torch.linspace(0.5, 1.5, 5))
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a * self.fc1(x)
        if h.requires_grad:
            h.register_hook(lambda g: 2 * g)
        return self.fc2(torch.tanh(h))


class StraightThrough(torch.autograd.Function):
    """round(x) forward, identity backward (a straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(tangent)


class Quantised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(StraightThrough.apply(4 * self.fc1(x)))


class Tokens(nn.Module):
    """Three token ids a sample -> embedding -> Linear."""

    def __init__(self, scale_grad_by_freq: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 3, scale_grad_by_freq=scale_grad_by_freq)
        self.out = nn.Linear(9, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(tokens).flatten(1)))


def hooked_case() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return HookedMLP().double(), torch.randn(20, 3, dtype=torch.float64)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("params", [None, ["a"]])
def test_a_gradient_hook_is_refused_on_every_path(path: str, params: list[str] | None) -> None:
    model, x = hooked_case()
    with pytest.raises(InvalidArgumentError, match="backward is not the derivative"):
        PATHS[path](model, x, params=params)


def test_the_hook_outside_the_selected_parameters_leaves_their_kernel_exact() -> None:
    # fc2 sits after the hooked tensor: its gradient never passes the hook
    model, x = hooked_case()
    got = ef.empirical_ntk(model, x, params="fc2", progress=False).kernel
    want = reference_kernel(
        reference_jacobian(model, (x,), ["fc2.weight", "fc2.bias"]), "flattened"
    )
    assert relative_error(got, want) < 1e-12


def test_a_straight_through_estimator_is_refused() -> None:
    torch.manual_seed(0)
    model, x = Quantised().double(), torch.randn(12, 3, dtype=torch.float64)
    for path in ("general", "topk"):
        with pytest.raises(InvalidArgumentError, match="backward is not the derivative"):
            PATHS[path](model, x)


@pytest.mark.parametrize("path", ["dense", "general", "topk"])
def test_embedding_scale_grad_by_freq_is_refused_and_named(path: str) -> None:
    torch.manual_seed(0)
    model = Tokens(scale_grad_by_freq=True).double()
    tokens = torch.randint(0, 6, (10, 3))
    with pytest.raises(InvalidArgumentError, match=r"Embedding 'emb' has scale_grad_by_freq"):
        PATHS[path](model, tokens)


def test_scale_grad_by_freq_is_harmless_when_its_weight_is_not_selected() -> None:
    torch.manual_seed(0)
    model = Tokens(scale_grad_by_freq=True).double()
    tokens = torch.randint(0, 6, (10, 3))
    tokens[:, 1] = tokens[:, 0]  # repeated tokens in every sample
    got = ef.empirical_ntk(model, tokens, params="out", progress=False).kernel
    want = reference_kernel(
        reference_jacobian(model, (tokens,), ["out.weight", "out.bias"]), "flattened"
    )
    assert relative_error(got, want) < 1e-12


def test_embedding_max_norm_is_refused_before_it_changes_the_weight() -> None:
    torch.manual_seed(0)
    model = Tokens(scale_grad_by_freq=False).double()
    model.emb.max_norm = 0.1
    before = model.emb.weight.detach().clone()
    with pytest.raises(InvalidArgumentError, match=r"Embedding 'emb' has max_norm=0.1"):
        ef.empirical_ntk(model, torch.randint(0, 6, (10, 3)), progress=False)
    assert torch.equal(model.emb.weight.detach(), before)


def test_models_whose_backward_is_the_derivative_pass_the_check() -> None:
    # detach (respected by both modes), a custom Function with a matching jvp, GELU, ReLU
    class Fine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(3, 6)
            self.fc2 = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc1(x))
            h = h / h.norm(dim=-1, keepdim=True).detach().clamp_min(1.0)
            return self.fc2(nn.functional.gelu(h))

    torch.manual_seed(0)
    model = Fine().float()
    x = torch.randn(30, 3)
    got = ef.empirical_ntk(model, x, progress=False).kernel
    want = reference_kernel(reference_jacobian(model.double(), (x.double(),)), "flattened")
    assert relative_error(got, want) < 1e-5


# --- C1: recurrent layers in float64 take per-sample autograd --------------------------------


class Recurrent(nn.Module):
    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cls(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN, nn.LSTM])
def test_recurrent_layers_in_float64_equal_the_reference(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = Recurrent(cls).double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    jac = reference_jacobian(model, (x,))
    for reduction in ("flattened", "trace", "mean_pairs"):
        with pytest.warns(UserWarning, match="per-sample autograd"):
            got = ef.empirical_ntk(model, x, reduction=reduction, progress=False).kernel
        assert relative_error(got, reference_kernel(jac, reduction)) < 1e-12


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
def test_recurrent_layers_top_k_equal_the_reference(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = Recurrent(cls).double()
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    want = np.linalg.eigvalsh(reference_kernel(reference_jacobian(model, (x,)), "flattened"))
    with pytest.warns(UserWarning, match="per-sample autograd"):
        got = ef.entk_topk(model, x, 3, progress=False).eigenvalues
    np.testing.assert_allclose(got, want[::-1][:3], rtol=1e-8)


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_top_k_of_a_forward_vmap_cannot_run_equals_the_reference(reduction: str) -> None:
    torch.manual_seed(3)
    model = Routed().double()
    x = torch.randn(12, 4, dtype=torch.float64)
    want = np.linalg.eigvalsh(reference_kernel(reference_jacobian(model, (x,)), reduction))
    with pytest.warns(UserWarning, match="per-sample autograd"):
        top = ef.entk_topk(model, x, 3, reduction=reduction, progress=False)
    np.testing.assert_allclose(top.eigenvalues, want[::-1][:3], rtol=1e-8)


# --- C2: weight normalisation (no forward-mode derivative) ------------------------------------


def weight_normed() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(3, 6)), nn.Tanh(), nn.Linear(6, 2)).double()
    return model, torch.randn(30, 3, dtype=torch.float64)


def test_weight_norm_top_k_equals_the_dense_eigenvalues() -> None:
    model, x = weight_normed()
    dense = ef.empirical_ntk(model, x, progress=False).kernel
    want = np.linalg.eigvalsh(reference_kernel(reference_jacobian(model, (x,)), "flattened"))
    assert (
        relative_error(dense, reference_kernel(reference_jacobian(model, (x,)), "flattened"))
        < 1e-12
    )
    top = ef.entk_topk(model, x, 4, progress=False)
    np.testing.assert_allclose(top.eigenvalues, want[::-1][:4], rtol=1e-8)
    # eigenvectors: K u = λ u with the dense kernel
    residual = dense @ top.eigenvectors - top.eigenvectors * top.eigenvalues
    assert float(np.abs(residual).max()) < 1e-7 * float(want[-1])


@pytest.mark.parametrize("keep_bytes", [0, 10**9])
def test_weight_norm_products_with_and_without_kept_graphs(keep_bytes: int) -> None:
    model, x = weight_normed()
    dense = ef.empirical_ntk(model, x, progress=False).kernel
    with evaluation_mode(model):
        problem = prepare(model, x)
        op = KernelOperator(problem, chunk=7, columns=2, keep_bytes=keep_bytes)
        v = np.random.default_rng(0).standard_normal((problem.kernel_size, 3))
        got = op.matmat(v)
    assert relative_error(got, dense @ v) < 1e-10


# --- C3: a forward that updates a buffer ------------------------------------------------------


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return self.fc(x)


class RunningMean(nn.Module):
    """A BatchNorm-like running mean, updated in every forward (also in eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("running_mean", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.running_mean.mul_(0.9).add_(0.1 * x.mean(0))
        return self.fc(x - self.running_mean)


@pytest.mark.parametrize("cls", [Counting, RunningMean])
@pytest.mark.parametrize("path", ["dense", "general", "topk"])
def test_a_forward_that_updates_a_buffer_is_refused_and_the_buffer_is_unchanged(
    cls: type[nn.Module], path: str
) -> None:
    torch.manual_seed(0)
    model = cls().double()
    before = {name: b.clone() for name, b in model.named_buffers()}
    x = torch.randn(12, 3, dtype=torch.float64)
    (name,) = before
    with pytest.raises(InvalidArgumentError, match=f"updates buffer '{name}' in place"):
        PATHS[path](model, x)
    for key, value in model.named_buffers():
        assert torch.equal(value, before[key])


def test_the_engine_runs_on_copies_of_the_buffers() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().eval()
    with evaluation_mode(model):
        problem = prepare(model, torch.randn(5, 3, dtype=torch.float64))
    for name, buffer in model.named_buffers():
        assert problem.buffers[name].data_ptr() != buffer.data_ptr()
        assert torch.equal(problem.buffers[name], buffer)


# --- tensors the engine cannot read --------------------------------------------------------


def test_a_complex_parameter_is_named() -> None:
    model = nn.Linear(3, 2)
    model.weight = nn.Parameter(model.weight.detach().to(torch.complex64))
    with pytest.raises(InvalidTypeError, match=r"parameter 'weight' is complex"):
        ef.empirical_ntk(model, torch.randn(4, 3), progress=False)


def test_a_frozen_complex_parameter_outside_the_kernel_is_no_error() -> None:
    class Filter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.phase = nn.Parameter(torch.ones(3, dtype=torch.complex128), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x * self.phase.real)

    torch.manual_seed(0)
    model = Filter().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    got = ef.empirical_ntk(model, x, progress=False).kernel
    want = reference_kernel(reference_jacobian(model, (x,), ["fc.weight", "fc.bias"]), "flattened")
    assert relative_error(got, want) < 1e-12


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: torch.randn(4, 3).to_sparse(), InvalidTypeError, r"inputs is a torch.sparse_coo"),
        (lambda: torch.randn(4, 3, device="meta"), InvalidArgumentError, r"inputs is on the meta"),
        (
            lambda: (torch.randn(4, 3), torch.randn(4, 3, device="meta")),
            InvalidArgumentError,
            r"inputs\[1\] is on the meta",
        ),
    ],
)
def test_sparse_and_meta_inputs_are_named(
    make: Callable[[], Any], error: type[EntkError], match: str
) -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(x if y is None else x + y)

    with pytest.raises(error, match=match):
        ef.empirical_ntk(Two(), make(), progress=False)


def test_sparse_x2_and_a_meta_model_are_named() -> None:
    with pytest.raises(InvalidTypeError, match=r"x2 is a torch.sparse_coo"):
        ef.empirical_ntk(nn.Linear(3, 2), torch.randn(4, 3), torch.randn(2, 3).to_sparse())
    with pytest.raises(InvalidArgumentError, match=r"parameter 'weight' is on the meta device"):
        ef.empirical_ntk(nn.Linear(3, 2, device="meta"), torch.randn(4, 3), progress=False)
    with pytest.raises(InvalidArgumentError, match=r"parameter 'weight' is on the meta device"):
        ef.entk_topk(nn.Linear(3, 2, device="meta"), torch.randn(4, 3), 2, progress=False)


def test_an_embedding_padding_row_is_no_backward_defect() -> None:
    # padding_idx: the backward leaves that row out by design (the reference's convention)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 3, padding_idx=2), nn.Flatten(), nn.Linear(6, 2))
    model = model.double()
    tokens = torch.tensor([[0, 2], [2, 2], [5, 1], [3, 2], [4, 0]])
    want = reference_kernel(reference_jacobian(model, (tokens,)), "trace")
    for structured in (True, False):
        got = ef.empirical_ntk(
            model, tokens, reduction="trace", structured=structured, progress=False
        ).kernel
        assert relative_error(got, want) < 1e-12
    top = ef.entk_topk(model, tokens, 2, reduction="trace", progress=False).eigenvalues
    np.testing.assert_allclose(top, np.linalg.eigvalsh(want)[::-1][:2], rtol=1e-8)
