"""``empirical_ntk``: the dense eNTK K(X, X) of a PyTorch model, or the cross kernel K(X, X2)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from torch import nn

from .._progress import progress_bar
from .._validate import check_bool
from ..errors import InvalidTypeError
from ..results import EmpiricalNTK
from .assemble import TileSource, assemble_cross, assemble_square, cross_units, square_units
from .checks import StructuredFallback
from .layer_operator import CachedLayerOperator, cached_layer_reason
from .layers import StructuredLayer
from .plan import format_bytes, plan_general, plan_structured, work_budget
from .problem import Problem, evaluation_mode, prepare
from .sources.cotangents import verify_layers
from .sources.general import GeneralSource
from .sources.layer_search import find_layers
from .sources.structured import StructuredSource

log = logging.getLogger("entk_fast")

__all__ = ["empirical_ntk"]  # check_model, compute_kernel, describe_kernel: the engine's own


def check_model(model: Any) -> nn.Module:
    """``model`` itself if it is a ``torch.nn.Module``: the first check of every eNTK entry point.

    Raises:
        InvalidTypeError: ``model`` is anything else (a function, a ``state_dict``, ...).

    Examples:
        >>> from torch import nn
        >>> from entk_fast.ntk.kernel import check_model
        >>> model = nn.Linear(3, 2)
        >>> check_model(model) is model
        True
        >>> check_model(model.state_dict())
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidTypeError: model must be a torch.nn.Module, got OrderedDict
    """
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def describe_kernel(problem: Problem, count: int = 1, shape: tuple[int, int] | None = None) -> str:
    """E.g. "the kernel of 841×841 (trace, N = 841, torch.float64)", for messages.

    Args:
        problem: a prepared request (`entk_fast.ntk.problem.prepare`).
        count: how many kernels of that shape (the kernel and its layer kernels).
        shape: (rows, columns) where it is not the square kernel's (a cross kernel).

    Returns:
        The description, naming the shape, the reduction, N (and C) and the dtype.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from entk_fast.ntk.kernel import describe_kernel
        >>> from entk_fast.ntk.problem import prepare
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> describe_kernel(prepare(model, torch.ones(4, 3)))
        'the kernel of 8×8 (flattened, N·C = 4·2, torch.float32)'
        >>> describe_kernel(prepare(model, torch.ones(4, 3), reduction="trace"), count=3)
        '3 kernels of 4×4 (trace, N = 4, torch.float32)'
    """
    size = problem.kernel_size
    rows, cols = (size, size) if shape is None else shape
    what = (
        f"N·C = {problem.n_samples}·{problem.rows_per_sample}"
        if not problem.reduction.rows_concatenated and problem.rows_per_sample > 1
        else f"N = {problem.n_samples}"
    )
    many = f"{count} kernels" if count > 1 else "the kernel"
    return f"{many} of {rows}×{cols} ({problem.reduction.name}, {what}, {problem.dtype})"


def compute_kernel(
    problem: Problem,
    *,
    layerwise: bool,
    max_memory: Any,
    structured: bool,
    progress: bool | None,
    n_rows: int | None = None,
) -> EmpiricalNTK:
    """Plan, then assemble the kernel (and layer kernels) of a prepared problem.

    `empirical_ntk` after its checks; the dense path of
    `entk_spectrum` calls it too. Call it inside
    `entk_fast.ntk.problem.evaluation_mode` for models with dropout or BatchNorm.

    Args:
        problem: a prepared request (`entk_fast.ntk.problem.prepare`).
        layerwise: also assemble one kernel per parameter group.
        max_memory: working memory, as in `empirical_ntk`.
        structured: use the exact Linear/Embedding fast path where it applies.
        progress: as in `empirical_ntk`.
        n_rows: (cross kernel) the problem's first ``n_rows`` samples are X and the rest X2,
            and the result is K(X, X2); None: the square kernel of all samples.

    Returns:
        An `EmpiricalNTK` of the problem's dtype.

    Raises:
        MemoryBudgetError: the kernels, or one sample's work, do not fit (before any work).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from entk_fast.ntk.kernel import compute_kernel
        >>> from entk_fast.ntk.problem import prepare
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> problem = prepare(model, torch.ones(4, 3), inputs2=torch.ones(2, 3))
        >>> ntk = compute_kernel(
        ...     problem, layerwise=False, max_memory=None, structured=True, progress=False,
        ...     n_rows=4)
        >>> ntk.shape  # K(X, X2): (N·C, N2·C)
        (8, 4)
    """
    n = problem.n_samples
    per = problem.kernel_rows_per_sample
    shape = (n * per, n * per) if n_rows is None else (n_rows * per, (n - n_rows) * per)
    count = 1 + (len(problem.groups) if layerwise else 0)
    output_bytes = count * shape[0] * shape[1] * problem.itemsize
    budget = work_budget(
        max_memory,
        output_bytes,
        describe_kernel(problem, count, shape),
        suggest_reduction=problem.reduction.per_output and problem.rows_per_sample > 1,
    )

    start = time.perf_counter()
    layers = verify_layers(problem, find_layers(problem)) if structured else []
    if n_rows is None and _cached_dense_applies(problem, layers, layerwise, budget):
        ntk = _cached_dense(problem, layerwise, budget, progress)
        log.info("eNTK: cached-layer kernel in %.2f s", time.perf_counter() - start)
        return ntk
    log.info(
        "eNTK: %s, %s; working memory %s; structured layers: %s",
        describe_kernel(problem, count, shape),
        format_bytes(output_bytes),
        budget.describe(),
        ", ".join(layer.path for layer in layers) or "none",
    )
    while True:
        try:
            ntk = _assemble(problem, layers, budget, output_bytes, layerwise, progress, n_rows)
            log.info("eNTK: done in %.2f s", time.perf_counter() - start)
            return ntk
        except StructuredFallback as exc:
            # A layer misbehaved on the full batch: start over with it on the general path.
            log.info("eNTK: %s; redoing them on the general path", exc)
            kept = [layer for layer in layers if layer.path not in exc.paths]
            layers = kept if len(kept) < len(layers) else []


def _cached_dense_applies(
    problem: Problem, layers: list[StructuredLayer], layerwise: bool, budget: int
) -> bool:
    """One affine layer deep in the model, not on the structured path, whose per-sample
    Jacobian the general path could not hold (or whose forward vmap cannot run): the
    cached-layer kernel (`CachedLayerOperator.dense_kernel`) is the fast way."""
    if layerwise and len(problem.groups) > 1:
        return False
    if cached_layer_reason(problem) is not None:
        return False
    structured = {name for layer in layers for name in layer.names}
    if problem.probe.vmappable and set(problem.selected) <= structured:
        return False  # the structured path gathers its factors with vmap
    jacobian = problem.rows_per_sample * problem.numel(problem.selected) * problem.itemsize
    return not problem.probe.vmappable or 8 * jacobian > budget


def _cached_dense(
    problem: Problem, layerwise: bool, budget: int, progress: bool | None
) -> EmpiricalNTK:
    n, rows = problem.n_samples, problem.rows_per_sample
    dtype = problem.numpy_dtype
    kernel = np.zeros((n * rows, n * rows), dtype=dtype)
    operator = CachedLayerOperator(
        problem, columns=max(1, min(rows, 32)), transient=budget // 8, keep_bytes=budget // 2
    )
    with progress_bar(progress, n, "eNTK (cached layer)", unit="row") as bar:
        operator.dense_kernel(kernel, bar.update)
    if problem.reduction.rows_concatenated:  # pragma: no cover - excluded by the reason
        raise AssertionError("trace is not a cached-layer reduction")
    layer_kernels = {key: kernel.copy() for key in problem.groups} if layerwise else {}
    return EmpiricalNTK(
        kernel=kernel,
        layer_kernels=layer_kernels,
        n_samples=n,
        n_outputs=problem.n_outputs,
        reduction=problem.reduction.name,
        parameter_groups=dict(problem.groups),
        output_metric=problem.metric,
        paths={name: "cached_layer" for name in problem.selected},
        n_parameters=problem.numel(problem.selected),
    )


def _assemble(
    problem: Problem,
    layers: list[StructuredLayer],
    budget: int,
    output_bytes: int,
    layerwise: bool,
    progress: bool | None,
    n_rows: int | None,
) -> EmpiricalNTK:
    n = problem.n_samples
    per = problem.kernel_rows_per_sample
    cross = n_rows is not None
    shape = (n * per, n * per) if n_rows is None else (n_rows * per, (n - n_rows) * per)
    sweeps, _rejected = plan_structured(  # the rejected take the general path
        problem, layers, budget, output_bytes, layerwise=layerwise, tiled_only=cross
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
    kernel = np.zeros(shape, dtype=dtype)
    layer_kernels = (
        {key: np.zeros(shape, dtype=dtype) for key in problem.groups} if layerwise else {}
    )
    target_of: Callable[[str], np.ndarray] = (
        (lambda name: layer_kernels[group_of[name]]) if layerwise else (lambda name: kernel)
    )
    work: list[tuple[TileSource, int, int]] = [
        (StructuredSource(problem, sweep, target_of), sweep.tile, sweep.units(n))
        for sweep in sweeps
    ]
    work += [
        (
            GeneralSource(
                problem, pack, kernel if pack.target is None else layer_kernels[pack.target]
            ),
            pack.tile,
            1 if pack.tile >= n else square_units(n, pack.tile),
        )
        for pack in packs
    ]
    if cross:
        assert n_rows is not None
        units = sum(cross_units(n_rows, n - n_rows, tile) for _, tile, _ in work)
    else:
        units = sum(whole for _, _, whole in work)
    with progress_bar(progress, units, "eNTK", unit="block") as bar:
        for source, tile, _ in work:
            if cross:
                assert n_rows is not None
                assemble_cross(source, n_rows, n - n_rows, tile, per, bar.update)
            else:
                assemble_square(source, n, tile, per, bar.update)
    if layerwise:
        for part in layer_kernels.values():
            kernel += part
    return EmpiricalNTK(
        kernel=kernel,
        layer_kernels=layer_kernels,
        n_samples=n if n_rows is None else n_rows,
        n_outputs=problem.n_outputs,
        reduction=problem.reduction.name,
        parameter_groups=dict(problem.groups),
        output_metric=problem.metric,
        paths={name: "structured" if name in fast else "general" for name in problem.selected},
        n_parameters=problem.numel(problem.selected),
        n_samples2=None if n_rows is None else n - n_rows,
    )


def empirical_ntk(
    model: nn.Module,
    inputs: Any,
    x2: Any = None,
    *,
    output_fn: Callable[[Any], Any] | None = None,
    positions: Any = None,
    reduction: str = "flattened",
    output_metric: Any = None,
    layerwise: bool = False,
    groups: Mapping[str, Iterable[str] | str] | None = None,
    params: Iterable[str] | str | None = None,
    dtype: Any = None,
    max_memory: int | float | str | None = None,
    structured: bool = True,
    progress: bool | None = None,
) -> EmpiricalNTK:
    """The empirical NTK K = J Jᵀ of ``model`` on ``inputs``, reduced over outputs.

    K[n·C + c, m·C + d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x_m)/∂θ⟩ over the parameters θ (J. Lin,
    arXiv 2510.00468, the flattened eNTK); the Jacobian J (N·C, P) is never held whole.

    With ``x2``, the cross kernel K(X, X2) = J(X) J(X2)ᵀ instead: (N·C, N2·C) flattened, or
    (N, N2) for ``trace`` / ``mean_pairs`` — what evaluates features on new inputs. It is
    assembled from the same tiles as the square kernel, so ``x2 = inputs`` gives K(X, X) up
    to round-off.

    Args:
        model: any ``nn.Module`` whose forward is a function of its parameters. It is run in
            eval mode (a warning is given when that changes BatchNorm / dropout layers);
            each sample is treated alone.
        inputs: a tensor (N, ...), a tuple of tensors sharing dim 0 (several positional
            inputs), or a dict of keyword tensors sharing dim 0 (e.g. ``input_ids`` and
            ``attention_mask``; constant keywords — a bool, number, string or None such as
            ``output_hidden_states=True`` — go to every call unchanged). Integer inputs
            (token ids) are passed as they are; floating
            ones are cast to ``dtype``. The model's output (N, ...) is flattened to C values a
            sample.
        x2: None, or second inputs (N2, ...) of the same structure as ``inputs``.
        output_fn: what of the model's output to differentiate: a callable mapping it (a
            tensor, a Hugging Face ``ModelOutput``, a tuple) to a tensor (N, ...), e.g.
            ``lambda o: o.logits[:, -1]``. Default: the output itself (a tensor).
        positions: None, or integers (N,): sample n's output is row ``positions[n]`` of
            dim 1 of what ``output_fn`` returns (n, T, ...), e.g. the labelled word's token
            or the last real token of a padded batch:
            ``output_fn=lambda o: o.last_hidden_state, positions=mask.sum(1) - 1``. Negative
            positions count from the end. Not with ``x2``.
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
        params: restrict θ to these parameter names / module paths / glob patterns over
            parameter names (``"encoder.layer.*.output.dense.weight"``; default: every
            parameter with ``requires_grad=True``). A typo's error names the closest names.
        dtype: float32 or float64 for the whole computation (default: the model's): a torch
            or numpy dtype, or a string read as numpy reads it (``"double"``, ``"float"``
            and ``float`` mean float64, ``"single"`` float32).
        max_memory: working memory beyond the kernels, bytes or e.g. ``"4GB"`` (default: half
            of the RAM available once the kernels are allocated). Raises
            ``MemoryBudgetError`` before any work when the kernels or one chunk cannot fit.
        structured: use the exact Linear/Embedding fast path where it applies.
        progress: ``True`` shows a progress bar (a widget in Jupyter), ``False`` never, ``None``
            (default) when interactive: stderr is a terminal or the code runs in Jupyter.

    Returns:
        An `EmpiricalNTK` whose ``kernel`` is a numpy array of
        ``dtype``: (N·C, N·C) with row n·C + c (``flattened``), (N, N) (``trace``,
        ``mean_pairs``), or with ``x2`` (N·C, N2·C) / (N, N2); plus ``layer_kernels`` of the
        same shape with ``layerwise=True``.

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module``, or an argument has the wrong
            type.
        InvalidArgumentError: the inputs do not fit the model or each other, the forward
            mixes samples or fails, ``reduction`` is unknown, ``params`` / ``groups`` name
            no parameter, ``output_metric`` is not PSD of size C, ``dtype`` is not float32 or
            float64, ``positions`` is given with ``x2``, or ``max_memory`` is not a size.
        MemoryBudgetError: the kernels, or one sample's Jacobian, cannot fit; raised before
            any work.

    Examples:
        >>> import numpy as np
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> x = torch.randn(4, 3)  # N = 4 samples, C = 2 outputs
        >>> ntk = ef.empirical_ntk(model, x)
        >>> ntk.kernel.shape, ntk.kernel.dtype  # (N·C, N·C), row n·C + c
        ((8, 8), dtype('float32'))
        >>> trace = ef.empirical_ntk(model, x, reduction="trace")  # (N, N)
        >>> blocks = ntk.kernel.reshape(4, 2, 4, 2)  # [n, c, m, d]
        >>> np.allclose(trace.kernel, blocks.diagonal(axis1=1, axis2=3).mean(-1))
        True
        >>> ef.empirical_ntk(model, x, torch.randn(2, 3)).shape  # K(X, X2): (N·C, N2·C)
        (8, 4)
        >>> parts = ef.empirical_ntk(model, x, layerwise=True)  # one kernel per Linear
        >>> sorted(parts.layer_kernels), np.allclose(sum(parts.layer_kernels.values()), ntk.kernel)
        (['0', '2'], True)

        A linear model's eNTK is (X Xᵀ) ⊗ I_C:

        >>> X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
        >>> linear = ef.empirical_ntk(nn.Linear(2, 2, bias=False), X, dtype=torch.float64)
        >>> np.allclose(linear.kernel, np.kron((X @ X.T).numpy(), np.eye(2)))
        True
    """
    check_model(model)
    layerwise = check_bool("layerwise", layerwise)
    structured = check_bool("structured", structured)
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
            inputs2=x2,
            output_fn=output_fn,
            positions=positions,
            reduction=reduction,
            output_metric=output_metric,
            params=params,
            groups=groups,
            dtype=dtype,
        )
        return compute_kernel(
            problem,
            layerwise=layerwise,
            max_memory=max_memory,
            structured=structured,
            progress=progress,
            n_rows=None if x2 is None else problem.n_samples - problem.n_samples2,
        )
