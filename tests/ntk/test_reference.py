"""The engine against an independent brute-force reference (float64, 1e-10 relative).

Every architecture × every reduction × no metric / weight vector / PSD matrix, with layer
kernels that must sum to the kernel; on the general path and, where it applies, the
structured one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import make_case, reference_jacobian, reference_kernel, relative_error

from entk_fast import empirical_ntk

CASES = ["mlp", "tms", "modadd", "tokens", "bag", "conv", "two_inputs", "attention"]
REDUCTIONS = ["flattened", "trace", "mean_pairs"]
TOL = 1e-10


def _metric(kind: str, c: int) -> np.ndarray | None:
    rng = np.random.default_rng(c)
    if kind == "none":
        return None
    if kind == "vector":
        w = rng.uniform(0.1, 2.0, c)
        w[0] = 0.0  # a zero weight is allowed (PSD)
        return w
    a = rng.standard_normal((c, c))
    if kind == "singular":  # rank-deficient PSD: its square root is ill-conditioned
        a[:, -1] = 0.0
        return a @ a.T
    return a @ a.T + 0.5 * np.eye(c)


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> tuple:
    model, inputs = make_case(request.param)
    jac = reference_jacobian(model, inputs)
    return request.param, model, inputs, jac


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("metric_kind", ["none", "vector", "matrix"])
def test_matches_reference(case: tuple, reduction: str, metric_kind: str) -> None:
    name, model, inputs, jac = case
    metric = _metric(metric_kind, jac.shape[1])
    expected = reference_kernel(jac, reduction, metric)
    result = empirical_ntk(
        model, inputs, reduction=reduction, output_metric=metric, layerwise=True, progress=False
    )
    assert result.kernel.dtype == np.float64
    assert result.kernel.shape == expected.shape
    assert relative_error(result.kernel, expected) < TOL
    _check_layers(result, model, jac, reduction, metric, TOL)


def _check_layers(result, model, jac, reduction, metric, tol) -> None:  # type: ignore[no-untyped-def]
    total = sum(result.layer_kernels.values())
    assert relative_error(total, result.kernel) < tol
    # Each layer kernel against the reference restricted to the group's columns.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for n, p in model.named_parameters() if p.requires_grad]
    offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]]), strict=True))
    numel = dict(zip(names, sizes, strict=True))
    for group, members in result.parameter_groups.items():
        cols = np.concatenate([np.arange(offsets[m], offsets[m] + numel[m]) for m in members])
        part = reference_kernel(jac[:, :, cols], reduction, metric)
        assert relative_error(result.layer_kernels[group], part) < tol * 10, group


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_singular_metric(case: tuple, reduction: str) -> None:
    """A rank-deficient S: S^½ is ill-conditioned, so two independent roots agree to ~1e-8."""
    _, model, inputs, jac = case
    metric = _metric("singular", jac.shape[1])
    expected = reference_kernel(jac, reduction, metric)
    result = empirical_ntk(
        model, inputs, reduction=reduction, output_metric=metric, layerwise=True, progress=False
    )
    assert relative_error(result.kernel, expected) < 1e-7
    _check_layers(result, model, jac, reduction, metric, 1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_general_path_matches_reference(case: tuple, reduction: str) -> None:
    _, model, inputs, jac = case
    result = empirical_ntk(model, inputs, reduction=reduction, structured=False, progress=False)
    assert set(result.paths.values()) == {"general"}
    assert relative_error(result.kernel, reference_kernel(jac, reduction)) < TOL


def test_default_groups_are_module_paths() -> None:
    model, inputs = make_case("mlp")
    result = empirical_ntk(model, inputs, layerwise=True, progress=False)
    assert list(result.parameter_groups) == ["layers.0", "layers.1", "layers.2"]
    assert result.parameter_groups["layers.0"] == ("layers.0.weight", "layers.0.bias")
    tms, x = make_case("tms")
    result = empirical_ntk(tms, x, layerwise=True, progress=False)
    assert list(result.parameter_groups) == ["W", "b"]


def test_frozen_parameters_are_excluded() -> None:
    model, inputs = make_case("two_inputs")
    result = empirical_ntk(model, inputs, progress=False)
    assert "offset" not in result.paths
    assert result.n_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result.n_outputs == 4  # (2, 2) outputs flattened


def test_float32_model_gives_float32_kernel() -> None:
    model, inputs = make_case("mlp")
    model = model.float()
    result = empirical_ntk(model, inputs[0].float(), progress=False)
    assert result.kernel.dtype == np.float32
    expected = reference_kernel(reference_jacobian(model.double(), inputs), "flattened")
    assert relative_error(result.kernel, expected) < 1e-5


def test_dtype_argument_upcasts() -> None:
    model, inputs = make_case("mlp")
    model32 = model.float()
    result = empirical_ntk(model32, inputs[0].float(), dtype=torch.float64, progress=False)
    assert result.kernel.dtype == np.float64
    assert next(model32.parameters()).dtype == torch.float32  # the model is untouched
    expected = reference_kernel(reference_jacobian(model32.double(), inputs), "flattened")
    assert relative_error(result.kernel, expected) < TOL
