"""Kernel-vector products K v = scale · M (Mᵀ v) without forming K or J.

Mᵀ v is the gradient of Σ_n ⟨v_n, R f(x_n)⟩ (a backward over a batch of samples), and M w the
derivative of the outputs along the parameter direction w. The parameters do not change between
products, so neither does the forward pass: each chunk's forward runs once, and its autograd
graph is kept (the linearisation of f at θ, arXiv 2510.00468's eNTK being that of the model at
fixed θ). Mᵀ v is then one backward through the kept graph, and M w the transpose of that
backward (a second backward through it: M w = ∂/∂u ⟨Mᵀ u, w⟩, exact because Mᵀ u is linear in
u). Only the part of the forward that depends on the selected parameters is in the graph, so
with ``params=`` one layer, the layers before it run once for the whole solve.

The kept graphs hold the forward's saved activations; they are kept while this process's
resident memory, read after each chunk, fits the budget, and chunks beyond it run the forward
every product (a VJP, then a forward-mode JVP). The transpose's own graph (about twice the
forward's memory) is rebuilt each product by one unbatched backward, or kept too when every
forward graph fits and room is left. For ``trace`` the products run once per output (vmapped):
K v = (1/C) Σ_c J_c (J_cᵀ v). Each chunk's outputs and products are checked for NaN / inf, and
a forward that fails on a chunk is rerun per sample, so an error names the sample (as on the
dense paths).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from ..errors import EntkError, InvalidArgumentError, LinAlgError
from .checks import all_finite, close, require_finite
from .problem import Problem
from .sources.general import sample_failures, sample_function, warn_lone_autograd
from .vmapping import (
    NotVmappable,
    load_forward_ad,
    per_sample_attention,
    quiet_batching_fallback,
    vmappable_forward,
)

__all__ = ["KernelOperator"]

_NO_PRODUCTS = (
    "the model has an op without a forward-mode derivative (torch.func.jvp) and its backward "
    "is not itself differentiable, so no kernel-vector product M w can be formed: use "
    "entk_spectrum(..., method='dense') or method='dual' (reverse mode only), or "
    "params=[...] to leave that part's parameters out"
)

Params = dict[str, Tensor]
#: A chunk's kept linearisation: Mᵀ (cotangents -> parameter-shaped) and a zero cotangent, the
#: point at which Mᵀ's own backward (M, transposed) is taken.
Linearisation = tuple[Callable[[Tensor], Params], Tensor]


def _resident_bytes(trim: bool = False) -> int:
    """This process's resident memory; ``trim``: first hand freed heap pages back to the OS
    (glibc), so that growth measured from here is new memory, not reused free memory."""
    if trim:
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: growth may be underestimated
            pass
    return int(psutil.Process().memory_info().rss)


class KernelOperator:
    """K V for a prepared problem: ``chunk`` samples and ``columns`` vectors of V per torch call
    (one vmapped backward and one vmapped transpose each through a chunk's kept graph, or a VJP
    and a JVP where none is kept); counts its products (one per vector).

    ``keep_bytes`` caps the memory of the kept graphs (0: keep none); ``kept_chunks`` says how
    many chunks' forward graphs are kept once the first product has run, ``kept_transposes``
    how many of their transpose graphs.
    """

    def __init__(self, problem: Problem, chunk: int, columns: int = 1, keep_bytes: int = 0) -> None:
        self.problem = problem
        self.chunk = max(1, int(chunk))
        self.columns = max(1, int(columns))
        f = sample_function(problem)
        self._sample = f
        self._batched = vmap(f, in_dims=(None, *([0] * len(problem.inputs))))
        self._lone = problem.lone_autograd
        """Samples one by one (a Python loop under autograd), not vmapped: the forward proved
        not vmappable (per-sample autograd, as the dense general path falls back to)."""
        self._forward_mode = True
        """Whether forward mode (jvp) runs the model; else M w is the kept graph's transpose,
        checked against Mᵀ by the adjoint identity (weight-normalised layers have no jvp)."""
        self._started = False
        self.pack: Params = {name: problem.params[name] for name in problem.selected}
        self.n_matvec = 0
        self.keep_bytes = max(0, int(keep_bytes))
        self._kept: dict[int, Linearisation] = {}
        self._transposes: dict[int, Callable[[Params], Tensor]] = {}
        self._keeping = self.keep_bytes > 0
        self.kept_bytes = 0
        load_forward_ad()

    @property
    def kept_chunks(self) -> int:
        return len(self._kept)

    @property
    def kept_transposes(self) -> int:
        """Chunks whose transpose graph (M) is kept too; the others rebuild it per product."""
        return len(self._transposes)

    @property
    def size(self) -> int:
        return self.problem.kernel_size

    def _slices(self) -> list[tuple[int, int]]:
        n = self.problem.n_samples
        return [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

    def _fn(self, start: int, stop: int) -> Callable[[Params], Tensor]:
        xs = tuple(x[start:stop] for x in self.problem.inputs)
        if not self._lone:
            return lambda pack: self._batched(pack, *xs)
        sample = self._sample
        return lambda pack: torch.stack(
            [sample(pack, *(x[i] for x in xs)) for i in range(stop - start)]
        )

    def _map(self, fn: Callable[[Any], Tensor | Params], values: Any) -> Any:
        """``fn`` over the leading dim of ``values`` (a tensor or a dict of them): vmapped, or
        one by one and stacked where the forward is not vmappable."""
        if not self._lone:
            return vmap(fn)(values)
        count = next(iter(values.values())).shape[0] if isinstance(values, dict) else len(values)
        parts: list[Any] = [
            fn({k: v[i] for k, v in values.items()} if isinstance(values, dict) else values[i])
            for i in range(count)
        ]
        if isinstance(parts[0], dict):
            return {key: torch.stack([part[key] for part in parts]) for key in parts[0]}
        return torch.stack(parts)

    def _linearise(self, start: int, stop: int) -> Linearisation:
        """Run samples ``start:stop``'s forward once and keep its graph: Mᵀ is the backward
        through it, M the backward of that backward (`_transposed`)."""
        with per_sample_attention():  # the math backend differentiates twice
            out, pull = self._forward(start, stop)
        return pull, torch.zeros_like(out)

    @staticmethod
    def _transposed(kept: Linearisation) -> Callable[[Params], Tensor]:
        """M for a kept graph: Mᵀ u is linear in u, so the derivative of ⟨Mᵀ u, w⟩ along u is
        M w, exactly. The graph of Mᵀ's backward (one unbatched backward through the kept
        forward) holds about twice the forward graph's memory, so unless `_keep_graphs`
        found room to keep it, it is built per product and dropped after it."""
        pull, zero = kept
        transpose = vjp(pull, zero)[1]
        return lambda t: transpose(t)[0]

    def _forward(self, start: int, stop: int) -> tuple[Tensor, Callable[[Tensor], Params]]:
        """Samples ``start:stop``'s outputs R f (checked finite) and Mᵀ: u -> Σ_n J_nᵀ u_n."""
        with sample_failures(self.problem, start, stop):
            result = vjp(self._fn(start, stop), self.pack)
        out, pull = result[0], result[1]
        require_finite(out, "output", self.problem.samples_from(start))
        return out, (lambda u: pull(u)[0])

    def _transpose_is_exact(self, made: Linearisation, start: int, stop: int) -> bool:
        """M w by the kept graph's transpose equals forward-mode M w on one random direction:
        a custom autograd Function whose backward is not itself differentiable (it detaches,
        or leaves torch) would make the transpose silently wrong, not fail.

        Where forward mode cannot run the model (an op without a jvp rule, such as weight
        normalisation's), products take the transpose and this checks it by the adjoint
        identity ⟨M w, u⟩ = ⟨w, Mᵀ u⟩ on a random u instead (a transpose that misses part of
        the backward's dependence on u breaks it)."""
        gen = torch.Generator(device=self.problem.device).manual_seed(0)
        direction = {
            name: torch.randn(t.shape, generator=gen, dtype=t.dtype, device=t.device)
            for name, t in self.pack.items()
        }
        pull, zero = made
        if self._forward_mode:
            try:
                with per_sample_attention():
                    forward_mode = jvp(self._fn(start, stop), (self.pack,), (direction,))[1]
            except (EntkError, torch.OutOfMemoryError):
                raise
            except Exception:  # noqa: BLE001 - no forward-mode rule: the adjoint test below
                self._forward_mode = False
            else:
                return close(self._transposed(made)(direction), forward_mode)
        u = torch.randn(zero.shape, generator=gen, dtype=zero.dtype, device=zero.device)
        pushed = self._transposed(made)(direction)
        pulled = pull(u)
        lhs = float((pushed.double() * u.double()).sum())
        rhs = sum(float((direction[k].double() * g.double()).sum()) for k, g in pulled.items())
        norm = float(pushed.norm() * u.norm()) + sum(
            float(direction[k].norm() * g.norm()) for k, g in pulled.items()
        )
        rtol = 1e-4 if self.problem.itemsize < 8 else 1e-9
        return abs(lhs - rhs) <= rtol * (norm or 1.0)

    def _start(self) -> None:
        """Before the first product: decide how products run. The vmapped forward is tried on
        the first chunk; where it fails, samples run one by one (as the dense general path's
        per-sample autograd). Forward mode is tried too, and where it fails, M w is the kept
        graph's transpose, checked once."""
        self._started = True
        start, stop = self._slices()[0]
        if not self._lone:
            lone_because: Exception | None = None
            try:
                with vmappable_forward():
                    self._forward(start, stop)
            except NotVmappable as exc:
                if exc.random:  # a random forward has no eNTK: no fallback either
                    raise
                lone_because = exc
            except (EntkError, torch.OutOfMemoryError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - per-sample autograd decides
                lone_because = exc
            if lone_because is not None:
                self._lone = True
                self._forward(start, stop)  # its own error, if it fails too
                warn_lone_autograd(self.problem, lone_because)
        if self._keeping:
            return  # _keep_graphs checks the transpose on the first chunk
        made = self._linearise(start, stop)
        if not self._transpose_is_exact(made, start, stop) and not self._forward_mode:
            raise InvalidArgumentError(_NO_PRODUCTS)

    def _keep_graphs(self) -> None:
        """Keep what fits ``keep_bytes``: first each chunk's forward graph (a product then runs
        no forward), then, if all of those fit, each chunk's transpose graph (a product then
        also skips one unbatched backward a chunk; it holds about twice the forward graph's
        memory, so it comes second).

        The first chunk's forward graph is always kept: each product without kept graphs
        builds the same graph as a transient, so it costs no more memory than that. A model
        with an op that has no (correct) second derivative keeps none: its products take a
        VJP and a JVP, which report an error of the model's own.
        """
        self._keeping = False
        before = _resident_bytes(trim=True)

        def forward(index: int, start: int, stop: int) -> bool:
            if index > 0:
                self._kept[index] = self._linearise(start, stop)
                return True
            try:
                made = self._linearise(start, stop)
                trusted = self._transpose_is_exact(made, start, stop)
            except (EntkError, torch.OutOfMemoryError):
                raise
            except RuntimeError:  # the products without kept graphs raise what is wrong
                return False
            if trusted:
                self._kept[index] = made
            elif not self._forward_mode:
                raise InvalidArgumentError(_NO_PRODUCTS)
            return trusted

        def transpose(index: int, start: int, stop: int) -> bool:
            self._transposes[index] = self._transposed(self._kept[index])
            return True

        per_sample = self._keep_while_fits(forward, before, first_estimate=0.0)
        if self.kept_chunks == len(self._slices()):
            self._keep_while_fits(transpose, before, first_estimate=2 * per_sample)

    def _keep_while_fits(
        self, keep: Callable[[int, int, int], bool], before: int, first_estimate: float
    ) -> float:
        """Call ``keep(index, start, stop)`` on the chunks in order while the memory they take
        fits ``keep_bytes``; returns the bytes a sample took.

        The memory is this process's resident growth since ``before``, read after every chunk,
        so fragmentation and the graphs' bookkeeping count, not only their tensors. The first
        chunk's growth may hold torch's one-time allocations, so the growth per sample of the
        chunks after it predicts the next one's (at least a sample's outputs); the first chunk
        is kept if ``first_estimate`` per sample fits.
        """
        floor = self.problem.rows_per_sample * self.problem.itemsize
        base = self.kept_bytes
        first_grown, first_size, per_sample = 0, 1, float(first_estimate)
        for index, (start, stop) in enumerate(self._slices()):
            if index == 1:
                per_sample = max(first_grown / first_size, floor)
            if self.kept_bytes + per_sample * (stop - start) > self.keep_bytes:
                break
            if not keep(index, start, stop):
                break
            # at least the outputs' bytes, should resident memory not show the growth
            least = self.kept_bytes + floor * (stop - start)
            self.kept_bytes = max(least, _resident_bytes(trim=index < 2) - before)
            grown = self.kept_bytes - base
            if index == 0:
                first_grown, first_size = grown, stop - start
            else:
                per_sample = max((grown - first_grown) / (stop - first_size), floor)
        return per_sample

    def _pullback(self, cot: Tensor, batched: bool) -> Params:
        """Mᵀ v: Σ over samples of J_nᵀ v_n; ``cot`` (N, C_r), or (B, N, C_r) when batched."""
        total: Params | None = None
        for index, (start, stop) in enumerate(self._slices()):
            kept = self._kept.get(index)
            pull = kept[0] if kept is not None else self._forward(start, stop)[1]
            part = cot[..., start:stop, :]
            grads = self._map(pull, part) if batched else pull(part)
            del pull
            if not all(all_finite(g) for g in grads.values()):
                self._blame(start, stop, cot, batched)
            if total is None:
                total = dict(grads)
            else:
                for key, value in grads.items():
                    total[key] += value
            del grads
        assert total is not None
        return total

    def _blame(self, start: int, stop: int, cot: Tensor, batched: bool) -> None:
        """Name the sample of ``start:stop`` whose Jacobian made Mᵀ v non-finite (one pullback
        per sample; error path only)."""
        for i in range(start, stop):
            raw = vjp(self._fn(i, i + 1), self.pack)[1]

            def pull(u: Tensor, raw: Callable[[Tensor], tuple[Params]] = raw) -> Params:
                return raw(u)[0]

            part = cot[..., i : i + 1, :]
            grads = self._map(pull, part) if batched else pull(part)
            for g in grads.values():
                require_finite(g.unsqueeze(0), "jacobian", self.problem.samples_from(i))
        raise LinAlgError(
            f"a kernel-vector product overflowed on samples {start}..{stop - 1} although each "
            "sample's part is finite; rescale the model's outputs"
        )

    def _push(self, tangent: Params, batched: bool) -> Tensor:
        """M w: (N, C_r) outputs along ``tangent``, or (B, N, C_r) when batched.

        Each chunk's part is copied into the result at once and freed: parts that outlived
        their chunk would sit between the chunks' freed transients and hold them resident
        (the heap grew by about 1 MB a sample on the language-model stand-in)."""
        result: Tensor | None = None
        for index, (start, stop) in enumerate(self._slices()):
            fn = self._fn(start, stop)

            def forward(t: Params, fn: Callable[[Params], Tensor] = fn) -> Tensor:
                # The fused CPU attention kernels have no forward-mode derivative; the math
                # backend (matmul, softmax) computes the same attention and has one.
                with per_sample_attention():
                    return jvp(fn, (self.pack,), (t,))[1]

            kept = self._kept.get(index)
            if kept is None and not self._forward_mode:
                # no forward mode: the transpose of this chunk's graph, built for this product
                kept = self._linearise(start, stop)
            along = self._transposes.get(index) or (
                self._transposed(kept) if kept is not None else forward
            )
            part = self._map(along, tangent) if batched else along(tangent)
            require_finite(part, "jacobian", self.problem.samples_from(start), dim=part.dim() - 2)
            if result is None:
                shape = (*part.shape[:-2], self.problem.n_samples, part.shape[-1])
                result = part.new_empty(shape)
            result[..., start:stop, :] = part
            del part
        assert result is not None
        return result

    def _engine(self) -> contextlib.ExitStack:
        """The contexts every product runs in (no outer graph, vmapped forwards, the math
        attention), with the chunks' graphs started and kept on first use."""
        stack = contextlib.ExitStack()
        for context in (
            torch.no_grad(),
            quiet_batching_fallback(),
            vmappable_forward(),
            per_sample_attention(),
        ):
            stack.enter_context(context)
        try:
            if not self._started:
                self._start()
            if self._keeping:
                self._keep_graphs()
        except BaseException:
            stack.close()
            raise
        return stack

    def _cotangents(self, part: Tensor) -> Tensor:
        """The cotangents of ``part`` (m, R): (m, N, C_r), or for a reduction that concatenates
        a sample's rows (m·C_r, N, C_r) with output c carrying v."""
        problem = self.problem
        n, rows = problem.n_samples, problem.rows_per_sample
        m = part.shape[0]
        if not problem.reduction.rows_concatenated:
            return part.reshape(m, n, rows)
        eye = torch.eye(rows, dtype=problem.dtype, device=problem.device)
        return (part[:, None, :, None] * eye[None, :, None, :]).reshape(m * rows, n, rows)

    def _outputs(self, pushed: Tensor, m: int) -> Tensor:
        """(m, R) from the pushed (m, N, C_r), or from (m·C_r, N, C_r): the diagonal c = c'."""
        problem = self.problem
        if not problem.reduction.rows_concatenated:
            return pushed.reshape(m, -1)
        n, rows = problem.n_samples, problem.rows_per_sample
        square = pushed.reshape(m, rows, n, rows)
        return torch.diagonal(square, dim1=1, dim2=3).sum(dim=-1) * problem.kernel_scale

    def _vectors(self, block: np.ndarray) -> Tensor:
        vectors = torch.as_tensor(
            np.ascontiguousarray(np.asarray(block).T), device=self.problem.device
        )
        return vectors.to(self.problem.dtype)  # (b, R)

    def matmat(self, block: np.ndarray) -> np.ndarray:
        """K V for V (R, b) (any float dtype); returns (R, b) in the problem's dtype."""
        vectors = self._vectors(block)
        parts = []
        with self._engine():
            for start in range(0, vectors.shape[0], self.columns):
                part = vectors[start : start + self.columns]
                pushed = self._push(self._pullback(self._cotangents(part), True), True)
                parts.append(self._outputs(pushed, part.shape[0]))
        self.n_matvec += vectors.shape[0]
        out = torch.cat(parts).T.detach().cpu().numpy()
        return np.ascontiguousarray(out, dtype=self.problem.numpy_dtype)

    def pull(self, block: np.ndarray) -> list[np.ndarray]:
        """Mᵀ V for V (R, b) over this problem's samples: one parameter-shaped array per
        selected parameter (in ``problem.selected`` order), each (b', *shape) with b' = b (or
        b·C_r for a reduction that concatenates a sample's rows). Sums over samples, so the
        parts of disjoint sample sets add up to the whole; K V = `push` of that sum."""
        vectors = self._vectors(block)
        names = list(self.problem.selected)
        columns: list[list[Tensor]] = [[] for _ in names]
        with self._engine():
            for start in range(0, vectors.shape[0], self.columns):
                grads = self._pullback(
                    self._cotangents(vectors[start : start + self.columns]), True
                )
                for column, name in zip(columns, names, strict=True):
                    column.append(grads[name])
        return [torch.cat(column).detach().cpu().numpy() for column in columns]

    def push(self, parts: list[np.ndarray]) -> np.ndarray:
        """M W for the summed parts of `pull`: returns (R, b) in the problem's dtype."""
        problem = self.problem
        names = list(problem.selected)
        tensors = [torch.as_tensor(p, device=problem.device).to(problem.dtype) for p in parts]
        rows = problem.rows_per_sample if problem.reduction.rows_concatenated else 1
        b = tensors[0].shape[0] // rows
        out = []
        with self._engine():
            for start in range(0, b, self.columns):
                m = min(self.columns, b - start)
                tangent = {
                    name: t[start * rows : (start + m) * rows]
                    for name, t in zip(names, tensors, strict=True)
                }
                out.append(self._outputs(self._push(tangent, True), m))
        self.n_matvec += b
        flat = torch.cat(out).T.detach().cpu().numpy()
        return np.ascontiguousarray(flat, dtype=problem.numpy_dtype)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """K v for v (R,) (any float dtype); returns float64 (R,)."""
        return self.matmat(np.asarray(v).reshape(-1, 1))[:, 0].astype(np.float64)
