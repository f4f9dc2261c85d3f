"""Kernel-vector products K v = scale · M (Mᵀ v) without forming K or J.

Mᵀ v is the gradient of Σ_n ⟨v_n, R f(x_n)⟩ (a backward over a batch of samples), and M w the
derivative of the outputs along the parameter direction w. The parameters do not change between
products, so neither does the forward pass: each chunk's forward runs once, and its autograd
graph is kept (the linearisation of f at θ, arXiv 2510.00468's eNTK being that of the model at
fixed θ). Mᵀ v is then one backward through the kept graph, and M w the transpose of that
backward (a second backward through it: M w = ∂/∂u ⟨Mᵀ u, w⟩, exact because Mᵀ u is linear in
u). Only the part of the forward that depends on the selected parameters is in the graph, so
with ``params=`` one layer, the layers before it run once for the whole solve.

The kept graphs hold the forward's saved activations; they are kept while they fit the memory
budget (measured on the second chunk), and chunks beyond it run the forward every product (a
VJP, then a forward-mode JVP). For ``trace`` the products run once per output (vmapped):
K v = (1/C) Σ_c J_c (J_cᵀ v). Each chunk's outputs and products are checked for NaN / inf, and
a forward that fails on a chunk is rerun per sample, so an error names the sample (as on the
dense paths).
"""

from __future__ import annotations

import ctypes
import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import LinAlgError
from .checks import all_finite, close, require_finite
from .problem import Problem
from .sources.general import (
    quiet_batching_fallback,
    sample_failures,
    sample_function,
    vmappable_forward,
)

__all__ = ["KernelOperator"]

Params = dict[str, Tensor]
#: A chunk's kept linearisation: Mᵀ (cotangents -> parameter-shaped) and M (the reverse).
Linearisation = tuple[Callable[[Tensor], Params], Callable[[Params], Tensor]]


def _load_forward_ad() -> None:
    """Import torch's forward-AD decompositions once, quietly.

    torch scripts them with ``torch.jit.script`` on first use of forward AD, which itself
    emits a FutureWarning about torch's internals (not the user's code).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script")
        try:
            from torch._decomp import decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - layout of a future torch
            pass


@contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """``nn.MultiheadAttention`` without its fused inference kernel, which it picks under
    ``no_grad`` in eval mode and which has no derivative for the products' VJP / JVP."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


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
    many chunks' graphs are kept once the first product has run.
    """

    def __init__(self, problem: Problem, chunk: int, columns: int = 1, keep_bytes: int = 0) -> None:
        self.problem = problem
        self.chunk = max(1, int(chunk))
        self.columns = max(1, int(columns))
        f = sample_function(problem)
        self._batched = vmap(f, in_dims=(None, *([0] * len(problem.inputs))))
        self.pack: Params = {name: problem.params[name] for name in problem.selected}
        self.n_matvec = 0
        self.keep_bytes = max(0, int(keep_bytes))
        self._kept: dict[int, Linearisation] = {}
        self._keeping = self.keep_bytes > 0
        self.kept_bytes = 0
        _load_forward_ad()

    @property
    def kept_chunks(self) -> int:
        return len(self._kept)

    @property
    def size(self) -> int:
        return self.problem.kernel_size

    def _slices(self) -> list[tuple[int, int]]:
        n = self.problem.n_samples
        return [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

    def _fn(self, start: int, stop: int) -> Callable[[Params], Tensor]:
        xs = tuple(x[start:stop] for x in self.problem.inputs)
        return lambda pack: self._batched(pack, *xs)

    def _linearise(self, start: int, stop: int) -> Linearisation:
        """Run samples ``start:stop``'s forward once and keep its graph: Mᵀ as the backward
        through it, M as the backward of that backward (Mᵀ u is linear in u, so its derivative
        along u, transposed, is M, exactly)."""
        with sdpa_kernel([SDPBackend.MATH]):  # the math backend differentiates twice
            out, pull = self._forward(start, stop)
        transpose = vjp(pull, torch.zeros_like(out))[1]
        return pull, (lambda t: transpose(t)[0])

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
        or leaves torch) would make the transpose silently wrong, not fail."""
        gen = torch.Generator(device=self.problem.device).manual_seed(0)
        direction = {
            name: torch.randn(t.shape, generator=gen, dtype=t.dtype, device=t.device)
            for name, t in self.pack.items()
        }
        with sdpa_kernel([SDPBackend.MATH]):
            forward_mode = jvp(self._fn(start, stop), (self.pack,), (direction,))[1]
        return close(made[1](direction), forward_mode)

    def _keep_graphs(self) -> None:
        """Linearise chunks in order while their graphs fit ``keep_bytes``.

        The first chunk is always kept: each product without kept graphs builds the same graph
        as a transient, so it costs no more memory than that. Its resident-memory growth also
        holds torch's one-time allocations, so the second chunk's growth per sample (at least
        a sample's outputs) predicts the others'. A model with an op that has no (correct)
        second derivative keeps none: its products take a VJP and a JVP, which report an error
        of the model's own.
        """
        self._keeping = False
        floor = self.problem.rows_per_sample * self.problem.itemsize
        per_sample = 0.0
        for index, (start, stop) in enumerate(self._slices()):
            size = stop - start
            if index >= 2 and self.kept_bytes + per_sample * size > self.keep_bytes:
                return
            measured = index < 2
            before = _resident_bytes(trim=True) if measured else 0
            if index > 0:
                made = self._linearise(start, stop)
            else:
                try:
                    made = self._linearise(start, stop)
                    trusted = self._transpose_is_exact(made, start, stop)
                except RuntimeError:  # the products without kept graphs raise what is wrong
                    return
                if not trusted:
                    return
            grown = max(0, _resident_bytes(trim=True) - before) if measured else 0
            if index == 0:
                self.kept_bytes = grown
            elif index == 1:
                per_sample = max(grown / size, floor)
                if per_sample * stop > self.keep_bytes:
                    return
                self.kept_bytes = int(per_sample * stop)
            else:
                self.kept_bytes += int(per_sample * size)
            self._kept[index] = made

    def _pullback(self, cot: Tensor, batched: bool) -> Params:
        """Mᵀ v: Σ over samples of J_nᵀ v_n; ``cot`` (N, C_r), or (B, N, C_r) when batched."""
        total: Params | None = None
        for index, (start, stop) in enumerate(self._slices()):
            kept = self._kept.get(index)
            pull = kept[0] if kept is not None else self._forward(start, stop)[1]
            part = cot[..., start:stop, :]
            grads = vmap(pull)(part) if batched else pull(part)
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
            pull = vjp(self._fn(i, i + 1), self.pack)[1]
            part = cot[..., i : i + 1, :]
            grads = (vmap(pull)(part) if batched else pull(part))[0]
            for g in grads.values():
                require_finite(g.unsqueeze(0), "jacobian", self.problem.samples_from(i))
        raise LinAlgError(
            f"a kernel-vector product overflowed on samples {start}..{stop - 1} although each "
            "sample's part is finite; rescale the model's outputs"
        )

    def _push(self, tangent: Params, batched: bool) -> Tensor:
        """M w: (N, C_r) outputs along ``tangent``, or (B, N, C_r) when batched."""
        parts = []
        for index, (start, stop) in enumerate(self._slices()):
            fn = self._fn(start, stop)

            def forward(t: Params, fn: Callable[[Params], Tensor] = fn) -> Tensor:
                # The fused CPU attention kernels have no forward-mode derivative; the math
                # backend (matmul, softmax) computes the same attention and has one.
                with sdpa_kernel([SDPBackend.MATH]):
                    return jvp(fn, (self.pack,), (t,))[1]

            kept = self._kept.get(index)
            along = kept[1] if kept is not None else forward
            part = vmap(along)(tangent) if batched else along(tangent)
            require_finite(part, "jacobian", self.problem.samples_from(start), dim=part.dim() - 2)
            parts.append(part)
        return torch.cat(parts, dim=-2)

    def matmat(self, block: np.ndarray) -> np.ndarray:
        """K V for V (R, b) (any float dtype); returns (R, b) in the problem's dtype."""
        problem = self.problem
        n, rows = problem.n_samples, problem.rows_per_sample
        vectors = torch.as_tensor(np.ascontiguousarray(np.asarray(block).T), device=problem.device)
        vectors = vectors.to(problem.dtype)  # (b, R)
        parts = []
        with torch.no_grad(), quiet_batching_fallback(), vmappable_forward(), _no_mha_fastpath():
            if self._keeping:
                self._keep_graphs()
            for start in range(0, vectors.shape[0], self.columns):
                part = vectors[start : start + self.columns]
                m = part.shape[0]
                if not problem.reduction.rows_concatenated:
                    cot = part.reshape(m, n, rows)
                    pushed = self._push(self._pullback(cot, True), True)  # (m, N, C_r)
                    parts.append(pushed.reshape(m, -1))
                else:
                    # output c carries v: cotangents (m·C_r, N, C_r), then the diagonal c = c'
                    eye = torch.eye(rows, dtype=problem.dtype, device=problem.device)
                    cot = (part[:, None, :, None] * eye[None, :, None, :]).reshape(
                        m * rows, n, rows
                    )
                    pushed = self._push(self._pullback(cot, True), True).reshape(m, rows, n, rows)
                    diagonal = torch.diagonal(pushed, dim1=1, dim2=3).sum(dim=-1)  # (m, N)
                    parts.append(diagonal * problem.kernel_scale)
        self.n_matvec += vectors.shape[0]
        out = torch.cat(parts).T.detach().cpu().numpy()
        return np.ascontiguousarray(out, dtype=problem.numpy_dtype)

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """K v for v (R,) (any float dtype); returns float64 (R,)."""
        return self.matmat(np.asarray(v).reshape(-1, 1))[:, 0].astype(np.float64)
