"""Before the work: what each spectrum method would cost (seconds and peak memory), the
``method="auto"`` choice made from that, and `entk_plan`, the public dry run.

Memory comes from the planner itself (`entk_fast.ntk.plan`: the same budgets, plans and
refusals as the run), time from counting what each path does and pricing it with a few
measurements (`measure`):

* the model on the probe samples (at most 8), batched, after a warm-up, the best of two: a
  forward, one backward (one cotangent row, to the selected parameters) and a batched backward
  of 8 rows, each on one sample and on all of them, which gives a forward f, a backward b and
  a further batched row b' a sample, and the cost of a forward and of a backward call; the
  forward also measures the bytes its autograd graph holds a sample;
* once per process (dtype and thread counts): the Rust Gram's rate (`entk_fast.linalg.gram`
  on 256 × 1024), ``eigh``'s cost per n³ (n = 512), torch's matmul rate (512³) and the rate
  at which a product with a thin block reads a large matrix (64 MB).

A path costs Σ calls · (cost of a call) + Σ samples · (forwards · f + b + (rows − 1) · b')
+ flops / rate. With R the kernel's order, Q the Jacobian's columns, C_r a sample's output
rows, N samples, T a layer's positions and k eigenpairs:

* dense: the structured sweeps (a forward, its check against lone samples, C_r batched rows a
  sample) and their Grams, T²·(N²·d_in + R²·q) flops a layer, q the cotangent width (d_out,
  or C_r·d_out for ``trace``); the general packs' Jacobians (a forward and C_r rows a sample,
  again for every tile pair when tiled) and Grams, R²·Q flops; or the cached layer's C_r rows
  a sample and its pair contractions, N²·L·(L·d_in + (L + C_r)·C_r·d_out) flops. Then four
  passes over K (zeroing, checks) and ``eigh``, c·R³, or the dense top-k's block Krylov: its
  products read K once a block (flop- or memory-bound), plus the solver's own work.
* dual: the Jacobian (twice when it is not kept), its float64 Q × Q Gram, R·Q² flops,
  ``eigh`` of it, c·Q³, and the eigenvectors mapped back, 2·R·Q·k flops.
* matrix_free: 10·(k + 8) products; a product of a block of vectors is a backward and its
  transpose, 1 + 2 rows a vector (``trace``: C_r times that), through the kept graphs or a
  cached layer's suffix (plus the layer's contraction), or, for factored layers,
  4·N·T·q·(R/N + d_in) flops with q the compressed cotangent width (at most d_out); plus the
  one-time forward or the factors' gathering, a forward a product where graphs are not kept,
  the kept graphs' set-up and the Krylov solver's own work, 48 flops a basis vector, kernel
  row and product (measured, see `_KRYLOV_FLOPS`).

The constants were fitted on a few measured solves on the project's 2-core machine; the
estimates order the methods on clear cases and are often 2–4× off in seconds. The product
count is the largest uncertainty (real solves took 4–30 per (k + 8)), tiny models' rows are
overestimated (their timed batch is dominated by per-call costs), and a cached layer whose
last block runs at the read positions only (`entk_fast.ntk.readout_pruning`) has cheaper
products than the full model that is timed. ``method="auto"`` keeps the memory rule's method
(dual when Q < R, else dense when the kernel fits in half the available memory) unless
another method that fits is estimated at least twice as fast and half a second faster, so
small problems keep their old, exact choices; it measures nothing when one method fits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import linalg
from .._resources import available_memory
from .._validate import (
    check_bool,
    check_choice,
    check_k,
    check_ridge,
    check_solver_options,
    parse_memory,
)
from ..errors import InvalidArgumentError, MemoryBudgetError
from .factored import factor_bytes
from .kernel import check_model, describe_kernel
from .krylov import krylov_shape
from .layer_operator import (
    FIRST_CHUNK,
    MAX_CHUNK,
    AffineLayer,
    cached_layer_reason,
    find_affine_layer,
)
from .layers import StructuredLayer
from .plan import (
    Budget,
    format_bytes,
    plan_dual,
    plan_general,
    plan_matrix_free,
    plan_structured,
    structured_transient,
    work_budget,
)
from .problem import Problem, evaluation_mode, prepare
from .sources.cotangents import verify_layers
from .sources.layer_search import find_layers
from .vmapping import per_sample_attention, quiet_batching_fallback

__all__ = ["Calibration", "MethodEstimate", "SpectrumPlan", "entk_plan"]
# METHODS, check_method, choose_method, estimate_methods, measure: the engine's own
# (`entk_fast.ntk.spectrum` chooses its method with them)

METHODS = ("auto", "dense", "dual", "matrix_free")
"""The values of ``method=``; ``"auto"`` chooses among the other three."""

#: Kernel-vector products a top-k block Krylov typically takes, per wanted eigenpair and its
#: oversampling: 10·(k + 8), the middle of what was measured: 148–171 for the language-model
#: bench's top-25 (4.5–5.2 per vector), 640 for the p = 29 MLP's top-120 (5.0), 52–118 for
#: small models' top-5 (4–9), 300–390 for random wide MLPs' top-3 to top-5 with 128–256
#: outputs (23–30: clusters of near-repeated eigenvalues).
_PRODUCTS_PER_VECTOR = 10
#: The Krylov solver's own work per product vector, in flops per basis vector and kernel row
#: at the Gram rate (reorthogonalisation, Rayleigh–Ritz, residual tests; mostly memory-bound):
#: 48, from the Rust solver's own time in two measured solves (0.21 s for 299 products with
#: a basis of 130 vectors of order 6144; 0.22 s for 319 products, 110 vectors, order 8192).
_KRYLOV_FLOPS = 48
#: Passes over the dense kernel besides the solver's products: zeroing it, the zero-kernel
#: check, the solver's symmetry check and its copy.
_KERNEL_PASSES = 4
#: The kept-graph products' set-up measures the graphs it keeps as resident memory after full
#: garbage collections, measured at 0.15 s each (three of them) in a process holding torch.
_KEEP_SECONDS = 0.45
#: Torch's batched products of thin matrices (the factored products, the cached layer's pair
#: contractions) run at about a third of the rate of the square product that is timed.
_THIN = 3.0
#: A transpose product (a backward through a backward's graph) in backward passes.
_TRANSPOSE = 2.0
#: ``auto`` leaves the memory rule's method only for one estimated this many times faster ...
_SWITCH_FACTOR = 2.0
#: ... and at least this many seconds faster (small problems keep their exact choice).
_SWITCH_SECONDS = 0.5
#: Share of the available memory the memory rule lets the kernel (or the dual Gram) take.
_OUTPUT_SHARE = 0.5


@dataclass(frozen=True)
class Calibration:
    """The measurements an estimate is priced with.

    Attributes:
        forward: seconds a sample of the model's batched forward (with its autograd graph).
        backward: seconds a sample of one backward (one cotangent row) to the selected
            parameters.
        backward_row: seconds a sample of each further row of a batched backward (a vmapped
            backward over several cotangents, as the Jacobians and products run them).
        forward_call: seconds a forward call costs beyond its samples.
        backward_call: seconds a backward call costs beyond its samples.
        batch: samples of the timed batch (the probe's, at most 8).
        graph_bytes: bytes a sample's forward graph holds (the tensors autograd saves).
        positions: L, the positions at which the cached layer runs (1 where there is none).
        gram_rate: flops a second of `entk_fast.linalg.gram` in the problem's dtype (an R × Q
            Gram is R²·Q flops).
        gram_rate64: the same in float64 (the dual Gram, the Krylov basis).
        matmul_rate: flops a second of a torch matrix product in the problem's dtype.
        eigh_cost: seconds per n³ of `entk_fast.linalg.eigh` in the problem's dtype.
        eigh_cost64: the same in float64 (the dual path's Q × Q solve).
        memory_rate: bytes a second a large matrix's product with a thin block reads.
        timed: whether the model could be timed (else forward and backward are 0 and the
            estimates count the linear algebra only).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> cal = ef.entk_plan(model, torch.randn(4, 3)).calibration
        >>> cal.timed, cal.batch, cal.forward > 0, cal.gram_rate > 0
        (True, 4, True, True)
    """

    forward: float
    backward: float
    backward_row: float
    forward_call: float
    backward_call: float
    batch: int
    graph_bytes: int
    positions: int
    gram_rate: float
    gram_rate64: float
    matmul_rate: float
    eigh_cost: float
    eigh_cost64: float
    memory_rate: float
    timed: bool = True

    def passes(
        self,
        samples: float,
        forwards: float,
        rows: float,
        *,
        sweeps: float | None = None,
        forward_calls: float = 0,
        backward_calls: float = 0,
    ) -> float:
        """Seconds of ``forwards`` forwards and ``rows`` backward rows for each of
        ``samples`` samples, the rows in ``sweeps`` batched backwards a sample (default: one
        when there are rows), run in that many forward and backward torch calls."""
        sweeps = (1.0 if rows else 0.0) if sweeps is None else sweeps
        per_sample = (
            forwards * self.forward
            + sweeps * self.backward
            + max(0.0, rows - sweeps) * self.backward_row
        )
        return (
            forward_calls * self.forward_call
            + backward_calls * self.backward_call
            + samples * per_sample
        )


@dataclass(frozen=True)
class MethodEstimate:
    """What one method would cost on a prepared problem.

    Attributes:
        method: ``"dense"``, ``"dual"`` or ``"matrix_free"``.
        available: whether the method applies (the dual path needs Q < R and k ≤ Q; the
            matrix-free one needs k < R and no ridge).
        fits: whether its memory plan fits: the planner accepts it (no `MemoryBudgetError`)
            and, for dense and dual, the kernel or Gram takes at most half the available
            memory (the rule ``method="auto"`` has always applied).
        seconds: the estimated time (None where not available).
        memory: the estimated peak memory in bytes: outputs, working memory and the solver's
            (None where not available or refused by the planner).
        note: why it is not available or does not fit, else what dominates its time.
        paths: parameter name -> how its part is computed: ``"structured"``, ``"general"``,
            ``"cached_layer"`` (dense); ``"general"`` (dual); ``"factored"``,
            ``"cached_layer"``, ``"autograd"`` (matrix-free). A structured layer that
            misbehaves on the full batch still falls back to the general path at run time.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> dense = ef.entk_plan(model, torch.randn(4, 3), k=2)["dense"]
        >>> dense.available, dense.fits, dense.seconds > 0, dense.memory >= 8 * 8 * 4
        (True, True, True, True)
        >>> sorted(set(dense.paths.values()))
        ['structured']
    """

    method: str
    available: bool
    fits: bool
    seconds: float | None
    memory: int | None
    note: str
    paths: Mapping[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Available and fits: a method ``auto`` may choose."""
        return self.available and self.fits


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0.01:
        return "< 0.01 s"
    if seconds < 100:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _group_paths(paths: Mapping[str, str], limit: int = 3) -> str:
    """``structured: fc1.weight, fc1.bias; general: 4 parameters: a, b, c, …``."""
    groups: dict[str, list[str]] = {}
    for name, path in paths.items():
        groups.setdefault(path, []).append(name)
    parts = []
    for path, names in groups.items():
        shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
        count = f"{len(names)} parameters: " if len(names) > limit else ""
        parts.append(f"{path}: {count}{shown}")
    return "; ".join(parts)


@dataclass(frozen=True)
class SpectrumPlan:
    """What `entk_fast.entk_spectrum` would do with these arguments, before it does it.

    ``str(plan)`` prints a table; ``plan["dense"]`` is one method's `MethodEstimate`.

    Attributes:
        method: the method `entk_spectrum` would run (``"auto"`` resolved). Where no method
            fits, the one it would try and refuse with `MemoryBudgetError` (its ``fits`` is
            False), or None when ``k`` is None and neither the kernel nor the dual Gram fits.
        reason: why, with the estimates.
        k: the eigenpairs asked for (None: all).
        kernel: the kernel, e.g. ``"the kernel of 8×8 (flattened, N·C = 4·2, torch.float32)"``.
        kernel_size: R, its order.
        n_parameters: P, the parameters differentiated.
        dual_columns: Q, the Jacobian's columns (P, or C·P for ``trace``).
        available_memory: bytes of memory available, as the planner reads it.
        max_memory: the working memory asked for (bytes), or None (the default).
        estimates: one `MethodEstimate` per method (dense, dual, matrix_free).
        calibration: the measurements behind the seconds.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> plan = ef.entk_plan(nn.Linear(2, 2, bias=False), x)  # P = 4 < N·C = 6
        >>> plan.method, plan.dual_columns, plan.kernel_size
        ('dual', 4, 6)
        >>> [e.method for e in plan.estimates if e.available]
        ['dense', 'dual']
        >>> plan["matrix_free"].note
        'needs k'
    """

    method: str | None
    reason: str
    k: int | None
    kernel: str
    kernel_size: int
    n_parameters: int
    dual_columns: int
    available_memory: int
    max_memory: int | None
    estimates: tuple[MethodEstimate, ...]
    calibration: Calibration

    def __getitem__(self, method: str) -> MethodEstimate:
        for estimate in self.estimates:
            if estimate.method == method:
                return estimate
        names = ", ".join(repr(e.method) for e in self.estimates)
        raise KeyError(f"no estimate for method {method!r}; the plan has {names}")

    def __str__(self) -> str:
        what = "all eigenpairs" if self.k is None else f"top {self.k}"
        limit = (
            f"max_memory {format_bytes(self.max_memory)}"
            if self.max_memory is not None
            else "default working memory"
        )
        lines = [
            f"entk_plan: {what} of {self.kernel}, P = {self.n_parameters}; "
            f"{format_bytes(self.available_memory)} available, {limit}",
            f"method: {self.method or 'none fits'} ({self.reason})",
            "",
            f"{'method':<12} {'estimate':>9} {'peak memory':>12}  {'fits':<4}  note",
        ]
        for e in self.estimates:
            memory = "–" if e.memory is None else format_bytes(e.memory)
            fits = "yes" if e.fits else ("no" if e.available else "–")
            seconds = _format_seconds(e.seconds) if e.available else "–"
            lines.append(f"{e.method:<12} {seconds:>9} {memory:>12}  {fits:<4}  {e.note}")
        lines.append("")
        lines.append("paths:")
        for e in self.estimates:
            if e.available and e.paths:
                lines.append(f"  {e.method}: {_group_paths(e.paths)}")
        c = self.calibration
        timed = (
            f"forward {c.forward * 1e3:.3g} ms + backward {c.backward * 1e3:.3g} ms a sample, "
            f"{(c.forward_call + c.backward_call) * 1e3:.3g} ms a call (batch of {c.batch})"
            if c.timed
            else "the model could not be timed (linear algebra only)"
        )
        lines.append(
            f"calibration: {timed}; Gram {c.gram_rate / 1e9:.3g} GFLOP/s, matmul "
            f"{c.matmul_rate / 1e9:.3g} GFLOP/s, eigh {c.eigh_cost * 1e9:.3g} s per 1000³"
        )
        return "\n".join(lines)


# --- measurements ----------------------------------------------------------------------------


def _best(fn: Callable[[], object], repeats: int = 2) -> float:
    """The shortest of ``repeats`` timed calls of ``fn``, after one untimed (thread pools
    start, memory is mapped)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


@lru_cache(maxsize=8)
def _linalg_rates(dtype: str, threads: int, torch_threads: int) -> tuple[float, float, float]:
    """(Gram flops/s, eigh seconds per n³, torch matmul flops/s) in ``dtype``, measured once
    per process, dtype and thread counts, on matrices that take milliseconds."""
    del threads, torch_threads  # the cache key: the rates depend on them
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((256, 1024)).astype(dtype)
    gram = 256 * 256 * 1024 / _best(lambda: linalg.gram(wide), 3)
    n = 512
    square = rng.standard_normal((n, n)).astype(dtype)
    square = np.ascontiguousarray(square + square.T)
    eigh = _best(lambda: linalg.eigh(square), 3) / n**3
    a = torch.from_numpy(square)
    matmul = 2 * n**3 / _best(lambda: a @ a, 3)
    return gram, eigh, matmul


def _rates(dtype: np.dtype[Any]) -> tuple[float, float, float]:
    return _linalg_rates(np.dtype(dtype).name, linalg.get_num_threads(), torch.get_num_threads())


@lru_cache(maxsize=4)
def _memory_rate(torch_threads: int) -> float:
    """Bytes a second a product of a large matrix (64 MB) with a thin block reads: what
    bounds the dense top-k's products with the kernel. Measured once per thread count."""
    del torch_threads  # the cache key
    big = torch.ones((4096, 4096), dtype=torch.float32)
    thin = torch.ones((4096, 16), dtype=torch.float32)
    return big.numel() * big.element_size() / _best(lambda: big @ thin)


#: Cotangent rows of the batched backward the calibration times (how the paths run theirs).
_TIMED_ROWS = 8


def _time_passes(problem: Problem, layer: AffineLayer | None) -> dict[str, float] | None:
    """The model's costs from the probe samples: a batched forward, one backward and a
    batched backward of `_TIMED_ROWS` rows, on one sample and on all of them (the best of
    two after a warm-up), the bytes its graph holds and the cached layer's positions; None
    where the model cannot be timed."""
    names = [n for n in problem.selected if problem.params[n].is_floating_point()]
    if not names:
        return None
    where = torch.tensor(problem.probe.indices, device=problem.device)
    head = tuple(x.index_select(0, where) for x in problem.inputs)
    batch = int(head[0].shape[0])
    gen = torch.Generator(device="cpu").manual_seed(0)
    seen: dict[str, int] = {}

    def now() -> float:
        if problem.device.type == "cuda":  # kernels run asynchronously: wait for them
            torch.cuda.synchronize(problem.device)
        return time.perf_counter()

    def run(xs: tuple[Tensor, ...]) -> tuple[float, float, float, int]:
        leaves = {n: problem.params[n].detach().requires_grad_() for n in names}
        params = {**problem.params, **leaves}
        saved: dict[tuple[int, int], int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            saved[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            return t

        def hook(_module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            if layer is not None and args and isinstance(args[0], Tensor):
                seen["positions"] = max(1, args[0].numel() // (len(xs[0]) * layer.d_in))

        handle = None if layer is None else layer.module.register_forward_hook(hook)
        try:
            with (
                torch.enable_grad(),
                per_sample_attention(),
                quiet_batching_fallback(),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                start = now()
                out = problem.out_map.apply(problem.forward(xs, params))
                forward = now() - start
            backward = many = 0.0
            if out.requires_grad:
                wrt = list(leaves.values())
                cot = torch.randn((_TIMED_ROWS, *out.shape), generator=gen, dtype=out.dtype)
                cot = cot.to(out.device)
                with quiet_batching_fallback():
                    start = now()
                    torch.autograd.grad(out, wrt, cot[0], allow_unused=True, retain_graph=True)
                    backward = now() - start
                    start = now()
                    try:
                        torch.autograd.grad(out, wrt, cot, allow_unused=True, is_grads_batched=True)
                        many = now() - start
                    except RuntimeError:  # no batched backward: one row after the other
                        many = _TIMED_ROWS * backward
        finally:
            if handle is not None:
                handle.remove()
        return forward, backward, many, sum(saved.values())

    try:
        run(head)  # warm-up: lazy initialisation and allocator growth are not the model's cost
        full = [run(head) for _ in range(2)]
        one = [run(tuple(x[:1] for x in head)) for _ in range(2)] if batch > 1 else full
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the engine itself reports a forward that fails
        return None
    fwd_b, bwd_b, many_b = (min(r[i] for r in full) for i in range(3))
    fwd_1, bwd_1 = min(r[0] for r in one), min(r[1] for r in one)
    if batch > 1:
        # per sample from the difference, at least a tenth of the batch's average (noise)
        fwd = max((fwd_b - fwd_1) / (batch - 1), 0.1 * fwd_b / batch)
        bwd = max((bwd_b - bwd_1) / (batch - 1), 0.1 * bwd_b / batch)
    else:
        fwd, bwd = fwd_b, bwd_b
    rows = _TIMED_ROWS
    row = max((many_b - bwd_b) / ((rows - 1) * batch), 0.1 * many_b / (rows * batch))
    return {
        "forward": fwd,
        "backward": bwd,
        "backward_row": min(row, bwd),
        "forward_call": max(0.0, fwd_1 - fwd),
        "backward_call": max(0.0, bwd_1 - bwd),
        "batch": batch,
        "graph_bytes": max(r[3] for r in full) // batch,
        "positions": seen.get("positions", 1),
    }


def measure(problem: Problem) -> Calibration:
    """The `Calibration` of a prepared problem: its model timed on the probe samples (a
    forward and a backward on one and on all of them, after a warm-up) and the linear
    algebra's rates (measured once per process)."""
    layer, _ = find_affine_layer(problem)
    gram, eigh, matmul = _rates(problem.numpy_dtype)
    gram64, eigh64, _ = _rates(np.dtype(np.float64))
    timed = _time_passes(problem, layer) or {}
    return Calibration(
        forward=timed.get("forward", 0.0),
        backward=timed.get("backward", 0.0),
        backward_row=timed.get("backward_row", 0.0),
        forward_call=timed.get("forward_call", 0.0),
        backward_call=timed.get("backward_call", 0.0),
        batch=int(timed.get("batch", 0)),
        graph_bytes=int(timed.get("graph_bytes", 0)),
        positions=int(timed.get("positions", 1)),
        gram_rate=gram,
        gram_rate64=gram64,
        matmul_rate=matmul,
        eigh_cost=eigh,
        eigh_cost64=eigh64,
        memory_rate=_memory_rate(torch.get_num_threads()),
        timed=bool(timed),
    )


#: Prices nothing: the memory plans of `estimate_methods` without a measurement.
_UNTIMED = Calibration(0, 0, 0, 0, 0, 0, 0, 1, 1.0, 1.0, 1.0, 0, 0, 1.0, timed=False)


# --- the methods' estimates ------------------------------------------------------------------


def _products(k: int, size: int) -> int:
    """Kernel-vector products a top-k block Krylov typically takes (at most 2·R)."""
    return int(min(_PRODUCTS_PER_VECTOR * (k + 8), 2 * size))


def _dense_eigen(problem: Problem, k: int | None, cal: Calibration) -> tuple[float, int, str]:
    """(seconds, extra bytes, what) of the dense solve of the kernel."""
    size, it = problem.kernel_size, problem.itemsize
    if k is not None:
        block = k + 8
        blocks = 16 if 16 * block <= size // 4 else 10
        if 2 * blocks * block < size:  # linalg.eigh_topk's block Krylov
            products = _products(k, size)
            # each block product reads K once: flop- or memory-bound, whichever is slower
            multiply = max(
                2 * size * size * block / cal.gram_rate, size * size * it / cal.memory_rate
            )
            seconds = math.ceil(products / block) * multiply
            seconds += _KRYLOV_FLOPS * size * blocks * block * products / cal.gram_rate
            return seconds, 2 * blocks * block * size * it, "top-k Krylov"
    return cal.eigh_cost * size**3, 2 * size * size * it, "eigh"


def _structured_flops(problem: Problem, layer: StructuredLayer) -> float:
    """A structured layer's Gram flops: T²·(N²·d_in + R²·q), q its cotangent width."""
    n, size, t = problem.n_samples, problem.kernel_size, layer.positions
    q = problem.reduction.dual_columns(problem.rows_per_sample, layer.out_features)
    return float(t * t * (n * n * max(layer.in_features, 1) + size * size * q))


def _cached_dense_applies(problem: Problem, layers: list[StructuredLayer], budget: int) -> bool:
    """Whether `entk_fast.ntk.kernel.compute_kernel` takes the cached-layer kernel (the same
    test as there, for a kernel without layer kernels)."""
    if cached_layer_reason(problem) is not None:
        return False
    structured = {name for layer in layers for name in layer.names}
    if problem.probe.vmappable and set(problem.selected) <= structured:
        return False
    jacobian = problem.rows_per_sample * problem.numel(problem.selected) * problem.itemsize
    return not problem.probe.vmappable or 8 * jacobian > budget


def _tile_loads(n: int, tile: int) -> int:
    """Sample tiles a tiled square kernel loads: each tile once as the left one, and again as
    the right one of every pair (`entk_fast.ntk.assemble.assemble_square`)."""
    if tile >= n:
        return 1
    count = math.ceil(n / tile)
    return count + count * (count - 1) // 2


def _jacobians(problem: Problem, cal: Calibration, samples: int, chunk: int) -> float:
    """Seconds of the per-sample Jacobians (a forward and C_r backward rows a sample) of
    ``samples`` samples, ``chunk`` a vmapped call, or a forward and C_r backward calls a
    sample where the forward is not vmappable."""
    rows = problem.rows_per_sample
    if not problem.probe.vmappable:
        return cal.passes(
            samples, 1, rows, sweeps=rows, forward_calls=samples, backward_calls=samples * rows
        )
    calls = math.ceil(samples / max(1, chunk))
    return cal.passes(samples, 1, rows, forward_calls=calls, backward_calls=calls)


def _estimate_dense(
    problem: Problem,
    k: int | None,
    max_memory: Any,
    layers: list[StructuredLayer],
    cal: Calibration,
) -> MethodEstimate:
    n, size, it = problem.n_samples, problem.kernel_size, problem.itemsize
    rows = problem.rows_per_sample
    output = size * size * it
    try:
        budget = work_budget(
            max_memory,
            output,
            describe_kernel(problem),
            suggest_reduction=problem.reduction.per_output and rows > 1,
        )
    except MemoryBudgetError as exc:
        return MethodEstimate("dense", True, False, None, None, str(exc))
    eigen_seconds, eigen_bytes, solver = _dense_eigen(problem, k, cal)
    if _cached_dense_applies(problem, layers, budget):
        layer, _ = find_affine_layer(problem)
        assert layer is not None
        big_l, d_in = cal.positions, layer.d_in + (1 if layer.bias else 0)
        columns = max(1, min(rows, 32))
        sample = cal.graph_bytes + big_l * layer.d_in * it
        chunk = int(min(n, MAX_CHUNK, max(1, (budget // 8) // max(1, 3 * sample * columns))))
        chunks = math.ceil(n / chunk)
        pairs = n * (n + 1) / 2
        flops = 2 * pairs * big_l * (big_l * d_in + (big_l + rows) * rows * layer.d_out)
        row_calls = math.ceil(rows / columns)
        seconds = cal.passes(
            n, 1, rows, sweeps=row_calls, forward_calls=chunks, backward_calls=chunks * row_calls
        )
        seconds += flops / (cal.matmul_rate / _THIN)
        jacobian = n * rows * big_l * layer.d_out * it
        working = 2 * jacobian + n * big_l * d_in * it + min(budget // 2, n * sample)
        paths = {name: "cached_layer" for name in problem.selected}
        note = (
            f"cached layer: {rows} backward rows a sample, {flops / 1e12:.2g} TFLOP of "
            f"pair products; {solver}"
        )
    else:
        sweeps, _rejected = plan_structured(problem, layers, budget, output)
        fast = {name for sweep in sweeps for layer in sweep.layers for name in layer.names}
        rest = [name for name in problem.selected if name not in fast]
        try:
            packs = plan_general(problem, [(None, rest)] if rest else [], budget)
        except MemoryBudgetError as exc:
            return MethodEstimate("dense", True, False, None, None, str(exc))
        seconds, flops, working = 0.0, 0.0, 0
        for sweep in sweeps:
            if sweep.tile >= n:
                groups = math.ceil(rows / sweep.group)
                chunks = math.ceil(n / sweep.chunk)
                seconds += cal.passes(
                    n,
                    groups + 1,
                    rows,
                    sweeps=groups,
                    forward_calls=chunks * (groups + 1),
                    backward_calls=chunks * groups,
                )
            else:
                loads = _tile_loads(n, sweep.tile)
                calls = loads * math.ceil(sweep.tile / sweep.chunk)
                seconds += cal.passes(
                    loads * sweep.tile, 1, rows, forward_calls=calls, backward_calls=calls
                )
                seconds += n * cal.forward  # the lone-sample check, once a sample
            flops += sum(_structured_flops(problem, layer) for layer in sweep.layers)
            working = max(working, sweep.nbytes)
        for pack in packs:
            loads = _tile_loads(n, pack.tile)
            samples = n if pack.tile >= n else loads * pack.tile
            seconds += _jacobians(problem, cal, samples, pack.chunk)
            flops += size * size * problem.reduction.dual_columns(rows, pack.numel)
            working = max(working, pack.nbytes)
        seconds += flops / cal.gram_rate
        paths = {name: "structured" if name in fast else "general" for name in problem.selected}
        note = f"{flops / 1e9:.3g} GFLOP of Grams; {solver}"
    seconds += eigen_seconds + _KERNEL_PASSES * output / cal.memory_rate
    memory = output + max(working, eigen_bytes)
    fits = output <= _OUTPUT_SHARE * available_memory().available
    if not fits:
        note = (
            f"{describe_kernel(problem)} needs {format_bytes(output)}, more than half the "
            "available memory"
        )
    return MethodEstimate("dense", True, fits, seconds, memory, note, paths)


def _estimate_dual(
    problem: Problem, k: int | None, max_memory: Any, cal: Calibration
) -> MethodEstimate:
    n, size, it = problem.n_samples, problem.kernel_size, problem.itemsize
    rows = problem.rows_per_sample
    q = problem.reduction.dual_columns(rows, problem.numel(problem.selected))
    if not (q < size and (k is None or k <= q)):
        why = (
            f"the Jacobian has {q} columns, not fewer than the kernel's {size} rows"
            if q >= size
            else f"k = {k} exceeds the Jacobian's {q} columns"
        )
        return MethodEstimate("dual", False, False, None, None, why)
    try:
        plan = plan_dual(problem, k, max_memory)
    except MemoryBudgetError as exc:
        return MethodEstimate("dual", True, False, None, None, str(exc))
    times = 1 if plan.keep_all else 2
    count = q if k is None else k
    seconds = (
        times * _jacobians(problem, cal, n, plan.chunk)
        + (size * q * q + 2 * size * q * count) / cal.gram_rate64
        + cal.eigh_cost64 * q**3
    )
    fits = q * q * it <= _OUTPUT_SHARE * available_memory().available
    note = (
        f"the {q}×{q} Gram Mᵀ M, with the Jacobian "
        + ("kept" if plan.keep_all else "computed twice")
        if fits
        else f"the {q}×{q} dual Gram needs more than half the available memory"
    )
    paths = {name: "general" for name in problem.selected}
    return MethodEstimate("dual", True, fits, seconds, plan.outputs + plan.nbytes, note, paths)


def _factors_fit(problem: Problem, layers: list[StructuredLayer], room: int) -> bool:
    """Whether the matrix-free solver takes factored products for every parameter (the same
    test as `entk_fast.ntk.spectrum`'s)."""
    names = {n for layer in layers for n in layer.names}
    return set(problem.selected) <= names and factor_bytes(problem, layers) <= room


def _factored_layers(
    problem: Problem, layers: list[StructuredLayer], room: int
) -> list[StructuredLayer]:
    """The structured layers whose factors the matrix-free solver gathers: the cheapest first
    while they fit ``room`` (as `entk_fast.ntk.spectrum` chooses them)."""
    chosen, used = [], 0
    costs = [(factor_bytes(problem, [layer]), layer) for layer in layers]
    for cost, layer in sorted(costs, key=lambda pair: pair[0]):
        if used + cost <= room:
            chosen.append(layer)
            used += cost
    return chosen


def _estimate_matrix_free(
    problem: Problem,
    k: int | None,
    ridge: float,
    max_memory: Any,
    layers: list[StructuredLayer],
    structured: bool,
    cal: Calibration,
) -> MethodEstimate:
    n, size, it = problem.n_samples, problem.kernel_size, problem.itemsize
    rows = problem.rows_per_sample
    if k is None:
        return MethodEstimate("matrix_free", False, False, None, None, "needs k")
    if k >= size:
        return MethodEstimate(
            "matrix_free", False, False, None, None, f"needs k < the kernel's order {size}"
        )
    if ridge > 0:
        return MethodEstimate("matrix_free", False, False, None, None, "no ridge matrix-free")
    try:
        budget = work_budget(
            max_memory,
            size * k * it,
            f"the {size}×{k} eigenvector block",
            suggest_reduction=problem.reduction.per_output and rows > 1,
        )
        layer, _ = find_affine_layer(problem)
        cached = cached_layer_reason(problem) is None
        if (
            cached
            and structured
            and problem.probe.vmappable
            and _factors_fit(problem, layers, budget // 4)
        ):
            cached = False  # factored products, gathered once, are faster
        width, basis_blocks = krylov_shape(problem, k, None, cached)
        memory = plan_matrix_free(
            problem, k, width, basis_blocks, Budget(budget, budget.explicit), cached_layer=cached
        )
    except MemoryBudgetError as exc:
        return MethodEstimate("matrix_free", True, False, None, None, str(exc))
    products = _products(k, size)
    blocks = math.ceil(products / width)
    basis = min(products, basis_blocks * width)
    ortho = _KRYLOV_FLOPS * size * basis * products / cal.gram_rate64
    if cached:
        assert layer is not None
        sample = cal.graph_bytes + cal.positions * layer.d_in * it
        per_chunk = 3 * sample * width  # a chunk's batched backwards, a sample
        chunk = int(min(n, MAX_CHUNK, max(1, memory.cached_transient // max(1, per_chunk))))
        first = min(n, FIRST_CHUNK)  # the operator measures a sample on its first chunk
        chunks = 1 + math.ceil((n - first) / chunk)
        keep = 3 * n * sample <= memory.room
        forward_kept = n * sample <= memory.room
        per_block = cal.passes(n, 0, width * (1 + _TRANSPOSE), sweeps=2, backward_calls=2 * chunks)
        contraction = 4 * n * cal.positions * layer.d_in * layer.d_out * width
        per_block += contraction / cal.matmul_rate  # two large matrix products
        if not keep:  # rebuilt each product: the transposes (and the forwards)
            per_block += cal.passes(
                n,
                0 if forward_kept else 1,
                1,
                forward_calls=0 if forward_kept else chunks,
                backward_calls=chunks,
            )
        setup = cal.passes(n, 1, 1, forward_calls=chunks, backward_calls=chunks)
        seconds = setup + blocks * per_block + ortho
        kept = min(memory.room, n * sample * (3 if keep else 1) if forward_kept else 0)
        transient = min(memory.cached_transient, per_chunk * max(chunk, first))
        paths = {name: "cached_layer" for name in problem.selected}
        note = f"~{products} products of {width} vector{'s' if width > 1 else ''}, cached layer"
        peak = size * k * it + memory.fixed + transient + kept
        return MethodEstimate("matrix_free", True, True, seconds, peak, note, paths)
    factored = (
        _factored_layers(problem, layers, memory.room // 2)
        if structured and problem.probe.vmappable
        else []
    )
    done = {name for part in factored for name in part.names}
    rest = [name for name in problem.selected if name not in done]
    seconds, kept, transient = ortho, 0, 0
    if factored:
        kept += factor_bytes(problem, factored)
        per_sample = max(1, structured_transient(problem, factored, rows))
        chunk = int(min(n, max(1, memory.transient // per_sample)))
        # gathering: a forward, its check against lone samples and C_r backward rows a sample
        chunks = math.ceil(n / chunk)
        seconds += cal.passes(n, 2, rows, forward_calls=2 * chunks, backward_calls=chunks)
        per = problem.kernel_rows_per_sample
        flops, column = 0, 0
        for part in factored:
            # the compressed cotangent width: at most the rank of the N·R·T rows; for trace
            # each unit's C cotangents taken at rank 1 (the modular-addition MLP's are)
            q = min(part.out_features, n * per * part.positions)
            d = part.in_features + 1
            flops += 4 * n * part.positions * q * (per + d)
            column = max(column, (n * part.positions * (2 * q + 2 * d) + 2 * q * d) * it)
        seconds += products * flops / (cal.matmul_rate / _THIN)
        transient = min(memory.transient, column * width)
    if rest:
        copies = rows if problem.reduction.rows_concatenated else 1
        chunks = math.ceil(n / memory.chunk)
        groups = math.ceil(width / memory.columns)
        lone = 1 if problem.probe.vmappable else memory.columns
        left = max(0, memory.room - kept)
        graph = n * cal.graph_bytes
        calls = chunks * groups * lone
        per_block = cal.passes(
            n, 0, copies * width * (1 + _TRANSPOSE), sweeps=2 * groups, backward_calls=2 * calls
        )
        if graph > left:  # graphs rebuilt each product: a forward and a forward-mode pass
            per_block += cal.passes(n, 2 * groups, 0, forward_calls=2 * calls)
        elif 3 * graph > left:  # transposes rebuilt each product: one backward a chunk
            per_block += cal.passes(n, 0, groups, sweeps=groups, backward_calls=calls)
        seconds += cal.passes(n, 1, 0, forward_calls=chunks) + blocks * per_block
        if left > 0:
            seconds += _KEEP_SECONDS
        kept += min(left, 3 * graph)
        transient = max(transient, memory.working)
    paths = {name: "factored" if name in done else "autograd" for name in problem.selected}
    note = f"~{products} products in blocks of {width}"
    peak = size * k * it + memory.fixed + transient + kept
    return MethodEstimate("matrix_free", True, True, seconds, peak, note, paths)


def estimate_methods(
    problem: Problem,
    k: int | None,
    *,
    ridge: float = 0.0,
    max_memory: Any = None,
    structured: bool = True,
    timing: bool = True,
) -> tuple[tuple[MethodEstimate, ...], Calibration | None]:
    """The dense, dual and matrix-free estimates of a prepared problem (call inside
    `evaluation_mode`), and the calibration their seconds were priced with. Runs the planner
    and the probe-sized checks of the structured layers, never the solve. ``timing=False``:
    measure (and give seconds) only when two or more methods are usable, the only case in
    which ``auto`` compares times; otherwise the seconds are None and so is the calibration."""
    layers = verify_layers(problem, find_layers(problem)) if structured else []

    def estimates(cal: Calibration) -> tuple[MethodEstimate, ...]:
        return (
            _estimate_dense(problem, k, max_memory, layers, cal),
            _estimate_dual(problem, k, max_memory, cal),
            _estimate_matrix_free(problem, k, ridge, max_memory, layers, structured, cal),
        )

    if not timing:
        # the memory plans alone (no measurement: the seconds are not used)
        untimed = estimates(_UNTIMED)
        if sum(e.usable for e in untimed) < 2:
            return tuple(replace(e, seconds=None) for e in untimed), None
    cal = measure(problem)
    return estimates(cal), cal


def _memory_rule(problem: Problem, k: int | None) -> tuple[str | None, str]:
    """The method chosen by memory alone (what ``auto`` did before it estimated times)."""
    size, it = problem.kernel_size, problem.itemsize
    q = problem.reduction.dual_columns(problem.rows_per_sample, problem.numel(problem.selected))
    available = available_memory().available
    if q < size and (k is None or k <= q) and q * q * it <= _OUTPUT_SHARE * available:
        return "dual", f"the Jacobian has fewer columns (Q = {q}) than the kernel rows ({size})"
    if size * size * it <= _OUTPUT_SHARE * available:
        return "dense", f"the kernel fits in memory ({format_bytes(size * size * it)})"
    if k is None:
        return None, (
            f"{describe_kernel(problem)} needs {format_bytes(size * size * it)} and the dual "
            f"Gram has {q} columns; neither fits in memory. Pass k to find the top k "
            "eigenpairs matrix-free"
        )
    return "matrix_free", "neither the kernel nor the dual Gram fits in memory"


def choose_method(
    problem: Problem, k: int | None, estimates: Iterable[MethodEstimate]
) -> tuple[str | None, str]:
    """``method="auto"``: (the method, why). The memory rule's method (dual when the Jacobian
    has fewer columns than the kernel rows, else dense when the kernel fits, else
    matrix-free) unless another usable method is estimated `_SWITCH_FACTOR` times and
    `_SWITCH_SECONDS` faster; where the rule's method does not fit the memory plan (an
    explicit ``max_memory``), the fastest usable one (or the first of dual, dense and
    matrix-free when none was timed). Without a usable method, the rule's method (whose run
    then raises `MemoryBudgetError`), or None when it has none."""
    by_method = {e.method: e for e in estimates}
    default, why = _memory_rule(problem, k)
    usable = [e for e in by_method.values() if e.usable]
    if not usable:
        return default, why
    timed = [e for e in usable if e.seconds is not None]

    def others(chosen: str) -> str:
        rest = [f"{e.method} {_format_seconds(e.seconds)}" for e in timed if e.method != chosen]
        return f" (against {', '.join(rest)})" if rest else ""

    current = by_method.get(default) if default is not None else None
    if current is None or not current.usable:
        lead = ""
        if default is not None and current is not None and current.available:
            lead = f"{default} does not fit: {current.note}; "
        if not timed:
            return usable[0].method, f"{lead}{usable[0].method} is the one that fits"
        best = min(timed, key=lambda e: e.seconds or 0.0)
        return best.method, (
            f"{lead}estimated {_format_seconds(best.seconds)}{others(best.method)}"
        )
    assert default is not None
    if current.seconds is None or not timed:
        return default, why
    best = min(timed, key=lambda e: e.seconds or 0.0)
    assert best.seconds is not None
    if (
        best.method != default
        and best.seconds * _SWITCH_FACTOR <= current.seconds
        and current.seconds - best.seconds >= _SWITCH_SECONDS
    ):
        return best.method, (
            f"estimated {_format_seconds(best.seconds)}{others(best.method)}; the memory "
            f"rule's {default} ({why}) is more than {_SWITCH_FACTOR:g}× slower"
        )
    return default, f"{why}; estimated {_format_seconds(current.seconds)}{others(default)}"


def entk_plan(
    model: nn.Module,
    inputs: Any,
    k: int | None = None,
    *,
    reduction: str = "flattened",
    output_metric: Any = None,
    output_fn: Callable[[Any], Any] | None = None,
    positions: Any = None,
    params: Iterable[str] | str | None = None,
    dtype: Any = None,
    method: str = "auto",
    ridge: float = 0.0,
    tol: float | None = None,
    max_memory: int | float | str | None = None,
    structured: bool = True,
    seed: int = 0,
) -> SpectrumPlan:
    """What `entk_fast.entk_spectrum` would do with these arguments: the method, why, and each
    method's estimated time, peak memory and paths, without computing the kernel.

    Takes `entk_spectrum`'s arguments (``progress`` aside), so a call can be planned by
    renaming it. It runs the probe `entk_spectrum` runs first, the structured layers' checks
    on the probe samples and a calibration: the model's forward and one backward on up to 8
    samples, and (once per process) the Rust Gram, ``eigh`` and torch's matrix product on
    small matrices. That takes seconds at most, not the solve's minutes. The estimates count
    each path's forwards, backward rows, calls and flops and price them with those
    measurements (see `entk_fast.ntk.estimate`): they are meant to order the methods, not to
    predict the seconds (often 2–4× off), and a top-k solve is counted at a typical
    10·(k + 8) products.

    Args:
        k: how many eigenpairs (``None``: all).
        method: ``"auto"`` (the method `entk_spectrum` would choose) or the method to plan.
        tol: accepted (and checked) so that a call can be planned as it is written; it does
            not change the plan.
        seed: as ``tol``.

    Other arguments are those of `entk_fast.entk_spectrum`.

    Returns:
        A frozen `SpectrumPlan`; ``print(plan)`` shows a table, ``plan.method`` the method,
        ``plan["matrix_free"].seconds`` one estimate.

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module``, or an argument has the wrong type.
        InvalidArgumentError: what `entk_spectrum` refuses before any work (inputs, params,
            reduction, metric, k out of range, an unknown ``method``, ``method="dual"``
            where the Jacobian has as many columns as the kernel rows, ``method="matrix_free"``
            without k or with a ridge). A method that does not fit memory is reported in the
            plan (``fits``), not raised.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> plan = ef.entk_plan(model, torch.randn(4, 3), k=3)
        >>> plan.method, plan.kernel_size, plan["dense"].fits
        ('dense', 8, True)
        >>> plan["dense"].paths["0.weight"], plan["matrix_free"].paths["0.weight"]
        ('structured', 'factored')
        >>> plan["dual"].available  # P = 50 parameters, not fewer than the 8 kernel rows
        False
        >>> print(plan)  # doctest: +ELLIPSIS
        entk_plan: top 3 of the kernel of 8×8 (flattened, N·C = 4·2, torch.float32), P = 50; ...
        method: dense (the kernel fits in memory ...
    """
    check_model(model)
    structured = check_bool("structured", structured)
    check_choice("method", method, METHODS)
    eps = check_ridge(ridge)
    check_solver_options(tol=tol, seed=seed)
    limit = parse_memory(max_memory)
    with evaluation_mode(model):
        problem = prepare(
            model,
            inputs,
            reduction=reduction,
            output_metric=output_metric,
            output_fn=output_fn,
            positions=positions,
            params=params,
            dtype=dtype,
        )
        kk = check_k(k, problem.kernel_size, required=method == "matrix_free")
        check_method(problem, kk, method, eps)
        estimates, cal = estimate_methods(
            problem, kk, ridge=eps, max_memory=max_memory, structured=structured
        )
        assert cal is not None
    if method == "auto":
        chosen, reason = choose_method(problem, kk, estimates)
    else:
        chosen, reason = method, f"asked for (method={method!r})"
    return SpectrumPlan(
        method=chosen,
        reason=reason,
        k=kk,
        kernel=describe_kernel(problem),
        kernel_size=problem.kernel_size,
        n_parameters=problem.numel(problem.selected),
        dual_columns=problem.reduction.dual_columns(
            problem.rows_per_sample, problem.numel(problem.selected)
        ),
        available_memory=available_memory().available,
        max_memory=limit,
        estimates=estimates,
        calibration=cal,
    )


def check_method(problem: Problem, k: int | None, method: str, ridge: float) -> None:
    """Refuse an explicit ``method`` that cannot run on ``problem`` (before any work)."""
    size = problem.kernel_size
    q = problem.reduction.dual_columns(problem.rows_per_sample, problem.numel(problem.selected))
    if method == "dual" and not (q < size and (k is None or k <= q)):
        raise InvalidArgumentError(
            f"method='dual' needs fewer Jacobian columns than kernel rows and k ≤ {q}: here "
            f"the dual Gram is {q}×{q} and the kernel {size}×{size}"
        )
    if method == "matrix_free" and k is not None and k >= size:
        raise InvalidArgumentError(
            f"k = {k} must be smaller than the kernel's order {size} for the matrix-free "
            "solver; use entk_spectrum(..., method='dense') for the full spectrum"
        )
    if method == "matrix_free" and ridge > 0:
        raise InvalidArgumentError("ridge is not available on the matrix-free path")
