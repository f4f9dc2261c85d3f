"""The general path: per-sample Jacobian blocks by ``torch.func`` (vmap of jacrev), in chunks.

For a pack of parameters θ_p and samples n, the block J[n, :, θ_p] (n, C_r, P_p) comes from
``vmap(jacrev(f))``, where f maps the pack to one sample's reduced output R f(x_n) (C_r,).
Each sample runs alone (batch of one), so the kernel is that of the per-sample function even
for models whose samples would interact inside a batch. Each chunk's outputs and Jacobian go
through the one NaN / inf check (``checks.require_finite``), and a forward that fails on a
chunk is rerun sample by sample, so errors name the sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor
from torch.func import jacrev, vmap

from ... import linalg
from ...errors import EntkError, InvalidArgumentError
from ..checks import StructuredFallback, require_finite
from ..plan import Pack
from ..probe import failing_sample, forward_batch
from ..problem import Problem
from ..vmapping import (
    NotVmappable,
    per_sample_attention,
    quiet_batching_fallback,
    vmappable_forward,
)

__all__ = [
    "GeneralSource",
    "jacobian_block",
    "sample_failures",
    "sample_function",
    "warn_lone_autograd",
]


@contextmanager
def sample_failures(problem: Problem, start: int, stop: int) -> Iterator[None]:
    """Name the sample when the model's forward fails on samples ``start:stop``.

    A forward that runs on the probe samples may still fail on another (an embedding index
    out of range, a shape that only one sample has); the failing chunk's samples are then
    run alone, and the first that fails is named. Errors of the package itself, memory
    errors and a failure no lone sample reproduces (a vmap limitation) pass unchanged.
    """
    try:
        yield
    except (EntkError, StructuredFallback, torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        found = failing_sample(
            problem.model,
            problem.params,
            problem.buffers,
            tuple(x[start:stop] for x in problem.inputs),
            call=problem.call,
        )
        if found is None:
            raise
        i, error = found
        shapes = ", ".join(f"{tuple(x.shape[1:])} {x.dtype}" for x in problem.inputs)
        raise InvalidArgumentError(
            f"the model's forward failed on {problem.sample_name(start + i)} (run alone; "
            f"per-sample input shapes {shapes}): {type(error).__name__}: {error}"
        ) from exc


def sample_function(problem: Problem) -> Callable[..., Tensor]:
    """f(pack, *x) -> R f(x) (C_r,): one sample's reduced output as a function of ``pack``.

    ``pack`` maps canonical names to tensors; the other parameters stay fixed.
    """

    def f(pack: Mapping[str, Tensor], *x: Tensor) -> Tensor:
        merged = dict(problem.params)
        merged.update(pack)
        out = forward_batch(
            problem.model, merged, problem.buffers, tuple(t.unsqueeze(0) for t in x), problem.call
        )
        return problem.out_map.apply(out.reshape(-1))

    return f


def jacobian_block(
    problem: Problem, names: Sequence[str], start: int, stop: int, chunk: int
) -> Tensor:
    """J[start:stop] restricted to ``names``: (stop − start, C_r, P_pack), parameters in order.

    Computed ``chunk`` samples at a time (each a ``vmap`` over samples of ``jacrev``); a
    sample whose output or Jacobian is NaN or infinite, or whose forward fails, is named
    in an `InvalidArgumentError`.
    """
    f = sample_function(problem)

    def with_output(pack: Mapping[str, Tensor], *x: Tensor) -> tuple[Tensor, Tensor]:
        y = f(pack, *x)
        return y, y

    jac_fn = vmap(jacrev(with_output, has_aux=True), in_dims=(None, *([0] * len(problem.inputs))))
    pack = {name: problem.params[name] for name in names}
    sizes = [problem.index.infos[name].numel for name in names]
    rows = problem.rows_per_sample
    out = torch.empty((stop - start, rows, sum(sizes)), dtype=problem.dtype, device=problem.device)
    for s in range(start, stop, max(1, chunk)):
        e = min(s + max(1, chunk), stop)
        if problem.lone_autograd:
            jac, y = _lone_jacobians(problem, names, s, e)
        else:
            try:
                with (
                    sample_failures(problem, s, e),
                    quiet_batching_fallback(),
                    vmappable_forward(),
                    per_sample_attention(),
                ):
                    jac, y = jac_fn(pack, *(x[s:e] for x in problem.inputs))
            except NotVmappable as exc:
                if exc.random:
                    raise
                warn_lone_autograd(problem, exc)
                jac, y = _lone_jacobians(problem, names, s, e)
            except (EntkError, StructuredFallback, torch.OutOfMemoryError, MemoryError):
                raise
            except Exception as exc:
                # vmap failed where each sample's forward runs (an op whose batching rule
                # fails, e.g. the recurrent layers' in-place updates in float64): per-sample
                # autograd decides, whatever torch's message says. If it fails too, its own
                # error (naming the sample where the forward fails) is the one to see.
                jac, y = _lone_jacobians(problem, names, s, e)
                warn_lone_autograd(problem, exc)
        require_finite(y, "output", problem.samples_from(s))
        offset = 0
        for name, size in zip(names, sizes, strict=True):
            part = jac[name].reshape(e - s, rows, size)
            require_finite(part, "jacobian", problem.samples_from(s))
            out[s - start : e - start, :, offset : offset + size] = part
            offset += size
        del jac, y
    return out


def warn_lone_autograd(problem: Problem, reason: Exception) -> None:
    """Switch the problem to per-sample autograd, with one warning that says why and the cost."""
    problem.lone_autograd = True
    if isinstance(reason, NotVmappable):
        why = str(reason).split("torch said: ")[-1]
    else:
        lines = str(reason).splitlines()
        why = f"{type(reason).__name__}: {lines[0] if lines else ''}"
    warnings.warn(
        "the model's forward cannot run under torch.func.vmap (" + why + "); the eNTK is "
        "computed exactly with per-sample autograd instead: one sample at a time (for the "
        "dense kernel one forward and C_r backward passes a sample, for top-k a forward and "
        "backward a sample and product), much slower than the vmapped path. If the forward "
        "draws random numbers, the kernel is that of one draw.",
        UserWarning,
        stacklevel=2,
    )


def _lone_jacobians(
    problem: Problem, names: Sequence[str], start: int, stop: int
) -> tuple[dict[str, Tensor], Tensor]:
    """({name: J[start:stop] (n, C_r, *shape)}, R f (n, C_r)) by plain autograd, one sample at a
    time: the exact fallback for forwards that cannot be vmapped (``.item()``, data-dependent
    control flow)."""
    rows = problem.rows_per_sample
    grads: dict[str, list[Tensor]] = {name: [] for name in names}
    outputs = []
    for i in range(start, stop):
        leaves = {name: problem.params[name].detach().clone().requires_grad_() for name in names}
        params = {**problem.params, **leaves}
        with torch.enable_grad(), sample_failures(problem, i, i + 1):
            out = forward_batch(
                problem.model,
                params,
                problem.buffers,
                tuple(x[i : i + 1] for x in problem.inputs),
                problem.call,
            )
            y = problem.out_map.apply(out.reshape(-1))
            per_row: list[tuple[Tensor | None, ...]] = []
            for c in range(rows):
                per_row.append(
                    torch.autograd.grad(
                        y[c],
                        list(leaves.values()),
                        retain_graph=c < rows - 1,
                        allow_unused=True,
                    )
                )
        for k, name in enumerate(names):
            zero = torch.zeros_like(leaves[name])
            stacked = [zero if g[k] is None else g[k] for g in per_row]
            grads[name].append(torch.stack(stacked))  # type: ignore[arg-type]
        outputs.append(y.detach())
    return {name: torch.stack(parts) for name, parts in grads.items()}, torch.stack(outputs)


class GeneralSource:
    """A pack of parameters on the general path as a tile source: K += scale · M Mᵀ."""

    def __init__(self, problem: Problem, pack: Pack, target: np.ndarray) -> None:
        self.problem = problem
        self.pack = pack
        self.target = target

    def load(self, start: int, stop: int, *, check: bool) -> np.ndarray:
        """Rows of M for samples ``start:stop``: (n·C_r, P) or, concatenated, (n, C_r·P)."""
        block = jacobian_block(self.problem, self.pack.names, start, stop, self.pack.chunk)
        return self.problem.as_kernel_rows(block)

    def add_diagonal(self, tile: np.ndarray, rows: slice) -> None:
        linalg.gram_accumulate(self.target[rows, rows], tile, alpha=self.problem.kernel_scale)

    def cross(self, left: np.ndarray, right: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        block = linalg.gram_cross(left, right)
        block *= self.problem.kernel_scale
        yield self.target, block

    def add_whole(self, tick: Callable[[int], object]) -> None:
        self.add_diagonal(self.load(0, self.problem.n_samples, check=True), slice(None))
        tick(1)
