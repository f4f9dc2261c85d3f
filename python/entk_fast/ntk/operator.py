"""Kernel-vector products K v = scale · M (Mᵀ v) without forming K or J (one VJP, one JVP).

Mᵀ v is the gradient of Σ_n ⟨v_n, R f(x_n)⟩ (one backward over a batch of samples), and M w is
a forward-mode derivative along the parameter direction w. For ``trace`` the products run
once per output (vmapped): K v = (1/C) Σ_c J_c (J_cᵀ v). Each chunk's outputs and products are
checked for NaN / inf, and a forward that fails on a chunk is rerun per sample, so an error
names the sample (as on the dense paths).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import LinAlgError
from .checks import all_finite, require_finite
from .problem import Problem
from .sources.general import (
    quiet_batching_fallback,
    sample_failures,
    sample_function,
    vmappable_forward,
)

__all__ = ["KernelOperator"]

Params = dict[str, Tensor]


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


class KernelOperator:
    """K V for a prepared problem: ``chunk`` samples and ``columns`` vectors of V per torch call
    (one vmapped VJP and one vmapped JVP each); counts its products (one per vector)."""

    def __init__(self, problem: Problem, chunk: int, columns: int = 1) -> None:
        self.problem = problem
        self.chunk = max(1, int(chunk))
        self.columns = max(1, int(columns))
        f = sample_function(problem)
        self._batched = vmap(f, in_dims=(None, *([0] * len(problem.inputs))))
        self.pack: Params = {name: problem.params[name] for name in problem.selected}
        self.n_matvec = 0
        _load_forward_ad()

    @property
    def size(self) -> int:
        return self.problem.kernel_size

    def _slices(self) -> list[tuple[int, int]]:
        n = self.problem.n_samples
        return [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]

    def _fn(self, start: int, stop: int) -> Callable[[Params], Tensor]:
        xs = tuple(x[start:stop] for x in self.problem.inputs)
        return lambda pack: self._batched(pack, *xs)

    def _pullback(self, cot: Tensor, batched: bool) -> Params:
        """Mᵀ v: Σ over samples of J_nᵀ v_n; ``cot`` (N, C_r), or (B, N, C_r) when batched."""
        total: Params | None = None
        for start, stop in self._slices():
            with sample_failures(self.problem, start, stop):
                result = vjp(self._fn(start, stop), self.pack)
            out, pull = result[0], result[1]
            require_finite(out, "output", self.problem.samples_from(start))
            part = cot[..., start:stop, :]
            grads = (vmap(pull)(part) if batched else pull(part))[0]
            if not all(all_finite(g) for g in grads.values()):
                self._blame(start, stop, cot, batched)
            if total is None:
                total = dict(grads)
            else:
                for key, value in grads.items():
                    total[key] += value
            del pull, grads
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
        for start, stop in self._slices():
            fn = self._fn(start, stop)

            def forward(t: Params, fn: Callable[[Params], Tensor] = fn) -> Tensor:
                # The fused CPU attention kernels have no forward-mode derivative; the math
                # backend (matmul, softmax) computes the same attention and has one.
                with sdpa_kernel([SDPBackend.MATH]):
                    return jvp(fn, (self.pack,), (t,))[1]

            part = vmap(forward)(tangent) if batched else forward(tangent)
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
