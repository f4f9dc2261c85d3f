"""The traced kernel's per-unit rank-one compression over row groups (`sources.unit_trace`):
its Grams against brute-force sums over the rows, its refusal of units that are not rank one,
the handover to the row Grams midway, and the kernels it gives against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import reference_jacobian, reference_kernel, relative_error
from torch import nn

import entk_fast.ntk.plan as plan_module
import entk_fast.ntk.sources.structured as structured_module
from entk_fast import empirical_ntk, linalg
from entk_fast.errors import InvalidArgumentError, LinAlgError
from entk_fast.ntk.sources.unit_trace import UnitTrace


def _rank_one(n: int, rows: int, positions: int, units: int, seed: int) -> np.ndarray:
    """Cotangents (n, rows, T, units) with g[n, r, t, k] = s[n, t, k] · w[r, k]; unit 1 is zero
    in the first two rows, unit 2 in the first row only, and unit 3 everywhere."""
    gen = np.random.default_rng(seed)
    s = gen.standard_normal((n, positions, units))
    w = gen.standard_normal((rows, units))
    w[:2, 1] = 0.0
    w[0, 2] = 0.0
    w[:, 3] = 0.0
    return np.einsum("ntk,rk->nrtk", s, w)


def _brute(cot: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """(t, u) -> Σ_{r,k} g[:, r, t, k] g[:, r, u, k]ᵀ."""
    positions = cot.shape[2]
    return {
        (t, u): np.einsum("nrk,mrk->nm", cot[:, :, t], cot[:, :, u])
        for t in range(positions)
        for u in range(t, positions)
    }


def _feed(unit: UnitTrace, cot: np.ndarray, bounds: list[int]) -> list[bool]:
    return [
        unit.add(torch.from_numpy(np.ascontiguousarray(cot[:, a:b])))
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


@pytest.mark.parametrize("positions", [1, 3])
def test_rank_one_units_give_the_row_sums_exactly(positions: int) -> None:
    cot = _rank_one(9, 5, positions, 4, seed=positions)
    unit = UnitTrace(9, positions, 4, np.dtype(np.float64))
    assert _feed(unit, cot, [0, 2, 4, 5]) == [True, True, True]
    assert unit.accepted == 3
    expected = _brute(cot)
    got = unit.grams()
    assert got.keys() == expected.keys()
    for pair, m in expected.items():
        assert np.abs(got[pair] - m).max() <= 1e-12 * np.abs(m).max(), pair


def test_a_unit_of_rank_two_is_refused_and_nothing_of_its_group_kept() -> None:
    cot = _rank_one(8, 4, 1, 4, seed=5)
    cot[:, :, 0, 2] += np.random.default_rng(6).standard_normal((8, 4)) * 1e-3
    unit = UnitTrace(8, 1, 4, np.dtype(np.float64))
    assert _feed(unit, cot, [0, 4]) == [False]
    assert unit.accepted == 0
    assert not unit.ready.any()


def test_handover_keeps_the_groups_accepted_before_a_refusal() -> None:
    """Rank one in rows 0-2, not in rows 3-4: the unit's Grams are those of the first group."""
    cot = _rank_one(7, 5, 2, 4, seed=7)
    cot[:, 3:, :, 0] = np.random.default_rng(8).standard_normal((7, 2, 2))
    unit = UnitTrace(7, 2, 4, np.dtype(np.float64))
    assert _feed(unit, cot, [0, 3, 5]) == [True, False]
    expected = _brute(cot[:, :3])
    for pair, m in unit.grams().items():
        assert np.abs(m - expected[pair]).max() <= 1e-12 * np.abs(expected[pair]).max()


def test_float32_round_off_passes_and_a_small_perturbation_does_not() -> None:
    cot = _rank_one(50, 6, 1, 5, seed=9).astype(np.float32)
    unit = UnitTrace(50, 1, 5, np.dtype(np.float32))
    assert _feed(unit, cot, [0, 3, 6]) == [True, True]
    expected = _brute(cot.astype(np.float64))
    for pair, m in unit.grams().items():
        assert np.abs(m - expected[pair]).max() <= 1e-5 * np.abs(expected[pair]).max()
    bad = cot.copy()
    bad[7, 4, 0, 0] *= 1.001
    unit = UnitTrace(50, 1, 5, np.dtype(np.float32))
    assert _feed(unit, bad, [0, 3, 6]) == [True, False]


def test_core_residual_matches_numpy_and_refuses_bad_input() -> None:
    gen = np.random.default_rng(10)
    n, rows, positions, units = 40, 3, 2, 6
    g = gen.standard_normal((n, rows, positions, units))
    s = gen.standard_normal((n, positions, units))
    w = gen.standard_normal((rows, units))
    lost, energy = linalg.rank_one_residual(
        g.reshape(-1, units), s.reshape(-1, units), w, positions=positions
    )
    residual = g - np.einsum("ntk,rk->nrtk", s, w)
    np.testing.assert_allclose(lost, np.square(residual).sum(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(energy, np.square(g).sum(axis=(0, 1, 2)), rtol=1e-12)
    rows_of, values = linalg.column_pivots(g.reshape(-1, units))
    flat = g.reshape(-1, units)
    np.testing.assert_array_equal(rows_of, np.abs(flat).argmax(axis=0))
    np.testing.assert_array_equal(values, flat[rows_of, np.arange(units)])
    with pytest.raises(InvalidArgumentError, match="G"):
        linalg.rank_one_residual(g.reshape(-1, units)[:-1], s.reshape(-1, units), w, positions=2)
    with pytest.raises(InvalidArgumentError, match="positions"):
        linalg.rank_one_residual(g.reshape(-1, units), s.reshape(-1, units), w, positions=0)
    bad = g.reshape(-1, units).copy()
    bad[3, 2] = np.nan
    with pytest.raises(LinAlgError, match="NaN"):
        linalg.rank_one_residual(bad, s.reshape(-1, units), w, positions=2)
    with pytest.raises(InvalidArgumentError, match="NaN or inf"):
        linalg.column_pivots(bad)


class ReadOut(nn.Module):
    """tanh(x W1ᵀ) → tanh(· W2ᵀ) → linear read-out of 12 rows: W2's units are rank one (only
    elementwise operations before the read-out), W1's are not. ``squared``: six more rows
    (W4 h)², whose cotangents at W2's units are not rank one."""

    def __init__(self, squared: bool = False) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.l2 = nn.Linear(8, 7)
        self.out = nn.Linear(7, 12)
        self.extra = nn.Linear(7, 6) if squared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.l2(torch.tanh(self.l1(x))))
        y = self.out(h)
        if self.extra is None:
            return y
        return torch.cat([y, self.extra(h).square()], dim=1)


@pytest.mark.parametrize("squared", [False, True])
def test_traced_kernel_with_row_groups_equals_the_reference(
    squared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(11)
    model = ReadOut(squared).double().eval()
    x = torch.randn(30, 5, dtype=torch.float64)
    # A cap of 60 kB leaves room for a few output rows per backward: the row-group path.
    monkeypatch.setattr(plan_module, "_STRUCTURED_FLOOR", 60_000)
    accepted: dict[str, list[bool]] = {}
    groups: list[int] = []
    original_add, original_groups = UnitTrace.add, structured_module._add_row_groups

    def spy_groups(problem, sweep, where, tick):  # type: ignore[no-untyped-def]
        groups.append(sweep.group)
        return original_groups(problem, sweep, where, tick)

    def spy_add(self: UnitTrace, cot: torch.Tensor) -> bool:
        result = original_add(self, cot)
        accepted.setdefault(f"{cot.shape[-1]}", []).append(result)
        return result

    monkeypatch.setattr(structured_module, "_add_row_groups", spy_groups)
    monkeypatch.setattr(UnitTrace, "add", spy_add)
    result = empirical_ntk(model, x, reduction="trace", progress=False)
    expected = reference_kernel(reference_jacobian(model, (x,)), "trace")
    assert relative_error(result.kernel, expected) < 1e-10
    rows = 18 if squared else 12
    assert groups and all(1 <= g < rows for g in groups)
    assert result.paths["l2.weight"] == "structured"
    outcomes = accepted["7"]  # l2's seven units
    assert outcomes[0] is True  # the read-out rows come first
    if squared:
        assert outcomes[-1] is False  # the squared rows end its compression
    else:
        assert all(outcomes)
    if "8" in accepted:  # l1's units meet the second tanh: refused at once
        assert accepted["8"] == [False]


def test_traced_kernel_with_an_output_metric_and_row_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Output weights S (R = S^½ on the outputs) keep the read-out linear: still rank one."""
    torch.manual_seed(12)
    model = ReadOut().double().eval()
    x = torch.randn(30, 5, dtype=torch.float64)
    weights = np.linspace(0.5, 2.0, 12)
    monkeypatch.setattr(plan_module, "_STRUCTURED_FLOOR", 60_000)
    outcomes: list[bool] = []
    original_add = UnitTrace.add

    def spy_add(self: UnitTrace, cot: torch.Tensor) -> bool:
        outcomes.append(original_add(self, cot))
        return outcomes[-1]

    monkeypatch.setattr(UnitTrace, "add", spy_add)
    result = empirical_ntk(model, x, reduction="trace", output_metric=weights, progress=False)
    expected = reference_kernel(reference_jacobian(model, (x,)), "trace", weights)
    assert relative_error(result.kernel, expected) < 1e-10
    assert any(outcomes)
