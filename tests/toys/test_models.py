"""TMS and ModAddMLP: forward passes against hand-written formulas, structure, initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.toys import TMS, ModAddMLP


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def test_tms_forward_matches_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    model = TMS(7, 3, generator=gen)
    with torch.no_grad():
        model.b.copy_(torch.randn(7, generator=gen))
    x = torch.randn(64, 7, generator=gen)
    W, b, xs = _np(model.W), _np(model.b), _np(x)
    pre = xs @ W.T @ W + b
    expected = np.maximum(pre, 0.0)
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)
    assert (pre < 0).any() and (pre > 0).any()  # both sides of the ReLU were exercised


def test_tms_has_one_tied_weight_and_a_zero_bias() -> None:
    model = TMS(50, 10)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("W", (10, 50)),
        ("b", (50,)),
    ]
    assert torch.count_nonzero(model.b) == 0


def test_tms_init_is_xavier_normal() -> None:
    model = TMS(600, 400, generator=torch.Generator().manual_seed(0))
    w = _np(model.W).ravel()
    std = math.sqrt(2.0 / (600 + 400))
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    assert w.std() == pytest.approx(std, rel=0.01)


def test_init_depends_only_on_the_generator() -> None:
    torch.manual_seed(1)
    a = TMS(20, 5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    b = TMS(20, 5, generator=torch.Generator().manual_seed(3))
    c = TMS(20, 5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.W, b.W)
    assert not torch.equal(a.W, c.W)


def test_tms_feature_gram_and_reconstructed_count() -> None:
    model = TMS(4, 2)
    with torch.no_grad():
        model.W.copy_(torch.tensor([[1.0, 0.0, 0.6, 0.7], [0.0, 0.8, 0.6, 0.6]]))
    gram = model.feature_gram()
    np.testing.assert_allclose(_np(gram), _np(model.W).T @ _np(model.W), rtol=1e-6)
    # diagonal: 1.0, 0.64, 0.72, 0.85
    assert model.n_reconstructed() == 2
    assert model.n_reconstructed(threshold=0.7) == 3
    assert not gram.requires_grad


def test_modadd_forward_matches_formula() -> None:
    p, hidden = 5, 16
    model = ModAddMLP(p, hidden, generator=torch.Generator().manual_seed(0))
    x = torch.randn(11, 2 * p, generator=torch.Generator().manual_seed(1))
    W1, W2, xs = _np(model.W1.weight), _np(model.W2.weight), _np(x)
    expected = (1.0 / hidden) * ((W1 @ xs.T / math.sqrt(2 * p)) ** 2).T @ W2.T
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-7)


def test_modadd_layers_are_plain_bias_free_linears() -> None:
    model = ModAddMLP(29)
    assert isinstance(model.W1, nn.Linear) and isinstance(model.W2, nn.Linear)
    assert model.W1.bias is None and model.W2.bias is None
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("W1.weight", (512, 58)),
        ("W2.weight", (29, 512)),
    ]


def test_modadd_weights_are_standard_normal() -> None:
    model = ModAddMLP(29, generator=torch.Generator().manual_seed(0))
    for w in (_np(model.W1.weight).ravel(), _np(model.W2.weight).ravel()):
        assert abs(w.mean()) < 5 / math.sqrt(w.size)
        assert w.std() == pytest.approx(1.0, rel=0.03)


def test_modadd_jacobian_of_second_layer_is_closed_form() -> None:
    # d f_c / d W2[c', h] = delta(c, c') * phi_h / H, with phi = (W1 x / sqrt(2p))^2
    p, hidden = 3, 4
    model = ModAddMLP(p, hidden, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2 * p)
    x[1] = x[p + 2] = 1.0
    params = dict(model.named_parameters())

    def f(w2: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {**params, "W2.weight": w2}, (x,))

    jac = torch.func.jacrev(f)(params["W2.weight"])  # (p, p, H)
    phi = (_np(model.W1.weight) @ _np(x) / math.sqrt(2 * p)) ** 2
    expected = np.einsum("ab,h->abh", np.eye(p), phi / hidden)
    np.testing.assert_allclose(_np(jac), expected, rtol=1e-5, atol=1e-8)


def test_models_work_under_vmap() -> None:
    model = TMS(6, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(torch.func.vmap(model)(x), model(x))


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: TMS(0, 3), InvalidArgumentError, "n_features must be an integer >= 1"),
        (lambda: TMS(5, 0), InvalidArgumentError, "n_hidden must be an integer >= 1"),
        (lambda: TMS(5.0, 3), InvalidTypeError, "n_features must be an integer"),
        (lambda: ModAddMLP(1), InvalidArgumentError, "p must be an integer >= 2"),
        (lambda: ModAddMLP(7, hidden=0), InvalidArgumentError, "hidden must be an integer >= 1"),
    ],
)
def test_invalid_constructor_arguments(make, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        make()


def test_wrong_input_width_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(\.\.\., 10\)"):
        ModAddMLP(5)(torch.zeros(3, 7))
    with pytest.raises(InvalidArgumentError, match=r"x must have shape \(\.\.\., 8\)"):
        TMS(8, 2)(torch.zeros(3, 7))


def test_construction_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ModAddMLP(7, 8, generator=torch.Generator().manual_seed(0))
    TMS(7, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_sizes_are_refused_when_the_module_is_built() -> None:
    """Head counts that do not split d_model, zero widths and out-of-range labels fail at
    construction (or conversion) with the argument named, not later inside forward."""
    import pytest

    from entk_fast.errors import InvalidArgumentError
    from entk_fast.toys.modadd import modadd_onehot_targets
    from entk_fast.toys.transformer import MLP, CausalAttention

    with pytest.raises(InvalidArgumentError, match="multiple of n_heads=3"):
        CausalAttention(8, 3)
    with pytest.raises(InvalidArgumentError, match="n_heads must be an integer >= 1"):
        CausalAttention(8, 0)
    with pytest.raises(InvalidArgumentError, match="d_mlp must be an integer >= 1"):
        MLP(8, 0)
    with pytest.raises(InvalidArgumentError, match=r"labels must be in \[0, 5\)"):
        modadd_onehot_targets(torch.tensor([0, 5]), 5)
