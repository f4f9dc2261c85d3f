"""``empirical_ntk``: the dense eNTK of a PyTorch model, and the ``EmpiricalNTK`` result."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ..errors import InvalidTypeError
from .budget import plan_general, plan_structured, work_budget
from .jacobian import accumulate_pack
from .layout import flatten_outputs, unflatten_outputs
from .prepare import Problem, evaluation_mode, prepare
from .progress import progress_bar
from .structured import (
    StructuredFallback,
    StructuredLayer,
    accumulate_pass,
    find_layers,
    verify_layers,
)

if TYPE_CHECKING:
    from .spectrum import NTKSpectrum

__all__ = ["EmpiricalNTK", "compute_kernel", "empirical_ntk"]


@dataclass(frozen=True, eq=False)
class EmpiricalNTK:
    """An empirical NTK and how it was computed.

    ``kernel`` is (N·C, N·C) for ``flattened`` (row = n·C + c) and (N, N) for ``trace`` and
    ``mean_pairs``; ``layer_kernels`` (``layerwise=True``) has one kernel of the same shape per
    parameter group, and they sum to ``kernel``.
    """

    kernel: np.ndarray
    layer_kernels: dict[str, np.ndarray]
    n_samples: int
    n_outputs: int
    """C, the model's outputs per sample (its output flattened)."""
    reduction: str
    parameter_groups: dict[str, tuple[str, ...]]
    """Group name -> canonical parameter names (module paths by default)."""
    output_metric: np.ndarray | None
    """The metric S (C, C) that weighted the outputs, or None."""
    paths: dict[str, str] = field(default_factory=dict)
    """Parameter name -> ``"structured"`` (Linear/Embedding fast path) or ``"general"``."""
    n_parameters: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape)

    def unflatten(self, v: Any) -> np.ndarray:
        """Eigenvector(s) of a flattened kernel as (N, C) or (N, C, k); [n, c] = row n·C + c."""
        return unflatten_outputs(v, self.n_samples, self.n_outputs, self.reduction)

    def flatten(self, u: Any) -> np.ndarray:
        """(N, C[, k]) -> (N·C[, k]), the inverse of :meth:`unflatten`."""
        return flatten_outputs(u, self.n_samples, self.n_outputs, self.reduction)

    def spectrum(self, k: int | None = None, *, ridge: float = 0.0) -> NTKSpectrum:
        """Eigenpairs (descending) of this kernel; see :func:`entk_fast.entk_spectrum`."""
        from .spectrum import spectrum_of_kernel

        return spectrum_of_kernel(self, k, ridge=ridge)


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def describe_kernel(problem: Problem, count: int = 1) -> str:
    size = problem.kernel_size
    what = (
        f"N·C = {problem.n_samples}·{problem.rows_per_sample}"
        if problem.mode == "rows" and problem.rows_per_sample > 1
        else f"N = {problem.n_samples}"
    )
    many = f"{count} kernels" if count > 1 else "the kernel"
    return f"{many} of {size}×{size} ({problem.reduction}, {what}, {problem.dtype})"


def compute_kernel(
    problem: Problem,
    *,
    layerwise: bool,
    max_memory: Any,
    structured: bool,
    progress: bool,
) -> EmpiricalNTK:
    """Plan, then assemble the kernel (and layer kernels) of a prepared problem."""
    size = problem.kernel_size
    count = 1 + (len(problem.groups) if layerwise else 0)
    output_bytes = count * size * size * problem.itemsize
    budget = work_budget(
        max_memory,
        output_bytes,
        describe_kernel(problem, count),
        suggest_reduction=problem.reduction == "flattened" and problem.rows_per_sample > 1,
    )

    layers = verify_layers(problem, find_layers(problem)) if structured else []
    while True:
        try:
            return _assemble(problem, layers, budget, output_bytes, layerwise, progress)
        except StructuredFallback as exc:
            # A layer misbehaved on the full batch: start over with it on the general path.
            kept = [layer for layer in layers if layer.path not in exc.paths]
            layers = kept if len(kept) < len(layers) else []


def _assemble(
    problem: Problem,
    layers: list[StructuredLayer],
    budget: int,
    output_bytes: int,
    layerwise: bool,
    progress: bool,
) -> EmpiricalNTK:
    size = problem.kernel_size
    sweeps, _rejected = plan_structured(  # the rejected take the general path
        problem, layers, budget, output_bytes, layerwise=layerwise
    )
    fast = {name for sweep in sweeps for layer in sweep.layers for name in layer.names}
    group_of = {name: key for key, names in problem.groups.items() for name in names}
    targets: list[tuple[str | None, list[str]]]
    if layerwise:
        targets = [
            (key, [name for name in names if name not in fast])
            for key, names in problem.groups.items()
        ]
    else:
        targets = [(None, [name for name in problem.selected if name not in fast])]
    packs = plan_general(problem, [(key, names) for key, names in targets if names], budget)

    dtype = problem.numpy_dtype
    kernel = np.zeros((size, size), dtype=dtype)
    layer_kernels = (
        {key: np.zeros((size, size), dtype=dtype) for key in problem.groups} if layerwise else {}
    )
    target_of: Callable[[str], np.ndarray] = (
        (lambda name: layer_kernels[group_of[name]]) if layerwise else (lambda name: kernel)
    )
    units = sum(sweep.units(problem.n_samples) for sweep in sweeps)
    units += sum(
        1 if pack.tile >= problem.n_samples else -(-problem.n_samples // pack.tile)
        for pack in packs
    )
    with progress_bar(progress, units, "eNTK", unit="block") as bar:
        for sweep in sweeps:
            accumulate_pass(problem, sweep, target_of, bar.update)
        for pack in packs:
            target = kernel if pack.target is None else layer_kernels[pack.target]
            accumulate_pack(problem, pack, target, bar.update)
    if layerwise:
        for part in layer_kernels.values():
            kernel += part
    return EmpiricalNTK(
        kernel=kernel,
        layer_kernels=layer_kernels,
        n_samples=problem.n_samples,
        n_outputs=problem.n_outputs,
        reduction=problem.reduction,
        parameter_groups=dict(problem.groups),
        output_metric=problem.metric,
        paths={name: "structured" if name in fast else "general" for name in problem.selected},
        n_parameters=problem.numel(problem.selected),
    )


def empirical_ntk(
    model: nn.Module,
    inputs: Any,
    *,
    reduction: str = "flattened",
    output_metric: Any = None,
    layerwise: bool = False,
    groups: Mapping[str, Iterable[str] | str] | None = None,
    params: Iterable[str] | str | None = None,
    dtype: Any = None,
    max_memory: int | float | str | None = None,
    structured: bool = True,
    progress: bool = True,
) -> EmpiricalNTK:
    """The empirical NTK K = J Jᵀ of ``model`` on ``inputs``, reduced over outputs.

    Args:
        model: any ``nn.Module`` whose forward is a function of its parameters. It is run in
            eval mode (a warning is given when that changes BatchNorm / dropout layers);
            each sample is treated alone.
        inputs: a tensor (N, ...) or a tuple of tensors sharing dim 0 (several positional
            inputs). Integer inputs (token ids) are passed as they are; floating ones are
            cast to ``dtype``. The model's output (N, ...) is flattened to C values a sample.
        reduction: ``"flattened"`` (N·C, N·C) with row = n·C + c; ``"trace"`` (N, N), the mean
            over outputs of K[:, :, c, c]; ``"mean_pairs"`` (N, N), the mean over all output
            pairs (the eNTK of the mean output).
        output_metric: None, a weight vector w (C,) or a PSD matrix S (C, C): every sample's
            Jacobian J_n (C, P) is replaced by S^½ J_n (S = diag w), i.e.
            K_S = (I ⊗ S^½) K (I ⊗ S^½), before the reduction.
        layerwise: also return one kernel per parameter group; they sum to the kernel.
        groups: parameter groups for ``layerwise=True``, ``{name: [parameter names or module
            paths]}``; they must partition the parameters. Default: one group per module
            holding parameters (``"fc1"``, ``"blocks.0.attn"``; a root-level parameter is its
            own group). Without ``layerwise=True`` they have no effect: a ``UserWarning``
            says so and they are ignored (not validated).
        params: restrict θ to these parameter names / module paths (default: every parameter
            with ``requires_grad=True``).
        dtype: float32 or float64 for the whole computation (default: the model's): a torch
            or numpy dtype, or a string read as numpy reads it (``"double"``, ``"float"``
            and ``float`` mean float64, ``"single"`` float32).
        max_memory: working memory beyond the kernels, bytes or e.g. ``"4GB"`` (default: half
            of the RAM available once the kernels are allocated). Raises
            ``MemoryBudgetError`` before any work when the kernels or one chunk cannot fit.
        structured: use the exact Linear/Embedding fast path where it applies.
        progress: show a progress bar (only when stderr is a terminal).

    Returns:
        An :class:`EmpiricalNTK`.
    """
    check_model(model)
    if groups is not None and not layerwise:
        warnings.warn(
            "groups= only takes effect with layerwise=True (one kernel per group); it is "
            "ignored here: pass layerwise=True to get the group kernels",
            UserWarning,
            stacklevel=2,
        )
        groups = None
    with evaluation_mode(model):
        problem = prepare(
            model,
            inputs,
            reduction=reduction,
            output_metric=output_metric,
            params=params,
            groups=groups,
            dtype=dtype,
        )
        return compute_kernel(
            problem,
            layerwise=bool(layerwise),
            max_memory=max_memory,
            structured=bool(structured),
            progress=progress,
        )
