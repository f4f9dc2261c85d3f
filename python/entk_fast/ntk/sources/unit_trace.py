"""The traced kernel's cotangent Grams of a layer from one Gram of width d_out, when every
output unit's cotangents have rank one: the exact per-unit compression of the row-group path.

A traced kernel sums over the R output rows: layer by layer and position pair it needs
Σ_r Σ_k g_nrtk g_n'ruk, a Gram of width R·d_out (`structured._add_row_groups` accumulates it
row group by row group). When only elementwise operations lie between the layer and a linear
read-out (the paper's modular-addition MLP, any last hidden layer), each output unit k's
cotangents factor as g_nrtk = s_ntk · w_rk (J. Lin, arXiv 2510.00468, the cheap exact paths),
so the sum is Σ_k s_ntk s_n'uk Σ_r w_rk²: one Gram of width d_out, R times narrower.

`UnitTrace` finds s and w as the row groups stream by and checks every group against them.
Unit k's pivot (sample-position (n*, t*), row r*) is taken in the first group where the unit
is non-zero: its largest cotangent in the group's first row, or in the whole group where that
row is zero. Then s_ntk = g_nr*tk / g_n*r*t*k (|s| ≤ 1) and w_rk = g_n*rt*k. A group whose
residual ‖g − s ⊗ w‖² exceeds 1e4·eps² of its energy, unit by unit (the tolerance of
`factored.compress_trace`; exact rank one leaves a few eps²), ends the compression: the groups
before it are handed over as their Grams and the rest take the row-group Grams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from ... import linalg

__all__ = ["UnitTrace"]


def _energy_tolerance(dtype: np.dtype[Any]) -> float:
    """Residual energy, relative to a group's, below which a unit counts as rank one."""
    eps = float(np.finfo(dtype).eps)
    return max(1e3 * float(np.finfo(np.float64).eps), 1e4 * eps * eps)


class UnitTrace:
    """One layer's streamed per-unit rank-one compression over the row groups of a trace.

    ``add`` takes each group's cotangents (n, rows, T, d_out) in turn and returns False (and
    keeps nothing of that group) once a unit is not rank one; ``grams`` then gives the position
    pairs' Grams (n, n) of the groups it accepted.
    """

    def __init__(self, n: int, positions: int, units: int, dtype: np.dtype[Any]) -> None:
        self.scores = np.zeros((n, positions, units), dtype=dtype)  # s
        self.weights = np.zeros(units)  # Σ_r w_rk², float64
        self.pivot_sample = np.zeros(units, dtype=np.int64)
        self.pivot_position = np.zeros(units, dtype=np.int64)
        self.ready = np.zeros(units, dtype=bool)
        self.tolerance = _energy_tolerance(dtype)
        self.accepted = 0

    def add(self, cot: Tensor) -> bool:
        """Take one row group's cotangents (n, rows, T, d_out); False where a unit is not rank
        one (nothing of this group is kept)."""
        n, rows, positions, units = cot.shape
        g = cot.detach().cpu().contiguous().numpy()
        flat = g.reshape(-1, units)
        scores, ready = self.scores, self.ready
        sample, position = self.pivot_sample, self.pivot_position
        if not ready.all():
            # Pivots from the group's first row (a 1/rows of the work), then, for units that
            # are silent there, from the whole group.
            where, value = linalg.column_pivots(np.ascontiguousarray(g[:, 0].reshape(-1, units)))
            where = (where // positions) * rows * positions + where % positions
            silent = ~ready & (value == 0)
            if rows > 1 and silent.any():
                anywhere, largest = linalg.column_pivots(flat)
                where[silent], value[silent] = anywhere[silent], largest[silent]
            fresh = ~ready & (value != 0)
            if fresh.any():
                scores, ready = scores.copy(), ready | fresh
                sample, position = sample.copy(), position.copy()
                k = np.flatnonzero(fresh)
                sample[k] = where[k] // (rows * positions)
                position[k] = where[k] % positions
                row = (where[k] // positions) % rows
                column = g[:, row, :, k]  # (fresh units, n, T): the pivot's row of each unit
                scores[:, :, k] = (column / value[k][:, None, None]).transpose(1, 2, 0)
        w = g[sample, :, position, np.arange(units)].T * ready  # (rows, units)
        w = np.ascontiguousarray(w, dtype=g.dtype)
        lost, energy = linalg.rank_one_residual(
            flat, scores.reshape(-1, units), w, positions=positions
        )
        if (lost > self.tolerance * energy).any():
            return False
        self.scores, self.ready = scores, ready
        self.pivot_sample, self.pivot_position = sample, position
        self.weights += np.square(w, dtype=np.float64).sum(axis=0)
        self.accepted += 1
        return True

    def grams(self) -> dict[tuple[int, int], np.ndarray]:
        """(t, u) -> Σ_k s_·tk s_·uk Σ_r w_rk² (n, n) over the accepted groups, t ≤ u."""
        scale = np.sqrt(self.weights).astype(self.scores.dtype)
        factors = [
            np.ascontiguousarray(self.scores[:, t, :] * scale) for t in range(self.scores.shape[1])
        ]
        out: dict[tuple[int, int], np.ndarray] = {}
        for t, f in enumerate(factors):
            out[(t, t)] = linalg.gram(f)
            for u in range(t + 1, len(factors)):
                out[(t, u)] = linalg.gram_cross(f, factors[u])
        return out
