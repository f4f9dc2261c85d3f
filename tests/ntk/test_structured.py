"""The structured Linear/Embedding path: equals the general path, and falls back on reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ntk_reference import (
    MLP,
    TokenMLP,
    make_case,
    reference_jacobian,
    reference_kernel,
    relative_error,
)
from torch import nn

from entk_fast import empirical_ntk

TOL = 1e-10


def _both(model: nn.Module, inputs: object, **kwargs: object) -> tuple:
    fast = empirical_ntk(model, inputs, progress=False, layerwise=True, **kwargs)
    slow = empirical_ntk(model, inputs, progress=False, layerwise=True, structured=False, **kwargs)
    assert relative_error(fast.kernel, slow.kernel) < TOL
    for key in slow.layer_kernels:
        assert relative_error(fast.layer_kernels[key], slow.layer_kernels[key]) < TOL
    return fast, slow


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 6),
    d_in=st.integers(1, 5),
    widths=st.lists(st.integers(1, 6), min_size=0, max_size=2),
    d_out=st.integers(1, 4),
    reduction=st.sampled_from(["flattened", "trace", "mean_pairs"]),
    seed=st.integers(0, 2**16),
)
def test_structured_equals_general_random_mlps(
    n: int, d_in: int, widths: list[int], d_out: int, reduction: str, seed: int
) -> None:
    torch.manual_seed(seed)
    model = MLP(d_in, widths, d_out).double().eval()
    x = torch.randn(n, d_in, dtype=torch.float64)
    fast, _ = _both(model, x, reduction=reduction)
    assert set(fast.paths.values()) == {"structured"}


class TiedAutoencoder(nn.Module):
    """Decoder reuses the encoder's weight as ``enc.weight.T``: not a single use."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 3)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(x))
        return self.head(h @ self.enc.weight)


class TwiceApplied(nn.Module):
    """The same Linear runs twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class SharedParameter(nn.Module):
    """Two Linear modules holding the same Parameter (tied embeddings style)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4, bias=False)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.sin(self.first(x)))


class Sequence(nn.Module):
    """An Embedding and a narrow Linear applied at every position of a sequence (T = 3): the
    embedding takes the structured sequence path, the 3→3 Linear is cheaper on the general
    path (6 position pairs × (3 + 3) > 3 · 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.mix = nn.Linear(3, 3)
        self.out = nn.Linear(9, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.emb(tokens))).flatten(1))


class BatchCentred(nn.Module):
    """Samples interact inside a batch (centring over dim 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.out(torch.tanh(h - h.mean(dim=0, keepdim=True) + 0.3))


def _reference_check(model: nn.Module, inputs: tuple, reduction: str = "flattened") -> dict:
    result = empirical_ntk(model, inputs, reduction=reduction, progress=False)
    expected = reference_kernel(reference_jacobian(model, inputs), reduction)
    assert relative_error(result.kernel, expected) < TOL
    return result.paths


def test_weight_used_outside_its_layer_falls_back() -> None:
    torch.manual_seed(0)
    model = TiedAutoencoder().double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    paths = _reference_check(model, (x,))
    assert paths["enc.weight"] == "general"
    assert paths["enc.bias"] == "structured"  # the bias is used once
    assert paths["head.weight"] == "structured"
    _both(model, x)


def test_layer_called_twice_falls_back() -> None:
    torch.manual_seed(1)
    model = TwiceApplied().double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    paths = _reference_check(model, (x,))
    assert paths["fc.weight"] == paths["fc.bias"] == "general"
    assert paths["out.weight"] == "structured"


def test_shared_parameter_falls_back() -> None:
    torch.manual_seed(2)
    model = SharedParameter().double().eval()
    x = torch.randn(4, 4, dtype=torch.float64)
    paths = _reference_check(model, (x,))
    assert paths["first.weight"] == "general"
    assert paths["second.bias"] == "structured"
    assert "second.weight" not in paths  # an alias of first.weight


def test_tms_tied_weight_uses_general_path() -> None:
    model, inputs = make_case("tms")
    paths = _reference_check(model, inputs)
    assert set(paths.values()) == {"general"}


def test_sequence_layers_take_the_path_their_cost_picks() -> None:
    torch.manual_seed(3)
    model = Sequence().double().eval()
    tokens = torch.randint(0, 5, (4, 3))
    for reduction in ("flattened", "trace", "mean_pairs"):
        paths = _reference_check(model, (tokens,), reduction)
        assert paths["emb.weight"] == "structured"
        assert paths["mix.weight"] == paths["mix.bias"] == "general"
        assert paths["out.weight"] == "structured"


def test_batch_interaction_disables_structured_and_uses_per_sample_function() -> None:
    torch.manual_seed(4)
    model = BatchCentred().double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    paths = _reference_check(model, (x,))  # the reference runs each sample alone
    assert set(paths.values()) == {"general"}


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_structured(padding_idx: int | None) -> None:
    torch.manual_seed(5)
    model = TokenMLP(padding_idx=padding_idx).double().eval()
    tokens = torch.tensor([0, 2, 2, 5, 0, 6])
    for reduction in ("flattened", "trace", "mean_pairs"):
        paths = _reference_check(model, (tokens,), reduction)
    assert paths["emb.weight"] == "structured"
    _both(model, tokens)


def test_frozen_weight_trainable_bias() -> None:
    torch.manual_seed(6)
    model = MLP(3, (4,), 2).double().eval()
    model.layers[0].weight.requires_grad_(False)
    x = torch.randn(5, 3, dtype=torch.float64)
    paths = _reference_check(model, (x,))
    assert "layers.0.weight" not in paths
    assert paths["layers.0.bias"] == "structured"


def test_weight_and_bias_in_different_groups() -> None:
    model, inputs = make_case("mlp")
    groups = {
        "weights": ["layers.0.weight", "layers.1.weight", "layers.2.weight"],
        "biases": ["layers.0.bias", "layers.1.bias", "layers.2.bias"],
    }
    fast, _ = _both(model, inputs, groups=groups, reduction="trace")
    jac = reference_jacobian(model, inputs)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    starts = np.cumsum([0, *sizes[:-1]])
    for key, members in groups.items():
        cols = np.concatenate(
            [
                np.arange(starts[names.index(m)], starts[names.index(m)] + sizes[names.index(m)])
                for m in members
            ]
        )
        expected = reference_kernel(jac[:, :, cols], "trace")
        assert relative_error(fast.layer_kernels[key], expected) < TOL


def test_modadd_mlp_is_fully_structured() -> None:
    model, inputs = make_case("modadd", n=9)
    paths = _reference_check(model, inputs, "trace")
    assert set(paths.values()) == {"structured"}


def test_structured_float32_close_to_general() -> None:
    torch.manual_seed(7)
    model = MLP(6, (16, 16), 5).eval()
    x = torch.randn(12, 6)
    fast = empirical_ntk(model, x, progress=False)
    slow = empirical_ntk(model, x, progress=False, structured=False)
    assert fast.kernel.dtype == np.float32
    assert relative_error(fast.kernel, slow.kernel) < 1e-5
