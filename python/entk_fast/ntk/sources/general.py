"""The general path: per-sample Jacobians by ``torch.func``, in chunks, streamed into Grams.

For a pack of parameters θ_p and samples n, the block J[n, :, θ_p] (n, C_r, P_p) comes from
``vmap(jacrev(f))``, where f maps the pack to one sample's reduced output R f(x_n) (C_r,).
Each sample runs alone (batch of one), so the kernel is that of the per-sample function even
for models whose samples would interact inside a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev, vmap

from .. import linalg
from ..errors import InvalidArgumentError
from .budget import Pack
from .prepare import Problem
from .probe import forward_batch
from .quiet import quiet_batching_fallback

__all__ = [
    "accumulate_pack",
    "as_kernel_rows",
    "jacobian_block",
    "sample_function",
    "vmappable_forward",
]

# Substrings of the errors torch.func raises when a forward cannot run under vmap.
_VMAP_MARKERS = ("vmap", "Batching rule", "randomness", "data-dependent control flow")


@contextmanager
def vmappable_forward() -> Iterator[None]:
    """Turn torch.func's errors about a forward that cannot be vmapped into a clear one.

    The general path runs the model on one sample at a time under ``torch.func.vmap``; random
    operations, ``.item()`` and Python control flow on tensor values cannot run there.
    """
    try:
        yield
    except RuntimeError as exc:
        message = str(exc)
        if not any(marker in message for marker in _VMAP_MARKERS):
            raise
        raise InvalidArgumentError(
            "the model's forward must be vmappable per sample: the eNTK runs it on one sample "
            "at a time under torch.func.vmap, which does not allow random operations in "
            "forward (torch.randn, dropout in train mode, ...), .item() / .tolist() on tensors, "
            "Python control flow that depends on tensor values (if x.sum() > 0, boolean-mask "
            "indexing, data-dependent routing), nor in-place updates of parameters or buffers "
            f"(e.g. Embedding(max_norm=...)); write those with torch.where or move them out of "
            f"the forward. torch said: {message.splitlines()[0] if message else type(exc).__name__}"
        ) from exc


def sample_function(problem: Problem) -> Callable[..., Tensor]:
    """f(pack, *x) -> R f(x) (C_r,): one sample's reduced output as a function of ``pack``.

    ``pack`` maps canonical names to tensors; the other parameters stay fixed.
    """

    def f(pack: Mapping[str, Tensor], *x: Tensor) -> Tensor:
        merged = dict(problem.params)
        merged.update(pack)
        out = forward_batch(
            problem.model, merged, problem.buffers, tuple(t.unsqueeze(0) for t in x)
        )
        return problem.out_map.apply(out.reshape(-1))

    return f


def jacobian_block(
    problem: Problem, names: Sequence[str], start: int, stop: int, chunk: int
) -> Tensor:
    """J[start:stop] restricted to ``names``: (stop − start, C_r, P_pack), parameters in order.

    Computed ``chunk`` samples at a time (each a ``vmap`` over samples of ``jacrev``).
    """
    f = sample_function(problem)
    jac_fn = vmap(jacrev(f), in_dims=(None, *([0] * len(problem.inputs))))
    pack = {name: problem.params[name] for name in names}
    sizes = [problem.index.infos[name].numel for name in names]
    rows = problem.rows_per_sample
    out = torch.empty((stop - start, rows, sum(sizes)), dtype=problem.dtype, device=problem.device)
    for s in range(start, stop, max(1, chunk)):
        e = min(s + max(1, chunk), stop)
        with quiet_batching_fallback(), vmappable_forward():
            jac = jac_fn(pack, *(x[s:e] for x in problem.inputs))
        offset = 0
        for name, size in zip(names, sizes, strict=True):
            out[s - start : e - start, :, offset : offset + size] = jac[name].reshape(
                e - s, rows, size
            )
            offset += size
        del jac
    return out


def as_kernel_rows(problem: Problem, block: Tensor) -> np.ndarray:
    """Arrange a Jacobian block (n, C_r, P) as kernel rows: (n·C_r, P) or, for trace, (n, C_r·P)."""
    n = block.shape[0]
    rows = block.reshape(n * block.shape[1], -1) if problem.mode == "rows" else block.reshape(n, -1)
    return rows.detach().cpu().numpy()


def accumulate_pack(
    problem: Problem, pack: Pack, target: np.ndarray, tick: Callable[[int], object]
) -> None:
    """target += alpha · J_pack J_packᵀ, tiling over samples when the pack's J does not fit."""
    n = problem.n_samples
    alpha = problem.alpha
    if pack.tile >= n:
        block = as_kernel_rows(problem, jacobian_block(problem, pack.names, 0, n, pack.chunk))
        linalg.gram_accumulate(target, block, alpha=alpha)
        tick(1)
        return
    per = problem.kernel_rows_per_sample
    tiles = [(s, min(s + pack.tile, n)) for s in range(0, n, pack.tile)]
    for i, (a, b) in enumerate(tiles):
        left = as_kernel_rows(problem, jacobian_block(problem, pack.names, a, b, pack.chunk))
        ri = slice(a * per, b * per)
        linalg.gram_accumulate(target[ri, ri], left, alpha=alpha)
        for c, d in tiles[i + 1 :]:
            right = as_kernel_rows(problem, jacobian_block(problem, pack.names, c, d, pack.chunk))
            cross = linalg.gram_cross(left, right)
            cross *= alpha
            rj = slice(c * per, d * per)
            target[ri, rj] += cross
            target[rj, ri] += cross.T
            del right, cross
        tick(1)
