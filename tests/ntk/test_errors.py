"""Bad input gives a clear error (type and message), before any expensive work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import MLP, make_case, relative_error
from torch import nn

from entk_fast import (
    InvalidArgumentError,
    InvalidTypeError,
    MemoryBudgetError,
    empirical_ntk,
    entk_spectrum,
    entk_topk,
)


@pytest.fixture
def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MLP(4, (5,), 3).double().eval(), torch.randn(6, 4, dtype=torch.float64)


def test_model_must_be_a_module(mlp: tuple) -> None:
    _, x = mlp
    with pytest.raises(InvalidTypeError, match="torch.nn.Module"):
        empirical_ntk(lambda t: t, x)
    with pytest.raises(InvalidTypeError, match="torch.nn.Module"):
        entk_topk("model", x, 2)


@pytest.mark.parametrize("bad", ["text", {"x": 1}, 3.0, None])
def test_inputs_of_wrong_type(mlp: tuple, bad: object) -> None:
    model, _ = mlp
    with pytest.raises(InvalidTypeError, match="inputs"):
        empirical_ntk(model, bad)


def test_inputs_element_of_wrong_type(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidTypeError, match=r"inputs\[1\]"):
        empirical_ntk(model, (x, "z"))
    with pytest.raises(InvalidTypeError, match="complex"):
        empirical_ntk(model, x.to(torch.complex128))


def test_inputs_of_wrong_shape(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match=r"forward failed.*per-sample shapes \(7,\)"):
        empirical_ntk(model, torch.randn(6, 7, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="0-d"):
        empirical_ntk(model, torch.tensor(1.0))
    two, (a, b) = make_case("two_inputs")
    with pytest.raises(InvalidArgumentError, match="share the sample dimension"):
        empirical_ntk(two, (a, b[:3]))


def test_empty_inputs(mlp: tuple) -> None:
    model, _ = mlp
    with pytest.raises(InvalidArgumentError, match="empty"):
        empirical_ntk(model, torch.zeros(0, 4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="empty"):
        empirical_ntk(model, ())


def test_nan_in_inputs(mlp: tuple) -> None:
    model, x = mlp
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(InvalidArgumentError, match="NaN.*sample 3"):
        empirical_ntk(model, x)
    x[3, 1] = float("inf")
    with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
        entk_topk(model, x, 2)


def test_nan_in_parameters(mlp: tuple) -> None:
    model, x = mlp
    with torch.no_grad():
        model.layers[1].bias[0] = float("nan")
    with pytest.raises(InvalidArgumentError, match="layers.1.bias"):
        empirical_ntk(model, x)


def test_unknown_reduction(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match="unknown reduction 'diag'.*flattened"):
        empirical_ntk(model, x, reduction="diag")
    with pytest.raises(InvalidTypeError, match="reduction"):
        empirical_ntk(model, x, reduction=1)


def test_metric_of_wrong_size(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match=r"shape \(3,\)"):
        empirical_ntk(model, x, output_metric=np.ones(4))
    with pytest.raises(InvalidArgumentError, match=r"\(3, 3\)"):
        empirical_ntk(model, x, output_metric=np.eye(2))
    with pytest.raises(InvalidTypeError, match="output_metric"):
        empirical_ntk(model, x, output_metric=np.array(["a", "b", "c"]))


def test_metric_not_psd(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match="positive semi-definite"):
        empirical_ntk(model, x, output_metric=np.diag([1.0, -1.0, 1.0]) + 0.1)
    with pytest.raises(InvalidArgumentError, match="≥ 0"):
        empirical_ntk(model, x, output_metric=np.array([1.0, -0.5, 1.0]))
    with pytest.raises(InvalidArgumentError, match="symmetric"):
        empirical_ntk(model, x, output_metric=np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        empirical_ntk(model, x, output_metric=np.array([1.0, np.nan, 1.0]))


def test_unknown_group_names(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match="'fc9'.*neither a parameter name"):
        empirical_ntk(model, x, layerwise=True, groups={"a": ["fc9"]})
    with pytest.raises(InvalidArgumentError, match="in no group"):
        empirical_ntk(model, x, layerwise=True, groups={"a": ["layers.0"]})
    with pytest.raises(InvalidArgumentError, match="two groups"):
        empirical_ntk(
            model, x, layerwise=True, groups={"a": ["layers.0", "layers.1"], "b": ["layers.1.bias"]}
        )
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        empirical_ntk(model, x, params=["nope"])
    with pytest.raises(InvalidArgumentError, match=r"did you mean 'layers\.0\.weight'"):
        empirical_ntk(model, x, params=["layers.0.weigth"])
    with pytest.raises(InvalidArgumentError, match="'layers.*.bias_x'"):
        empirical_ntk(model, x, params=["layers.*.bias_x"])


def test_params_take_glob_patterns(mlp: tuple) -> None:
    model, x = mlp
    by_glob = empirical_ntk(model, x, params="layers.*.weight")
    by_name = empirical_ntk(
        model, x, params=[n for n, _ in model.named_parameters() if n.endswith(".weight")]
    )
    np.testing.assert_array_equal(by_glob.kernel, by_name.kernel)
    assert by_glob.n_parameters == by_name.n_parameters
    with pytest.raises(InvalidTypeError, match="groups"):
        empirical_ntk(model, x, layerwise=True, groups=["layers.0"])


def test_groups_with_params_restriction(mlp: tuple) -> None:
    model, x = mlp
    result = empirical_ntk(
        model,
        x,
        layerwise=True,
        params=["layers.1"],
        groups={"w": ["layers.1.weight"], "b": ["layers.1.bias"]},
    )
    assert set(result.layer_kernels) == {"w", "b"}
    whole = empirical_ntk(model, x, layerwise=True)
    assert relative_error(result.kernel, whole.layer_kernels["layers.1"]) < 1e-12


def test_frozen_parameters_cannot_be_selected(mlp: tuple) -> None:
    model, x = mlp
    model.layers[0].weight.requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="requires_grad=False"):
        empirical_ntk(model, x, params=["layers.0.weight"])
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="no trainable parameters"):
        empirical_ntk(model, x)


def test_budget_too_small(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(MemoryBudgetError, match="max_memory = 100 B is too small"):
        empirical_ntk(model, x, max_memory=100, structured=False)
    with pytest.raises(MemoryBudgetError, match="too small"):
        entk_topk(model, x, 2, max_memory="1kB")
    with pytest.raises(InvalidArgumentError, match="max_memory"):
        empirical_ntk(model, x, max_memory="lots")
    with pytest.raises(InvalidArgumentError, match="positive"):
        empirical_ntk(model, x, max_memory=-5)


class Broadcast(nn.Module):
    """A tiny model with a huge output: C = 10⁶."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).expand(-1, 1_000_000)


def test_kernel_that_cannot_fit() -> None:
    model = Broadcast().double()
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match=r"3000000×3000000.*needs 72 TB.*entk_topk"):
        empirical_ntk(model, x)
    with pytest.raises(MemoryBudgetError, match="3000000×3000000"):
        entk_spectrum(model, x, method="dense")
    with pytest.raises(MemoryBudgetError, match="default working memory"):
        entk_spectrum(model, x)  # the dual Gram is 3×3, but one sample's Jacobian is huge


def test_output_must_be_a_tensor() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.fc(x), x

    with pytest.raises(InvalidArgumentError, match="single tensor"):
        empirical_ntk(Pair(), torch.randn(3, 2))


def test_bad_dtype_and_k(mlp: tuple) -> None:
    model, x = mlp
    with pytest.raises(InvalidArgumentError, match="float32 or float64"):
        empirical_ntk(model, x, dtype=torch.float16)
    with pytest.raises(InvalidTypeError, match="dtype"):
        empirical_ntk(model, x, dtype=3)
    with pytest.raises(InvalidArgumentError, match=r"k must be in \[1, 18\]"):
        entk_topk(model, x, 0)
    with pytest.raises(InvalidArgumentError, match="smaller than"):
        entk_topk(model, x, 18)
    with pytest.raises(InvalidTypeError, match="k must be an integer"):
        entk_spectrum(model, x, 2.5)
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        entk_spectrum(model, x, method="svd")
    with pytest.raises(InvalidArgumentError, match="ridge"):
        entk_spectrum(model, x, 2, method="matrix_free", ridge=1e-8)


def test_reshape_helpers_reject_reduced_kernels(mlp: tuple) -> None:
    model, x = mlp
    result = empirical_ntk(model, x, reduction="trace")
    with pytest.raises(InvalidArgumentError, match="only a flattened kernel"):
        result.unflatten(np.zeros(6))
    flat = empirical_ntk(model, x)
    with pytest.raises(InvalidArgumentError, match="18"):
        flat.unflatten(np.zeros(17))


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.tanh(self.norm(self.fc(x)))))


def test_train_mode_batchnorm_warns_and_uses_eval_mode() -> None:
    torch.manual_seed(0)
    model = Normed().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    model.train()
    with pytest.warns(UserWarning, match="BatchNorm1d, Dropout.*eval mode"):
        in_train = empirical_ntk(model, x)
    assert model.training and model.norm.training  # modes restored
    model.eval()
    in_eval = empirical_ntk(model, x)
    np.testing.assert_array_equal(in_train.kernel, in_eval.kernel)
    assert not model.training


@pytest.mark.parametrize("flag", ["layerwise", "structured"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_flags_must_be_true_or_false(flag: str, value: object) -> None:
    """A flag given as a string or a number is refused by name, not read by its truth value."""
    model = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidTypeError, match=f"{flag} must be True or False"):
        empirical_ntk(model, torch.randn(4, 3), progress=False, **{flag: value})
    if flag == "structured":
        with pytest.raises(InvalidTypeError, match="structured must be True or False"):
            entk_topk(model, torch.randn(4, 3), 2, progress=False, structured=value)
