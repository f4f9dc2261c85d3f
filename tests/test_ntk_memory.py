"""Memory planning: tight budgets tile and pack the work without changing the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import MLP, make_case, relative_error

from entk_fast import MemoryBudgetError, empirical_ntk, entk_spectrum, entk_topk
from entk_fast.ntk.budget import format_bytes, parse_memory, plan_general, plan_structured
from entk_fast.ntk.prepare import evaluation_mode, prepare
from entk_fast.ntk.structured import find_layers

BUDGETS = [int(1.25**i) for i in range(30, 80)]  # 800 B ... 50 MB


def _model() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MLP(5, (7, 6), 3).double().eval(), torch.randn(9, 5, dtype=torch.float64)


def _problem(model: torch.nn.Module, x: torch.Tensor, reduction: str):  # type: ignore[no-untyped-def]
    with evaluation_mode(model):
        return prepare(model, x, reduction=reduction)


def _first_budget(predicate) -> int:  # type: ignore[no-untyped-def]
    for budget in BUDGETS:
        try:
            if predicate(budget):
                return budget
        except MemoryBudgetError:
            continue
    raise AssertionError("no budget in range satisfies the predicate")


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_sample_tiles_give_the_same_kernel(reduction: str) -> None:
    model, x = _model()
    problem = _problem(model, x, reduction)
    names = problem.selected
    budget = _first_budget(
        lambda b: 2 <= min(p.tile for p in plan_general(problem, [(None, names)], b)) < 9
    )
    packs = plan_general(problem, [(None, names)], budget)
    assert any(p.tile < problem.n_samples for p in packs)
    tight = empirical_ntk(
        model, x, reduction=reduction, max_memory=budget, structured=False, layerwise=True
    )
    loose = empirical_ntk(model, x, reduction=reduction, layerwise=True)
    assert relative_error(tight.kernel, loose.kernel) < 1e-12
    for key in loose.layer_kernels:
        assert relative_error(tight.layer_kernels[key], loose.layer_kernels[key]) < 1e-12


def test_parameters_split_into_packs() -> None:
    model, x = _model()
    problem = _problem(model, x, "flattened")
    budget = _first_budget(
        lambda b: (
            len(packs := plan_general(problem, [(None, problem.selected)], b)) > 1
            and all(p.tile >= 9 for p in packs)
        )
    )
    tight = empirical_ntk(model, x, max_memory=budget, structured=False)
    loose = empirical_ntk(model, x, structured=False)
    assert relative_error(tight.kernel, loose.kernel) < 1e-12


def test_structured_layers_that_do_not_fit_fall_back() -> None:
    torch.manual_seed(1)
    model = MLP(3, (2, 40), 3).double().eval()  # the last layer's cotangents dominate
    x = torch.randn(9, 3, dtype=torch.float64)
    problem = _problem(model, x, "flattened")
    layers = find_layers(problem)

    def falls_back(budget: int) -> bool:
        rejected = plan_structured(problem, layers, budget)[1]
        names = [name for layer in rejected for name in layer.names]
        return 0 < len(rejected) < len(layers) and bool(
            plan_general(problem, [(None, names)], budget)
        )

    budget = _first_budget(falls_back)
    tight = empirical_ntk(model, x, max_memory=budget)
    assert set(tight.paths.values()) == {"structured", "general"}
    loose = empirical_ntk(model, x)
    assert relative_error(tight.kernel, loose.kernel) < 1e-12


def test_dual_recomputes_jacobian_when_it_cannot_be_kept() -> None:
    model, inputs = make_case("tms", n=12)
    loose = entk_spectrum(model, inputs, progress=False)
    assert loose.method == "dual" and loose.info["jacobian_kept"]
    tight = None
    for budget in BUDGETS:
        try:
            tight = entk_spectrum(model, inputs, max_memory=budget)
        except MemoryBudgetError:
            continue
        if not tight.info["jacobian_kept"] and tight.info["chunk"] < 12:
            break
    assert tight is not None and not tight.info["jacobian_kept"]
    assert relative_error(tight.eigenvalues, loose.eigenvalues) < 1e-12
    assert relative_error(np.abs(tight.eigenvectors), np.abs(loose.eigenvectors)) < 1e-9


def test_matrix_free_chunks_samples() -> None:
    model, x = _model()
    loose = entk_topk(model, x, 3)
    tight = None
    for budget in BUDGETS:
        try:
            tight = entk_topk(model, x, 3, max_memory=budget)
        except MemoryBudgetError:
            continue
        break
    assert tight is not None and tight.info["chunk"] < loose.info["chunk"]
    assert relative_error(tight.eigenvalues, loose.eigenvalues) < 1e-9


def test_parse_memory() -> None:
    assert parse_memory(None) is None
    assert parse_memory(1000) == 1000
    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("1.5 GiB") == int(1.5 * 2**30)
    assert parse_memory("512mb") == 512 * 10**6
    assert format_bytes(2.5e9) == "2.5 GB"
