"""Memory planning: tight budgets tile and pack the work without changing the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import (
    MLP,
    TokenMLP,
    make_case,
    reference_jacobian,
    reference_kernel,
    relative_error,
)

from entk_fast import MemoryBudgetError, empirical_ntk, entk_spectrum, entk_topk
from entk_fast._validate import parse_memory
from entk_fast.ntk.plan import (
    _diagonal_width,
    format_bytes,
    plan_general,
    plan_structured,
    structured_cap,
)
from entk_fast.ntk.problem import evaluation_mode, prepare
from entk_fast.ntk.sources.layer_search import find_layers

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


def _structured_plan(  # type: ignore[no-untyped-def]
    model: torch.nn.Module, inputs: tuple, reduction: str, budget: int, groups: object = None
):
    """The structured plan ``empirical_ntk(..., layerwise=True)`` makes under ``budget``."""
    with evaluation_mode(model):
        problem = prepare(model, inputs, reduction=reduction, groups=groups)
        return problem, plan_structured(problem, find_layers(problem), budget, layerwise=True)


def _check_tight(
    model: torch.nn.Module, inputs: tuple, reduction: str, budget: int, **kwargs: object
) -> None:
    """The kernel under ``budget`` equals the unconstrained one and the brute-force reference."""
    tight = empirical_ntk(
        model, inputs, reduction=reduction, max_memory=budget, layerwise=True, **kwargs
    )
    loose = empirical_ntk(model, inputs, reduction=reduction, layerwise=True, **kwargs)
    assert set(tight.paths.values()) == {"structured"}
    assert relative_error(tight.kernel, loose.kernel) < 1e-12
    for key in loose.layer_kernels:
        assert relative_error(tight.layer_kernels[key], loose.layer_kernels[key]) < 1e-12
    expected = reference_kernel(reference_jacobian(model, inputs), reduction)
    assert relative_error(tight.kernel, expected) < 1e-10


TILED_CASES = [
    ("mlp", "flattened"),
    ("mlp", "trace"),
    ("mlp", "mean_pairs"),
    ("tokens", "flattened"),
    ("tokens", "trace"),
    ("padded", "mean_pairs"),
]


def _tiled_model(name: str, n: int = 40) -> tuple[torch.nn.Module, tuple]:
    """Enough samples that the N×N activation Grams, not the cotangents, force sample tiles."""
    torch.manual_seed(1)
    if name == "mlp":  # the middle layer's cotangents dominate
        model: torch.nn.Module = MLP(3, (2, 40), 3).double().eval()
        return model, (torch.randn(n, 3, dtype=torch.float64),)
    model = TokenMLP(vocab=7, dim=30, padding_idx=2 if name == "padded" else None)
    return model.double().eval(), (torch.randint(0, 7, (n,)),)


@pytest.mark.parametrize(("name", "reduction"), TILED_CASES)
def test_structured_sample_tiles_give_the_same_kernel(name: str, reduction: str) -> None:
    model, inputs = _tiled_model(name)
    n = inputs[0].shape[0]

    def tiled(budget: int) -> bool:
        problem, (sweeps, rejected) = _structured_plan(model, inputs, reduction, budget)
        tiles = [s.tile for s in sweeps]
        # at least three tiles, the last one shorter: diagonal, cross and ragged tiles
        return not rejected and any(2 <= t and n % t and n // t >= 2 for t in tiles)

    budget = _first_budget(tiled)
    _check_tight(model, inputs, reduction, budget)


def test_structured_tiles_with_weight_and_bias_in_different_groups() -> None:
    model, inputs = _tiled_model("mlp")
    n = inputs[0].shape[0]
    groups = {
        "weights": ["layers.0.weight", "layers.1.weight", "layers.2.weight"],
        "biases": ["layers.0.bias", "layers.1.bias", "layers.2.bias"],
    }
    for reduction in ("flattened", "trace"):
        budget = _first_budget(
            lambda b, r=reduction: (
                not (plan := _structured_plan(model, inputs, r, b, groups)[1])[1]
                and any(2 <= s.tile < n for s in plan[0])
            )
        )
        _check_tight(model, inputs, reduction, budget, groups=groups)

    def grouped(b: int) -> bool:
        problem, (sweeps, rejected) = _structured_plan(model, inputs, "trace", b, groups)
        return not rejected and any(s.tile >= n and s.group < 3 for s in sweeps)

    _check_tight(model, inputs, "trace", _first_budget(grouped), groups=groups)


@pytest.mark.parametrize("name", ["mlp", "tokens"])
def test_structured_output_row_groups_give_the_same_kernel(name: str) -> None:
    model, inputs = _tiled_model(name)
    n = inputs[0].shape[0]

    def grouped(budget: int) -> bool:
        problem, (sweeps, rejected) = _structured_plan(model, inputs, "trace", budget)
        return not rejected and any(
            s.tile >= n and 1 <= s.group < problem.rows_per_sample for s in sweeps
        )

    _check_tight(model, inputs, "trace", _first_budget(grouped))


def test_structured_plan_stays_within_the_cap_of_one_chunk() -> None:
    torch.manual_seed(2)
    # float32, trace: cotangents (N, C·(64 + C)), 250 MB ≫ the kernel (N, N) and the cap's floor
    model = MLP(8, (64,), 150).eval()
    x = torch.randn(2000, 8)
    with evaluation_mode(model):
        problem = prepare(model, x, reduction="trace")
    layers = find_layers(problem)
    kernel = problem.kernel_size**2 * problem.itemsize
    sweeps, rejected = plan_structured(problem, layers, 10**12, kernel)
    assert not rejected
    cap = structured_cap(kernel)
    for sweep in sweeps:
        assert sweep.tile >= problem.n_samples and sweep.group < problem.rows_per_sample
        held = problem.n_samples * sweep.group * sum(layer.out_features for layer in sweep.layers)
        assert held * problem.itemsize <= cap


def test_structured_layers_that_cannot_fit_even_tiled_are_rejected() -> None:
    model, inputs = _tiled_model("mlp", n=11)
    with evaluation_mode(model):
        problem = prepare(model, inputs, reduction="flattened")
    layers = find_layers(problem)
    sweeps, rejected = plan_structured(problem, layers, 200)
    assert not sweeps and len(rejected) == len(layers)
    budget = _first_budget(lambda b: not plan_structured(problem, layers, b)[1])
    sweeps, rejected = plan_structured(problem, layers, budget)
    assert sweeps and not rejected and min(s.tile for s in sweeps) == 1


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


class _TwoTables(torch.nn.Module):
    """Two 256-row embeddings at 8 positions (one-hot factor rows 256 wide: 128× the index
    they come from) and a Linear over the positions (too narrow for the structured path)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Embedding(256, 4)
        self.b = torch.nn.Embedding(256, 4)
        self.out = torch.nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(tokens) * self.b(tokens.flip(1))).sum(1)


def test_the_diagonal_operands_fit_the_budget_that_planned_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every layer's operands of a diagonal tile (one-hot factors, side-by-side cotangents) are
    prepared before the core's kernels run: the plan's count of them covers what is held, and
    the smallest budget the plan accepts untiled holds them all."""
    import entk_fast.ntk.sources.structured as structured
    from entk_fast import linalg

    torch.manual_seed(3)
    model = _TwoTables().double().eval()
    tokens = torch.randint(0, 256, (300, 8), generator=torch.Generator().manual_seed(3))
    with evaluation_mode(model):
        problem = prepare(model, tokens, reduction="trace")
    layers = find_layers(problem)
    assert {layer.path for layer in layers} >= {"a", "b"}
    kernel = problem.kernel_size**2 * problem.itemsize

    def untiled(budget: int) -> bool:
        sweeps, rejected = plan_structured(problem, layers, budget, kernel)
        n, rows = problem.n_samples, problem.rows_per_sample
        return not rejected and all(s.tile >= n and s.group >= rows for s in sweeps)

    budget = next(b for b in (int(1.25**i) for i in range(60, 100)) if untiled(b))
    held: list[int] = []
    run = linalg.hadamard_gram_factored_accumulate_many

    def record(k: np.ndarray, terms: list, **kwargs: object) -> None:  # type: ignore[type-arg]
        held.append(sum(g.nbytes + a.nbytes for g, a, _, _ in terms))
        run(k, terms, **kwargs)

    monkeypatch.setattr(structured.linalg, "hadamard_gram_factored_accumulate_many", record)
    result = empirical_ntk(model, tokens, reduction="trace", max_memory=budget, progress=False)
    assert result.paths["a.weight"] == result.paths["b.weight"] == "structured"
    assert held and max(held) <= budget, (held, budget)
    rows = problem.rows_per_sample
    counted = sum(_diagonal_width(layer, rows) for layer in layers if layer.path in {"a", "b"})
    assert max(held) <= counted * problem.n_samples * problem.itemsize
    expected = reference_kernel(reference_jacobian(model, (tokens[:40],)), "trace")
    small = empirical_ntk(model, tokens[:40], reduction="trace", progress=False)
    assert relative_error(small.kernel, expected) < 1e-10
