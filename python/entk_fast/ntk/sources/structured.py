"""The structured exact path for layers with a rule in ``layers.LAYER_RULES``, used once.

For y_t = W a_t (+ b) applied at T positions of each sample (T = 1: once per sample), the
layer's eNTK block is

    K[(n, c), (n', c')] = Σ_{t, t'} ⟨a_nt, a_n't'⟩ · ⟨g_nct, g_n'c't'⟩  (+ the same without the
    input Gram for the bias, which is the Gram of Σ_t g_nct),

with a_t the layer's input and g_nct = ∂(R f)_c(x_n)/∂y_nt the output cotangent at position t;
an embedding is the one-hot case, ⟨a_nt, a_n't'⟩ = [i_nt = i_n't'] (0 on the padding index).
The two small Gram matrices of each position pair meet in the Rust ``hadamard_gram_accumulate``
(t = t') / ``hadamard_gram_cross`` (t ≠ t', added with its transpose); a pair whose input Gram
is zero (embedding indices that never meet, such as two fixed positions) is skipped.
Cotangents come from one forward vmapped over a chunk's samples, each run alone, with a zero
"probe" added to each layer's output, and one backward per row group (`cotangents.gather`).

A layer qualifies only if it is an exact ``nn.Linear`` / ``nn.Embedding`` that ran once in the
probe pass, on T vectors (indices) per sample, whose parameters no other operation touched, in
a model whose samples do not interact in the probe; the probe also runs each of its samples
alone and requires row i of the layer's batched input to be that layer's input for sample i
alone (a Linear applied to learned prototypes, or to permuted / sorted rows, fails this); a
numeric check on the probe samples confirms that each parameter's gradient is the one its rule
predicts. Everything else takes the general path. Since every sample runs alone, its
cotangents are its own whatever the batched forward or backward would do; when a qualified
layer misbehaves on a lone sample (it does not run, runs twice or on another number of rows,
an attention recomputation differs from the module's own output, or the forward fails or
cannot run under vmap), `StructuredFallback` names it and the caller redoes the work with it
on the general path. A traced kernel whose rows are taken a few at a time compresses each
layer whose output units are rank one (`unit_trace`). A position whose cotangents are zero for
every sample (a causal model read at its last position) adds nothing, and the core's kernels
skip it. Each chunk's outputs, layer inputs and output cotangents go through the one NaN / inf
check (``checks.require_finite``), so a non-finite Jacobian is reported by sample, as on the
general path. An output that depends on no parameter (a ``.detach()`` in forward) has zero
cotangents: its eNTK is exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ... import linalg
from ..layers import StructuredLayer
from ..plan import StructuredPass
from ..problem import Problem
from .cotangents import gather
from .unit_trace import UnitTrace

__all__ = ["StructuredSource"]


def _activation_gram(
    problem: Problem, layer: StructuredLayer, act: Tensor, other: Tensor | None = None
) -> np.ndarray:
    """⟨a_n, a_n'⟩ between two sample sets at one position each (one: its Gram)."""
    return layer.rule.input_gram(layer.shape, act, other, problem.numpy_dtype)


def _kernel_rows(problem: Problem, cot: Tensor) -> tuple[np.ndarray, int]:
    """Cotangents (n, rows, d_out) as the rows of the Hadamard-Gram, and rows per S entry."""
    rows = problem.as_kernel_rows(cot)
    return rows, 1 if problem.reduction.rows_concatenated else cot.shape[1]


@dataclass
class _Rows:
    """One layer's cotangents of a sample set as Hadamard-Gram rows: stacked position by
    position (T·R, Q), each position's R rows, and their sum over positions (the bias's
    Jacobian Σ_t g_t), with the rows per S entry."""

    stacked: np.ndarray
    at: list[np.ndarray]
    total: np.ndarray
    block: int


def _position_rows(problem: Problem, cot: Tensor, *, total: bool = True) -> _Rows:
    """Cotangents (n, rows, T, d_out) as `_Rows` (``total``: also their position sum)."""
    positions = cot.shape[2]
    per_position = cot.permute(2, 0, 1, 3).contiguous()  # (T, n, rows, d_out)
    parts = [_kernel_rows(problem, per_position[t]) for t in range(positions)]
    block = parts[0][1]
    stacked = np.concatenate([rows for rows, _ in parts]) if positions > 1 else parts[0][0]
    count = parts[0][0].shape[0]
    at = [stacked[t * count : (t + 1) * count] for t in range(positions)]
    if positions == 1:
        return _Rows(stacked, at, at[0], block)
    summed = _kernel_rows(problem, cot.sum(dim=2))[0] if total else at[0][:0]
    return _Rows(stacked, at, summed, block)


def _by_position(layer: StructuredLayer, act: Tensor) -> Tensor:
    """A tile's inputs (n, T, ...) as (T·n, ...), position-major."""
    return act.transpose(0, 1).reshape(layer.positions * act.shape[0], *act.shape[2:])


def _position_gram(problem: Problem, layer: StructuredLayer, act: Tensor) -> np.ndarray:
    """The Gram of a layer's inputs over (position, sample), (T·n, T·n), position-major:
    entry (t·n + i, u·n + j) is ⟨a_it, a_ju⟩."""
    return _activation_gram(problem, layer, _by_position(layer, act))


def _position_factor(problem: Problem, layer: StructuredLayer, act: Tensor) -> np.ndarray | None:
    """Factor rows (T·n, D) of `_position_gram`, when the rule gives them."""
    return layer.rule.input_factor(layer.shape, _by_position(layer, act), problem.numpy_dtype)


def _shared_inputs(
    layers: Sequence[StructuredLayer], acts: Mapping[str, Tensor], others: Mapping[str, Tensor]
) -> list[list[StructuredLayer]]:
    """The layers grouped by equal inputs on these samples (Q, K and V projections of one
    residual stream), so each position pair's input Gram is formed once per group."""
    groups: list[list[StructuredLayer]] = []
    for layer in layers:
        for group in groups:
            first = group[0]
            if (
                first.rule is layer.rule
                and first.shape == layer.shape
                and torch.equal(acts[first.path], acts[layer.path])
                and torch.equal(others[first.path], others[layer.path])
            ):
                group.append(layer)
                break
        else:
            groups.append([layer])
    return groups


def _input_pairs(
    problem: Problem,
    layer: StructuredLayer,
    act: Tensor,
    other: Tensor | None,
    skip_zero: bool = True,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(t, t', S) with S = ⟨a_t, a'_t'⟩ for the position pairs of a block: t ≤ t' on a square
    block (``other`` None), every pair on a cross block; at T > 1, pairs whose S is zero are
    skipped (``skip_zero``; not where a bias adds 1 to S)."""
    positions = layer.positions
    for t in range(positions):
        for u in range(t if other is None else 0, positions):
            if other is None:
                right = None if u == t else act[:, u]
            else:
                right = other[:, u]
            s = _activation_gram(problem, layer, act[:, t], right)
            if skip_zero and positions > 1 and not s.any():
                continue
            yield t, u, s


@dataclass
class _Targets:
    """Where a layer's weight and bias blocks go (the same array when they share a kernel)."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    merged: bool
    """Weight and bias share a target: one Hadamard weight S + 1 (a ones column appended to
    the input factor) covers both."""


def _targets_of(layer: StructuredLayer, targets: Callable[[str], np.ndarray]) -> _Targets:
    weight = targets(layer.weight) if layer.weight is not None else None
    bias = targets(layer.bias) if layer.bias is not None else None
    if weight is not None and bias is weight:
        return _Targets(weight, None, True)
    return _Targets(weight, bias, False)


def _plus_one(s: np.ndarray, merged: bool) -> np.ndarray:
    return s + 1.0 if merged else s


class StructuredSource:
    """A sweep of structured layers as a tile source: K += scale · Σ_{t,t'} (S_tt' ∘ G_t G_t'ᵀ)
    per layer, with S_tt' the input Gram of a position pair (plus 1 where the bias shares the
    target) and G_t the cotangent rows at position t."""

    def __init__(
        self, problem: Problem, sweep: StructuredPass, targets: Callable[[str], np.ndarray]
    ) -> None:
        self.problem = problem
        self.sweep = sweep
        self.where = {layer.path: _targets_of(layer, targets) for layer in sweep.layers}

    def load(self, start: int, stop: int, *, check: bool) -> _Tile:
        acts, cots = gather(
            self.problem, self.sweep, (start, stop), (0, self.problem.rows_per_sample), check=check
        )
        rows = {path: _position_rows(self.problem, cot) for path, cot in cots.items()}
        return _Tile(acts, rows, stop - start)

    def _weighted(self, layers: Sequence[StructuredLayer]) -> list[StructuredLayer]:
        return [layer for layer in layers if self.where[layer.path].weight is not None]

    def add_diagonal(self, tile: _Tile, rows: slice) -> None:
        problem = self.problem
        alpha = problem.kernel_scale
        # Every operand is prepared first and the core's kernels then run back to back: a
        # torch operation between two of them would leave torch's OpenMP workers spinning
        # (about 7 ms) on the cores the kernels use, at half their speed. The factored layers
        # take one core call per kernel they add into (one for the full kernel).
        factored: dict[int, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, int, int]]]]
        factored = {}
        gram: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []
        weighted = self._weighted(self.sweep.layers)
        for group in _shared_inputs(weighted, tile.acts, tile.acts):
            first = group[0]
            factor = _position_factor(problem, first, tile.acts[first.path])
            s: np.ndarray | None = None
            # Layers with equal inputs and one target (Q, K and V of the full kernel) add up
            # to one Hadamard-Gram of their cotangents side by side.
            shared: dict[tuple[int, bool], list[StructuredLayer]] = {}
            for layer in group:
                into = self.where[layer.path]
                assert into.weight is not None
                shared.setdefault((id(into.weight), into.merged), []).append(layer)
            for (_, merged), layers in shared.items():
                target = self.where[layers[0].path].weight
                assert target is not None
                parts = [tile.rows[layer.path].stacked for layer in layers]
                g = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
                shape = (tile.rows[first.path].block, first.positions)
                if factor is not None:  # S (+ 1) = [F, 1][F, 1]ᵀ, formed tile by tile
                    f = np.hstack([factor, np.ones_like(factor[:, :1])]) if merged else factor
                    factored.setdefault(id(target), (target[rows, rows], []))[1].append(
                        (g, f, *shape)
                    )
                else:
                    s = _position_gram(problem, first, tile.acts[first.path]) if s is None else s
                    gram.append((target[rows, rows], g, _plus_one(s, merged), *shape))
        for k, terms in factored.values():
            linalg.hadamard_gram_factored_accumulate_many(k, terms, alpha=alpha)
        for k, g, weight, block, positions in gram:
            linalg.hadamard_gram_accumulate(
                k, g, weight, block=block, alpha=alpha, positions=positions
            )
        del factored, gram
        for layer in self.sweep.layers:  # a bias apart: the Gram of Σ_t g_t (S is all ones)
            into = self.where[layer.path]
            if into.bias is not None:
                linalg.gram_accumulate(
                    into.bias[rows, rows], tile.rows[layer.path].total, alpha=alpha
                )

    def cross(self, left: _Tile, right: _Tile) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        problem = self.problem
        alpha = problem.kernel_scale
        weighted = self._weighted(self.sweep.layers)
        blocks: dict[str, np.ndarray] = {}
        for group in _shared_inputs(weighted, left.acts, right.acts):
            first = group[0].path
            skip = not any(self.where[layer.path].merged for layer in group)
            pairs = _input_pairs(problem, group[0], left.acts[first], right.acts[first], skip)
            for t, u, s in pairs:
                for layer in group:
                    g = left.rows[layer.path]
                    h = right.rows[layer.path]
                    weight = _plus_one(s, self.where[layer.path].merged)
                    x = linalg.hadamard_gram_cross(
                        g.at[t], h.at[u], weight, block=g.block, alpha=alpha
                    )
                    if layer.path in blocks:
                        blocks[layer.path] += x
                    else:
                        blocks[layer.path] = x
                    del x
                del s
        for layer in self.sweep.layers:
            into = self.where[layer.path]
            block = blocks.pop(layer.path, None)
            if into.weight is not None and block is not None:
                yield into.weight, block
            del block
            if into.bias is not None:
                g = left.rows[layer.path]
                h = right.rows[layer.path]
                cross = linalg.gram_cross(g.total, h.total)
                if alpha != 1.0:
                    cross *= alpha
                yield into.bias, cross

    def add_whole(self, tick: Callable[[int], object]) -> None:
        """All samples, ``sweep.group`` output rows per backward sweep."""
        problem = self.problem
        n = problem.n_samples
        rows = problem.rows_per_sample
        sweep = self.sweep
        if sweep.group >= rows:
            tile = self.load(0, n, check=True)
            self.add_diagonal(tile, slice(None))
            tick(sweep.units(n))
            return
        _add_row_groups(problem, sweep, self.where, tick)


def _add_grams(into: dict[tuple[int, int], np.ndarray], unit: UnitTrace) -> None:
    """Add the Grams of the row groups ``unit`` compressed to the position pairs' sums."""
    if unit.accepted:
        for pair, m in unit.grams().items():
            into[pair] += m


@dataclass
class _Tile:
    """One sample tile of a sweep: each layer's inputs and its cotangent rows."""

    acts: dict[str, Tensor]
    rows: dict[str, _Rows]
    n: int


def _add_row_groups(
    problem: Problem,
    sweep: StructuredPass,
    where: Mapping[str, _Targets],
    tick: Callable[[int], object],
) -> None:
    """All samples, ``sweep.group`` < C_r output rows per backward sweep (rows concatenated or
    averaged: the kernel is a sum over rows).
    """
    n = problem.n_samples
    rows = problem.rows_per_sample
    scale = problem.kernel_scale
    # Row groups (trace / mean_pairs only): K = alpha · Σ_{t,t'} S_tt' ∘ Σ_groups G_gt G_gt'ᵀ,
    # so the cotangent Grams of each position pair are summed over groups first and the
    # activation Grams applied once at the end (one N×N buffer per layer and position pair,
    # and only Gram updates inside the loop).
    storage = {
        layer.path: torch.empty(
            n * sweep.group * layer.positions * layer.out_features,
            dtype=problem.dtype,
            device=problem.device,
        )
        for layer in sweep.layers
    }
    grams = {
        layer.path: {
            (t, u): np.zeros((n, n), dtype=problem.numpy_dtype)
            for t in range(layer.positions)
            for u in range(t, layer.positions)
        }
        for layer in sweep.layers
    }
    # Each layer first tries the per-unit rank-one compression (`unit_trace`): one Gram of
    # width d_out at the end instead of one of width rows·d_out per group.
    units = {
        layer.path: UnitTrace(n, layer.positions, layer.out_features, problem.numpy_dtype)
        for layer in sweep.layers
        if layer.out_features > 1
    }
    acts: dict[str, Tensor] = {}
    for r0 in range(0, rows, sweep.group):
        r1 = min(r0 + sweep.group, rows)
        seen, cots = gather(
            problem, sweep, (0, n), (r0, r1), tick, storage=storage, want_acts=r0 == 0
        )
        acts.update(seen)
        for layer in sweep.layers:
            cot = cots.pop(layer.path)
            unit = units.get(layer.path)
            if unit is not None:
                if unit.add(cot):
                    continue
                del units[layer.path]  # not rank one: its accepted groups, then row Grams
                _add_grams(grams[layer.path], unit)
            g = _position_rows(problem, cot, total=False)
            for (t, u), m in grams[layer.path].items():
                if t == u:
                    linalg.gram_accumulate(m, g.at[t])
                else:
                    m += linalg.gram_cross(g.at[t], g.at[u])
            del g
        del seen, cots
    del storage
    for path, unit in units.items():
        _add_grams(grams[path], unit)
    for layer in sweep.layers:  # the bias: the Gram of Σ_t g_t, every pair in both orders
        into = where[layer.path]
        if into.bias is not None:
            for (t, u), m in grams[layer.path].items():
                into.bias += scale * m
                if t != u:
                    into.bias += scale * m.T
    weighted = [layer for layer in sweep.layers if where[layer.path].weight is not None]
    for group in _shared_inputs(weighted, acts, acts):
        skip = not any(where[layer.path].merged for layer in group)
        for t, u, s in _input_pairs(problem, group[0], acts[group[0].path], None, skip):
            for layer in group:
                into = where[layer.path]
                assert into.weight is not None
                m = grams[layer.path][(t, u)]
                m *= _plus_one(s, into.merged)
                m *= scale
                into.weight += m
                if t != u:
                    into.weight += m.T
            del s
    grams.clear()
