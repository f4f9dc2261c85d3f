"""ntk/assemble.py: the tile loop, against J Jᵀ."""

from __future__ import annotations

import numpy as np
import pytest

from entk_fast.ntk.assemble import assemble_cross, assemble_square, cross_units, spans, square_units


class _Rows:
    """A tile source over fixed rows J (n·per, p): the kernel is J Jᵀ (or J Jᵀ₂)."""

    def __init__(self, jac: np.ndarray, per: int, target: np.ndarray) -> None:
        self.jac, self.per, self.target = jac, per, target
        self.loads: list[tuple[int, int, bool]] = []
        self.whole = 0

    def load(self, start: int, stop: int, *, check: bool) -> np.ndarray:
        self.loads.append((start, stop, check))
        return self.jac[start * self.per : stop * self.per]

    def add_diagonal(self, tile: np.ndarray, rows: slice) -> None:
        self.target[rows, rows] += tile @ tile.T

    def cross(self, left: np.ndarray, right: np.ndarray):  # type: ignore[no-untyped-def]
        yield self.target, left @ right.T

    def add_whole(self, tick) -> None:  # type: ignore[no-untyped-def]
        self.whole += 1
        self.target += self.jac @ self.jac.T
        tick(1)


def test_assemble_spans_and_units() -> None:
    assert spans(0, 10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert spans(4, 6, 5) == [(4, 6)]
    assert spans(0, 3, 0) == [(0, 1), (1, 2), (2, 3)]
    assert square_units(10, 3) == 10 and square_units(3, 3) == 1
    assert cross_units(10, 7, 3) == 12 and cross_units(2, 2, 5) == 1


@pytest.mark.parametrize("tile", [1, 2, 3, 7, 9])
def test_assemble_square_is_the_gram(tile: int) -> None:
    n, per = 7, 2
    jac = np.random.default_rng(tile).standard_normal((n * per, 5))
    k = np.zeros((n * per, n * per))
    source = _Rows(jac, per, k)
    ticks: list[int] = []
    assemble_square(source, n, tile, per, ticks.append)
    np.testing.assert_allclose(k, jac @ jac.T, rtol=0, atol=1e-12)
    if tile >= n:
        assert source.whole == 1 and not source.loads and sum(ticks) == 1
    else:
        assert sum(ticks) == square_units(n, tile) and source.whole == 0
        checked = [(a, b) for a, b, check in source.loads if check]
        assert checked == spans(0, n, tile)  # each tile verified exactly once


@pytest.mark.parametrize("tile", [1, 2, 4, 10])
def test_assemble_cross_is_the_cross_gram(tile: int) -> None:
    n, n2, per = 5, 4, 3
    jac = np.random.default_rng(tile).standard_normal(((n + n2) * per, 6))
    k = np.zeros((n * per, n2 * per))
    source = _Rows(jac, per, k)
    ticks: list[int] = []
    assemble_cross(source, n, n2, tile, per, ticks.append)
    np.testing.assert_allclose(k, jac[: n * per] @ jac[n * per :].T, rtol=0, atol=1e-12)
    assert sum(ticks) == cross_units(n, n2, tile)
    checked = sorted((a, b) for a, b, check in source.loads if check)
    assert checked == sorted(spans(0, n, tile) + spans(n, n + n2, tile))
