"""The one planner: the memory budget, and the chunk / tile plans of every path.

Sizes are estimates from the probe pass (per-sample activation count, parameter sizes) with
generous factors for autograd's intermediates; they decide chunk sizes and refuse, before any
work, requests that cannot fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._resources import available_memory
from .._validate import parse_memory
from ..errors import MemoryBudgetError
from .problem import Problem

__all__ = [
    "Budget",
    "DualPlan",
    "MatrixFreePlan",
    "Pack",
    "StructuredPass",
    "format_bytes",
    "plan_dual",
    "plan_general",
    "plan_matrix_free",
    "plan_structured",
    "structured_cap",
    "work_budget",
]

# Fraction of the work budget a pack's full-N Jacobian may take (the rest is for vmap chunks).
_PACK_FRACTION = 0.5
# Default working budget: this fraction of the memory left once the outputs are allocated.
_DEFAULT_FRACTION = 0.5
_MIN_DEFAULT = 64 * 2**20
# Per-chunk transients (autograd intermediates) are capped at this fraction of what the
# sweep keeps anyway (its Jacobian buffer or cotangents), but allowed at least the floor:
# peak memory stays near "outputs + one buffer" at the cost of a few more, smaller passes.
_TRANSIENT_FRACTION = 0.1
_TRANSIENT_FLOOR = 64 * 2**20
# The matrix-free solver's transients: a smaller share (its basis and kept graphs need the rest).
_MATRIX_FREE_TRANSIENT_FRACTION = 0.05
#: The cached-layer products' share for their batched backwards (they hold nothing else).
_CACHED_TRANSIENT_FRACTION = 0.15
# The structured path holds its cotangents and activation Grams within this fraction of the
# outputs (at least the floor) even when the budget is larger: trace / mean_pairs then take
# the output rows a few at a time (only the cheap forward is repeated), so the peak stays
# near "kernel + one chunk".
_STRUCTURED_FRACTION = 0.5
_STRUCTURED_FLOOR = 128 * 2**20
# The plan fills only this fraction of that cap: the allocator's fragmentation (torch's
# transients, the Rust kernels' scratch in their threads' arenas) takes the rest.
_STRUCTURED_SLACK = 0.8


def _cap_chunk(chunk: int, per_sample: int, kept: int) -> int:
    limit = max(_TRANSIENT_FRACTION * kept, _TRANSIENT_FLOOR)
    return int(max(1, min(chunk, limit // max(1, per_sample))))


def format_bytes(n: float) -> str:
    """Human-readable size, e.g. ``'2.5 GB'``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


class Budget(int):
    """Bytes of working memory, remembering whether the user set them and where the default
    came from (the free RAM, or a cgroup limit)."""

    explicit: bool
    source: str

    def __new__(cls, value: int, explicit: bool, source: str = "the free RAM") -> Budget:
        obj = super().__new__(cls, value)
        obj.explicit = explicit
        obj.source = source
        return obj

    def describe(self) -> str:
        if self.explicit:
            return f"max_memory = {format_bytes(self)}"
        return f"the default working memory ({format_bytes(self)}, half of {self.source})"


def work_budget(
    max_memory: Any, output_bytes: int, what: str, *, suggest_reduction: bool = True
) -> Budget:
    """Bytes of working memory, beyond the outputs; refuses outputs that cannot fit in RAM.

    ``what`` describes the outputs for the error message (e.g. "the (N·C)² kernel");
    ``suggest_reduction``: whether an N×N reduction would make them smaller (a flattened
    kernel with C > 1), so the message may suggest one.
    """
    explicit = parse_memory(max_memory)
    memory = available_memory()
    available = memory.available
    if output_bytes > 0.9 * available:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(output_bytes)} but only {format_bytes(available)} of "
            f"memory is available ({memory.source}); use "
            + ("reduction='trace' or 'mean_pairs' (an N×N kernel), " if suggest_reduction else "")
            + "fewer samples or outputs, or entk_topk(...), which finds the top eigenpairs "
            "without forming the kernel"
        )
    if explicit is not None:
        return Budget(explicit, True)
    default = max(int(_DEFAULT_FRACTION * (available - output_bytes)), _MIN_DEFAULT)
    return Budget(default, False, memory.source)


@dataclass(frozen=True)
class Pack:
    """Parameters whose Jacobian is computed together (general path)."""

    names: tuple[str, ...]
    numel: int
    target: str | None
    """Layer-kernel key it accumulates into (None: the full kernel)."""
    tile: int
    """Samples per tile; ≥ N means the pack's whole Jacobian is held at once."""
    chunk: int
    """Samples per vmap call."""
    nbytes: int = 0
    """Working memory at the pack's peak: its Jacobian (tiled: two tiles and a kernel block)
    and one vmap call's transients."""


def _jacobian_transient(problem: Problem, numel: int) -> int:
    """Bytes per sample inside one vmap(jacrev) call: outputs, copies and backward values."""
    rows = problem.rows_per_sample
    act = problem.probe.activation_numel
    return problem.itemsize * (2 * rows * numel + (rows + 2) * act)


def _too_small(problem: Problem, budget: int, need: int, what: str) -> MemoryBudgetError:
    where = budget.describe() if isinstance(budget, Budget) else format_bytes(budget)
    # Only what would shrink this need: the Jacobian holds C_r rows a sample, and only
    # mean_pairs brings them to one (trace keeps all C; the metric cannot be changed for us).
    hints = ["raise max_memory"]
    if problem.rows_per_sample > 1 and not problem.reduction.mean_of_outputs:
        hints.append(
            f"use reduction='mean_pairs' (one Jacobian row a sample instead of "
            f"{problem.rows_per_sample})"
        )
    if len(problem.selected) > 1:
        hints.append("restrict params=[...] to fewer parameters")
    return MemoryBudgetError(
        f"{where} is too small: {what} needs about "
        f"{format_bytes(need)} of working memory for a single sample (dtype {problem.dtype}); "
        + ", or ".join(hints)
    )


def _make_pack(problem: Problem, names: list[str], target: str | None, budget: int) -> Pack:
    n = problem.n_samples
    it = problem.itemsize
    rows = problem.rows_per_sample
    per_kernel_row = problem.kernel_rows_per_sample
    numel = problem.numel(names)
    per = _jacobian_transient(problem, numel)
    full = n * rows * numel * it
    if full + per <= budget:
        chunk = _cap_chunk(int(min(n, max(1, (budget - full) // per))), per, full)
        return Pack(tuple(names), numel, target, n, chunk, full + chunk * per)

    def need(t: int) -> int:
        return 2 * t * rows * numel * it + (t * per_kernel_row) ** 2 * it + per

    if need(1) > budget:
        label = f"the Jacobian of {names[0]!r} ({numel} values × {rows} rows)"
        raise _too_small(problem, budget, need(1), label)
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    tile = lo
    spare = budget - 2 * tile * rows * numel * it - (tile * per_kernel_row) ** 2 * it
    chunk = _cap_chunk(int(min(tile, max(1, spare // per))), per, 2 * tile * rows * numel * it)
    return Pack(tuple(names), numel, target, tile, chunk, need(tile) - per + chunk * per)


def plan_general(
    problem: Problem, targets: Sequence[tuple[str | None, Sequence[str]]], budget: int
) -> list[Pack]:
    """Split each target's parameters into packs whose full-N Jacobian fits the budget.

    Parameters of one target are packed greedily in model order; a single parameter whose
    Jacobian alone does not fit is computed in sample tiles.
    """
    n = problem.n_samples
    it = problem.itemsize
    rows = problem.rows_per_sample
    packs: list[Pack] = []
    for target, names in targets:
        current: list[str] = []
        size = 0
        for name in names:
            numel = problem.index.infos[name].numel
            grown = n * rows * (size + numel) * it + _jacobian_transient(problem, size + numel)
            if current and grown > _PACK_FRACTION * budget:
                packs.append(_make_pack(problem, current, target, budget))
                current, size = [], 0
            current.append(name)
            size += numel
        if current:
            packs.append(_make_pack(problem, current, target, budget))
    return packs


@dataclass(frozen=True)
class StructuredPass:
    """Layers whose activations and output cotangents are gathered in one sweep.

    Untiled (``tile`` ≥ N): the cotangents of all N samples are held for ``group`` output rows
    at a time (trace / mean_pairs sum over rows, so each row group's Hadamard-Gram adds up;
    a flattened kernel takes all rows at once), next to each layer's N×N activation Gram.
    Tiled (``tile`` < N): the cotangents of two sample tiles are held at once and the kernel is
    assembled tile pair by tile pair, at the price of recomputing the second tile's cotangents
    for every first tile.
    """

    layers: tuple[Any, ...]
    chunk: int
    """Samples per forward / backward call."""
    tile: int
    """Samples per tile; ≥ N means no tiling."""
    group: int
    """Output rows per backward sweep (untiled only; all rows when tiled)."""
    rows: int
    """Output rows per sample, C_r."""
    nbytes: int = 0
    """Working memory at the sweep's peak: what it holds (inputs, cotangents, Grams) and one
    chunk's transients (0 where it was not planned here)."""

    def units(self, n: int) -> int:
        """Progress ticks: one per gathered chunk (untiled) or per gathered tile (tiled)."""
        if self.tile >= n:
            return -(-self.rows // self.group) * -(-n // self.chunk)
        tiles = -(-n // self.tile)
        return tiles * (tiles + 1) // 2


def structured_cap(output_bytes: int) -> int:
    """Working memory the structured path allows itself however large the budget (one chunk)."""
    return int(max(_STRUCTURED_FRACTION * output_bytes, _STRUCTURED_FLOOR))


def plan_structured(
    problem: Problem,
    layers: Sequence[Any],
    budget: int,
    output_bytes: int | None = None,
    *,
    layerwise: bool = False,
    tiled_only: bool = False,
) -> tuple[list[StructuredPass], list[Any]]:
    """Group structured layers into sweeps that fit; layers that cannot fit are returned apart.

    A sweep is planned within `structured_cap` of the outputs when it can be (untiled with
    the most output rows per backward, else tiled with the largest tile), else within the
    budget; a layer that fits neither way, even tiled one sample at a time, is rejected.
    ``output_bytes`` defaults to the size of the kernels (``layerwise``: one per group too).
    ``tiled_only``: plan tiled sweeps only (a cross kernel pairs X tiles with X2 tiles).
    """
    if output_bytes is None:
        count = 1 + (len(problem.groups) if layerwise else 0)
        output_bytes = count * problem.kernel_size**2 * problem.itemsize
    limits = [min(int(budget), int(_STRUCTURED_SLACK * structured_cap(output_bytes)))]
    if budget > limits[0]:
        limits.append(int(budget))

    passes: list[StructuredPass] = []
    rejected: list[Any] = []
    current: list[Any] = []
    for layer in layers:
        if _plan_sweep(problem, [layer], limits, tiled_only) is None:
            rejected.append(layer)
            continue
        trial = [*current, layer]
        grows = _tiled if tiled_only else _untiled
        if current and grows(problem, trial, limits[0]) is None:
            passes.append(_require(_plan_sweep(problem, current, limits, tiled_only)))
            trial = [layer]
        current = trial
    if current:
        passes.append(_require(_plan_sweep(problem, current, limits, tiled_only)))
    return passes, rejected


def _require(sweep: StructuredPass | None) -> StructuredPass:
    assert (
        sweep is not None
    )  # every layer of it was checked alone, and a sweep only grows if it fits
    return sweep


def _plan_sweep(
    problem: Problem, layers: Sequence[Any], limits: Sequence[int], tiled_only: bool = False
) -> StructuredPass | None:
    for limit in limits:
        untiled = None if tiled_only else _untiled(problem, layers, limit)
        sweep = untiled or _tiled(problem, layers, limit)
        if sweep is not None:
            return sweep
    return None


def structured_transient(problem: Problem, layers: Sequence[Any], rows: int) -> int:
    """Bytes per sample of one forward + batched backward over ``rows`` output rows."""
    act = problem.probe.activation_numel
    outs = sum(layer.positions * layer.out_features for layer in layers)
    return problem.itemsize * ((rows + 2) * act + 2 * rows * outs)


def _input_width(layer: Any) -> int:
    """Values a sample's inputs to ``layer`` take (T positions of d_in, at least 2)."""
    return layer.positions * max(layer.in_features, 2)


def _diagonal_width(layer: Any, rows: int) -> int:
    """Values per sample a diagonal tile holds for ``layer`` besides its gathered inputs and
    cotangents, all at once (its operands are prepared before the core's kernels run): the
    position-major input factor (a Linear's inputs and a ones column for its bias, a small
    embedding's one-hot rows) and a copy of its cotangents (layers side by side)."""
    width = layer.rule.factor_width(layer.shape)
    factor = 0 if width is None else layer.positions * (width + 1)
    return factor + rows * layer.positions * layer.out_features


def _diagonal_grams(layers: Sequence[Any]) -> int:
    """(T·n)² input Grams over (position, sample) a diagonal tile holds at once, in units of
    n²: one per layer whose rule gives no input factor (a large embedding), at least one."""
    grams = sum(
        layer.positions**2 for layer in layers if layer.rule.factor_width(layer.shape) is None
    )
    return max(grams, max(layer.positions**2 for layer in layers))


def _untiled(problem: Problem, layers: Sequence[Any], limit: int) -> StructuredPass | None:
    """All samples at once, with the most output rows per backward that fit ``limit``."""
    n = problem.n_samples
    it = problem.itemsize
    rows = problem.rows_per_sample
    # Per layer its inputs; with all rows in one sweep, a (T·N)² input Gram over positions and
    # two N×N (an all-ones weight, a Gram being formed); with row groups, an N×N per layer and
    # position pair (the cotangent Grams summed over groups) and two more.
    inputs = n * sum(_input_width(layer) for layer in layers)
    grams = sum(layer.position_pairs for layer in layers)
    squares = _diagonal_grams(layers)  # input Grams over positions
    outs = sum(layer.positions * layer.out_features for layer in layers)
    choices = range(rows, 0, -1) if problem.reduction.rows_concatenated else (rows,)
    # First choice: the most rows that leave the transients their usual room (fewer, larger
    # forward / backward calls); else the most rows that fit at all.
    for roomy in (True, False):
        for group in choices:
            square = 2 + squares if group >= rows else grams + 2
            kept = it * (inputs + square * n * n) + n * group * outs * it
            if group >= rows:  # the diagonal's operands, all prepared before its kernels
                kept += it * n * sum(_diagonal_width(layer, rows) for layer in layers)
            per = max(1, structured_transient(problem, layers, group))
            room = min(n * per, max(_TRANSIENT_FRACTION * kept, _TRANSIENT_FLOOR)) if roomy else per
            if kept + room > limit:
                continue
            chunk = _cap_chunk(int(min(n, (limit - kept) // per)), per, kept)
            return StructuredPass(tuple(layers), chunk, n, group, rows, kept + chunk * per)
    return None


def _tiled(problem: Problem, layers: Sequence[Any], limit: int) -> StructuredPass | None:
    """Two sample tiles of cotangents (all rows) at a time, the largest tile that fits."""
    n = problem.n_samples
    it = problem.itemsize
    rows = problem.rows_per_sample
    per_row = problem.kernel_rows_per_sample
    per_sample = sum(
        _input_width(layer) + rows * layer.positions * layer.out_features for layer in layers
    )
    copies = sum(_diagonal_width(layer, rows) for layer in layers)
    per = max(1, structured_transient(problem, layers, rows))
    squares = _diagonal_grams(layers)

    def kept(t: int) -> int:
        # two tiles of inputs and cotangents, a diagonal tile's prepared operands and input
        # Grams, an all-ones tile, and a cross tile of the kernel with its transpose being
        # added
        return it * (
            2 * t * per_sample + t * copies + (squares + 1) * t * t + 2 * (t * per_row) ** 2
        )

    if kept(1) + per > limit:
        return None
    lo, hi = 1, max(1, n - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept(mid) + per <= limit:
            lo = mid
        else:
            hi = mid - 1
    tile = lo
    chunk = _cap_chunk(int(min(tile, (limit - kept(tile)) // per)), per, kept(tile))
    return StructuredPass(tuple(layers), chunk, tile, rows, rows, kept(tile) + chunk * per)


@dataclass(frozen=True)
class MatrixFreePlan:
    """The memory plan of a matrix-free top-k solve (bytes, vectors, samples).

    Attributes:
        fixed: the Krylov basis and its images, the Ritz vectors and the next block (float64).
        transient: the cap on per-vector pullbacks and vmapped backward intermediates.
        columns: vectors a kept-graph product takes at once.
        chunk: samples a kept-graph product takes at once.
        room: what is left to keep graphs (or factors) in.
        cached_transient: the cached-layer products' share for their batched backwards.
        working: what a kept-graph product of ``columns`` vectors over ``chunk`` samples takes
            of ``transient`` (its parameter-sized vectors and per-sample intermediates).
    """

    fixed: int
    transient: int
    columns: int
    chunk: int
    room: int
    cached_transient: int
    working: int = 0


def plan_matrix_free(
    problem: Problem, k: int, width: int, basis_blocks: int, budget: Budget, *, cached_layer: bool
) -> MatrixFreePlan:
    """How the matrix-free solver of the top ``k`` eigenpairs with blocks of ``width`` vectors
    and a basis of ``basis_blocks`` blocks spends ``budget``; `MemoryBudgetError` when the
    basis, one vector's products and one sample do not fit. ``cached_layer``: the products are
    the cached-layer ones (their batched backwards are their only transients)."""
    size = problem.kernel_size
    it = problem.itemsize
    rows = problem.rows_per_sample
    numel = problem.numel(problem.selected)
    copies = rows if problem.reduction.rows_concatenated else 1
    # The Krylov basis Q and its images K Q (basis_blocks blocks each), the Ritz vectors and
    # their images a convergence test forms (about k + width each), V, K V and the next
    # block: float64 whatever the problem's dtype (float32 products, float64 solver).
    fixed = (2 * basis_blocks * width + 2 * (k + width) + 3 * width) * size * 8
    per_vector = 3 * copies * numel * it  # a vector's parameter-sized pullback and tangent
    per_sample = it * (copies + 3) * (problem.probe.activation_numel + rows)
    if fixed + per_vector + per_sample > budget:
        raise MemoryBudgetError(
            f"{budget.describe()} is too small for the matrix-free solver: the Krylov basis "
            f"needs {format_bytes(fixed)}, a vector's parameter-sized products "
            f"{format_bytes(per_vector)} and a sample {format_bytes(per_sample)}"
        )
    # Transients are capped like the dense paths': more, smaller torch calls rather than a
    # peak near the whole budget.
    transient = int(
        min(budget - fixed, max(_TRANSIENT_FLOOR, _MATRIX_FREE_TRANSIENT_FRACTION * budget))
    )
    columns = int(min(width, max(1, transient // (2 * per_vector))))
    chunk = int(
        min(problem.n_samples, max(1, (transient - columns * per_vector) // (per_sample * columns)))
    )
    room = max(0, budget - fixed - transient)
    cached_transient = transient
    if cached_layer:
        cached_transient = int(
            min(budget - fixed, max(transient, _CACHED_TRANSIENT_FRACTION * budget))
        )
        room = max(0, budget - fixed - cached_transient)
    working = min(transient, columns * per_vector + chunk * columns * per_sample)
    return MatrixFreePlan(fixed, transient, columns, chunk, room, cached_transient, working)


@dataclass(frozen=True)
class DualPlan:
    """The memory plan of the dual path (the Q × Q Gram Mᵀ M of the Jacobian M, R × Q).

    Attributes:
        budget: the working memory beyond the outputs.
        columns: Q, the Jacobian's columns.
        keep_all: whether the whole Jacobian is kept for mapping the eigenvectors back (else it
            is computed a second time).
        chunk: samples per Jacobian block.
        outputs: bytes of the float64 Q × Q Gram and the (R × min(k, Q)) eigenvectors.
        nbytes: working memory at the peak: the kept Jacobian and one block's transients.
    """

    budget: Budget
    columns: int
    keep_all: bool
    chunk: int
    outputs: int
    nbytes: int


def plan_dual(problem: Problem, k: int | None, max_memory: Any) -> DualPlan:
    """How the dual path spends its memory for the top ``k`` (None: all) eigenpairs;
    `MemoryBudgetError` when its outputs or one sample's Jacobian do not fit."""
    n = problem.n_samples
    size = problem.kernel_size
    rows = problem.rows_per_sample
    numel = problem.numel(problem.selected)
    q = problem.reduction.dual_columns(rows, numel)
    it = problem.itemsize
    out_cols = min(q, size) if k is None else k
    budget = work_budget(
        max_memory,
        (q * q + size * out_cols) * it,
        f"the dual {q}×{q} Gram Mᵀ M and the eigenvectors",
        suggest_reduction=problem.reduction.per_output and rows > 1,
    )
    # The Jacobian block, its float64 copy and transpose, and vmap(jacrev)'s intermediates.
    per_sample = (it + 16) * rows * numel + it * (rows + 2) * problem.probe.activation_numel
    if per_sample > budget:
        raise MemoryBudgetError(
            f"{budget.describe()} is too small for the dual path: one sample's Jacobian "
            f"needs about {format_bytes(per_sample)}"
        )
    kept = size * q * it
    keep_all = kept <= budget // 2
    spare = budget - (kept if keep_all else 0)
    chunk = int(min(n, max(1, spare // per_sample)))
    return DualPlan(
        budget=budget,
        columns=q,
        keep_all=keep_all,
        chunk=chunk,
        outputs=q * q * 8 + size * out_cols * it,
        nbytes=(kept if keep_all else 0) + chunk * per_sample,
    )
