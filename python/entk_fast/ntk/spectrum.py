"""Eigen-analysis of an eNTK: ``entk_spectrum`` (dense, dual or matrix-free) and ``entk_topk``.

* dense: form K (with the structured fast paths) and diagonalise it.
* dual: when the Jacobian M (R × Q, K = alpha·M Mᵀ) has fewer columns than rows, diagonalise
  the Q × Q Gram alpha·Mᵀ M instead; eigenvectors map back by u = √alpha · M v / √λ.
* matrix_free: block Krylov (the Rust core) on K V = alpha·M (Mᵀ V), never forming
  K or M; for kernels too large to store. Structured layers' products come from their
  gathered factors (``ntk.factored``), the other parameters' through kept autograd graphs
  (``ntk.operator``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from .. import linalg
from .._progress import progress_bar
from .._validate import (
    check_bool,
    check_choice,
    check_k,
    check_kernel_nonzero,
    check_ridge,
    check_solver_options,
)
from ..errors import InvalidArgumentError, MemoryBudgetError
from ..results import NTKSpectrum, spectrum_of_kernel
from .checks import StructuredFallback
from .estimate import METHODS, check_method, choose_method, estimate_methods
from .factored import FactoredOperator, factor_bytes
from .kernel import check_model, compute_kernel
from .krylov import krylov_shape, solve_topk, topk_spectrum
from .layer_operator import CachedLayerOperator, cached_layer_reason
from .layers import StructuredLayer
from .operator import KernelOperator
from .plan import plan_dual, plan_matrix_free, structured_transient, work_budget
from .problem import Problem, evaluation_mode, prepare
from .sharded import check_client, distributed_topk
from .sources.cotangents import verify_layers
from .sources.general import jacobian_block
from .sources.layer_search import find_layers

log = logging.getLogger("entk_fast")

__all__ = ["entk_spectrum", "entk_topk"]


def _dual(
    problem: Problem, k: int | None, ridge: float, max_memory: Any, progress: bool | None
) -> NTKSpectrum:
    """Spectrum from the Q × Q Gram alpha·Mᵀ M, mapped back to kernel eigenvectors."""
    n = problem.n_samples
    size = problem.kernel_size
    numel = problem.numel(problem.selected)
    plan = plan_dual(problem, k, max_memory)
    q, keep_all, chunk = plan.columns, plan.keep_all, plan.chunk
    slices = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    dtype = problem.numpy_dtype
    stored: list[np.ndarray] = []
    # Q×Q is small: accumulate and diagonalise it in float64 whatever the model's dtype, so
    # the small eigenvalues keep the accuracy the Jacobian itself has.
    gram_dual = np.zeros((q, q), dtype=np.float64)
    with progress_bar(progress, 2 * len(slices), "eNTK dual", unit="block") as bar:
        for start, stop in slices:
            block = problem.as_kernel_rows(
                jacobian_block(problem, problem.selected, start, stop, chunk)
            )
            wide = np.ascontiguousarray(block.T, dtype=np.float64)
            linalg.gram_accumulate(gram_dual, wide, alpha=problem.kernel_scale)
            del wide
            if keep_all:
                stored.append(block)
            bar.update(1)
        trace = float(np.trace(gram_dual))  # = trace(K)
        check_kernel_nonzero(trace)
        values, vectors = linalg.eigh(gram_dual)
        del gram_dual
        # The Q×Q Gram is accumulated and diagonalised in float64 whatever the dtype, so its
        # eigenvalues carry float64 round-off of λ₁, and a float32 Jacobian's own rounding
        # (relative ε₃₂ in each entry) makes spurious eigenvalues of about ε₃₂²·λ₁ in its null
        # space. Below 100 times the larger of the two an eigenvalue is round-off and
        # u = M v / √λ noise; above it, it is kept (a float32 cut at 100·ε₃₂·λ₁ dropped real
        # eigenvalues down to 1.2e-5·λ₁).
        floor = 100 * max(float(np.finfo(np.float64).eps), float(np.finfo(dtype).eps) ** 2)
        cutoff = max(float(values[0]), 0.0) * floor
        rank = int((values > cutoff).sum())
        count = rank if k is None else min(k, rank)
        values = np.ascontiguousarray(values[:count])
        basis = np.ascontiguousarray(vectors[:, :count].T)  # (count, Q)
        del vectors
        scale = np.sqrt(problem.kernel_scale) / np.sqrt(values)
        eigvecs = np.empty((size, count), dtype=dtype)
        per = problem.kernel_rows_per_sample
        for i, (start, stop) in enumerate(slices):
            if keep_all:
                block = stored[i]
            else:
                block = problem.as_kernel_rows(
                    jacobian_block(problem, problem.selected, start, stop, chunk)
                )
            mapped = linalg.gram_cross(block.astype(np.float64), basis) * scale
            eigvecs[start * per : stop * per] = mapped
            bar.update(1)
    shift = 0.0
    if ridge > 0:
        shift = ridge * trace / size
        values = values + shift
    return NTKSpectrum(
        eigenvalues=values.astype(dtype),
        eigenvectors=eigvecs,
        method="dual",
        n_samples=n,
        n_outputs=problem.n_outputs,
        reduction=problem.reduction.name,
        ridge=shift,
        n_parameters=numel,
        output_metric=problem.metric,
        info={
            "dual_size": q,
            "rank": rank,
            "n_dropped": (size if k is None else k) - count,
            "ridge_relative": ridge,
            "jacobian_kept": keep_all,
            "chunk": chunk,
        },
    )


def _matrix_free(
    problem: Problem,
    k: int,
    *,
    max_memory: Any,
    tol: float | None,
    maxiter: int | None,
    block: int | None,
    seed: int,
    progress: bool | None,
    structured: bool = True,
) -> NTKSpectrum:
    """Top-k by the Rust thick-restarted block Krylov on K V = scale · M (Mᵀ V), V (R, b).

    Every copy of a repeated eigenvalue is found (a single-vector Lanczos misses copies).
    Structured layers whose factors fit half the memory left after the basis take factored
    products (``structured``); the other parameters take the kept-graph products.
    """
    size = problem.kernel_size
    if k >= size:
        raise InvalidArgumentError(
            f"k = {k} must be smaller than the kernel's order {size} for the matrix-free "
            "solver; use entk_spectrum(..., method='dense') for the full spectrum"
        )
    it = problem.itemsize
    rows = problem.rows_per_sample
    budget = work_budget(
        max_memory,
        size * k * it,
        f"the {size}×{k} eigenvector block",
        suggest_reduction=problem.reduction.per_output and rows > 1,
    )
    cached_reason = cached_layer_reason(problem)
    verified: list[StructuredLayer] | None = None  # the structured layers, verified once

    def structured_layers() -> list[StructuredLayer]:
        nonlocal verified
        if verified is None:
            verified = verify_layers(problem, find_layers(problem)) if structured else []
        return verified

    if (
        cached_reason is None
        and structured
        and problem.probe.vmappable
        and _factors_fit(problem, structured_layers(), budget // 4)
    ):
        cached_reason = "the layer's factored products fit in memory (gathered once: faster)"
    width, basis_blocks = krylov_shape(problem, k, block, cached_reason is None)
    memory = plan_matrix_free(
        problem, k, width, basis_blocks, budget, cached_layer=cached_reason is None
    )
    transient, columns, chunk, room = (
        memory.transient,
        memory.columns,
        memory.chunk,
        memory.room,
    )
    cached = None
    if cached_reason is None:
        # One affine layer: its inputs cached, products through the suffix after it only.
        cached = CachedLayerOperator(problem, width, memory.cached_transient, keep_bytes=room)
    factored = (
        None
        if cached is not None
        else _factored_operator(problem, structured_layers(), room // 2, transient)
    )
    done = set() if factored is None else {n for layer in factored.layers for n in layer.names}
    rest = [] if cached is not None else [n for n in problem.selected if n not in done]
    general = None
    if rest:
        # What the basis, transients and factors leave keeps the chunks' forward graphs.
        left = room - (0 if factored is None else factored.nbytes)
        general = KernelOperator(
            replace(problem, selected=rest), chunk, columns, keep_bytes=max(0, left)
        )
    operators = [op for op in (cached, factored, general) if op is not None]

    def products(v: np.ndarray) -> np.ndarray:
        parts = [op.matmat(v) for op in operators]
        return np.add.reduce([part.astype(np.float64, copy=False) for part in parts])

    values, vectors, info = solve_topk(
        problem,
        k,
        products,
        width=width,
        basis_blocks=basis_blocks,
        tol=tol,
        maxiter=maxiter,
        seed=seed,
        progress=progress,
    )
    return topk_spectrum(
        problem,
        values,
        vectors,
        {
            **info,
            "chunk": cached.chunk if cached else chunk,
            "columns": cached.columns if cached else columns,
            "factored_layers": [] if factored is None else [f.path for f in factored.layers],
            "factored_bytes": 0 if factored is None else factored.nbytes,
            "products": "cached_layer" if cached is not None else "autograd",
            "cached_layer": None if cached is None else cached.layer.path,
            "pruned_block": None if cached is None or cached.pruner is None else cached.pruner.path,
            "cached_layer_reason": cached_reason,
            "kept_chunks": len(cached.kept) if cached else (general.kept_chunks if general else 0),
            "kept_transposes": cached.kept_transposes
            if cached
            else (general.kept_transposes if general else 0),
            "chunks": -(-problem.n_samples // chunk) if (cached or general) else 0,
            "kept_bytes": cached.kept_bytes if cached else (general.kept_bytes if general else 0),
        },
    )


def _factors_fit(problem: Problem, layers: list[StructuredLayer], room: int) -> bool:
    """Whether every selected parameter belongs to one of the structured ``layers`` and their
    factors fit ``room`` bytes (then the factored products, gathered once, are the fastest)."""
    names = {n for layer in layers for n in layer.names}
    return set(problem.selected) <= names and factor_bytes(problem, layers) <= room


def _factored_operator(
    problem: Problem, layers: list[StructuredLayer], room: int, transient: int
) -> FactoredOperator | None:
    """Products of the structured ``layers`` whose factors fit ``room`` bytes, from factors
    gathered once (`entk_fast.ntk.factored`); None when no layer qualifies or fits."""
    chosen, used = [], 0
    costs = [(factor_bytes(problem, [layer]), layer) for layer in layers]
    for cost, layer in sorted(costs, key=lambda pair: pair[0]):
        if used + cost <= room:
            chosen.append(layer)
            used += cost
    per_sample = structured_transient(problem, chosen, problem.rows_per_sample)
    chunk = int(min(problem.n_samples, max(1, transient // max(1, per_sample))))
    while chosen:
        try:
            return FactoredOperator(problem, chosen, chunk, transient)
        except StructuredFallback as exc:  # misbehaved on the full batch: general path
            log.info("top-k: %s; these layers take the general path", exc)
            kept = [layer for layer in chosen if layer.path not in exc.paths]
            chosen = kept if len(kept) < len(chosen) else []
    return None


def _choose(
    problem: Problem,
    k: int | None,
    method: str,
    *,
    ridge: float,
    max_memory: Any,
    structured: bool,
) -> tuple[str, dict[str, Any]]:
    """The method to run and what ``info`` says about the choice: ``method_reason``, and for
    ``"auto"`` the ``estimated_seconds`` of each usable method (`entk_fast.ntk.estimate`)."""
    check_method(problem, k, method, ridge)
    if method != "auto":
        return method, {"method_reason": f"asked for (method={method!r})"}
    estimates, _ = estimate_methods(
        problem, k, ridge=ridge, max_memory=max_memory, structured=structured, timing=False
    )
    chosen, reason = choose_method(problem, k, estimates)
    if chosen is None:
        raise MemoryBudgetError(reason)
    info: dict[str, Any] = {"method_reason": f"auto: {reason}"}
    seconds = {e.method: e.seconds for e in estimates if e.usable and e.seconds is not None}
    if seconds:
        info["estimated_seconds"] = seconds
    return chosen, info


def entk_spectrum(
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
    progress: bool | None = None,
) -> NTKSpectrum:
    """Eigenvalues (descending) and eigenvectors of the reduced, metric-weighted eNTK.

    The eigenvectors of the flattened eNTK are the features the network uses, and cliffs in
    its spectrum separate feature families (J. Lin, arXiv 2510.00468). Arguments are those
    of `entk_fast.empirical_ntk`, plus:

    Args:
        k: how many eigenpairs (``None``: all, or all non-zero ones on the dual path).
        method: ``"auto"`` starts from the memory rule: ``"dual"`` when the Jacobian has
            fewer columns Q (P, or C·P for trace) than the kernel has rows, else ``"dense"``
            when the kernel fits in memory, else ``"matrix_free"`` (needs ``k``); it takes
            another method that fits where that one is estimated at least twice as fast and
            half a second faster (`entk_fast.entk_plan` shows the estimates), or where the
            rule's method does not fit ``max_memory``. The choice is in ``.method``, why in
            ``info["method_reason"]`` (with ``info["estimated_seconds"]`` when times were
            compared). The dual path returns only eigenpairs above its round-off floor
            (``info["rank"]``: above 100·max(ε₆₄, ε²)·λ₁ for the dtype's ε; below is round-off).
        ridge: ε ≥ 0; adds ε·mean(diag K) to K's diagonal (reported as ``.ridge``). Not
            available matrix-free.
        tol: solver tolerance (top-k dense and matrix-free solvers).
        seed: start vector of the matrix-free solver.

    Returns:
        An `NTKSpectrum` of ``dtype``: ``eigenvalues`` (k,)
        descending, ``eigenvectors`` (R, k) with R = N·C (row n·C + c, ``flattened``) or N;
        ``.method`` the path taken, ``.info`` the solver's details.

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module``, or k is not an integer.
        InvalidArgumentError: as `entk_fast.empirical_ntk`; also k not in
            [1, order], an unknown ``method``, ``method="dual"`` where the Jacobian has as
            many columns as the kernel rows, ridge < 0 or with the matrix-free path, and
            ``method="matrix_free"`` without k.
        MemoryBudgetError: neither the kernel nor the dual Gram fits and k is None, or the
            chosen path does not fit ``max_memory``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> spec = ef.entk_spectrum(model, torch.randn(4, 3), k=3)
        >>> spec.eigenvalues.shape, spec.eigenvectors.shape, spec.method  # (k,), (N·C, k)
        ((3,), (8, 3), 'dense')

        A linear model's eNTK is (X Xᵀ) ⊗ I_C: each eigenvalue of X Xᵀ, C times. Its
        Jacobian has fewer columns (P = 4) than the kernel rows (6), so the dual path
        finds the non-zero ones:

        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> spec = ef.entk_spectrum(nn.Linear(2, 2, bias=False), x, dtype=torch.float64)
        >>> spec.method, spec.eigenvalues.round(6)
        ('dual', array([3., 3., 1., 1.]))
    """
    check_model(model)
    structured = check_bool("structured", structured)
    check_choice("method", method, METHODS)
    eps = check_ridge(ridge)
    tol, _, _, seed = check_solver_options(tol=tol, seed=seed)
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
        chosen, choice = _choose(
            problem, kk, method, ridge=eps, max_memory=max_memory, structured=structured
        )
        log.info("spectrum: method %s, k = %s: %s", chosen, kk, choice["method_reason"])
        if chosen == "dual":
            spec = _dual(problem, kk, eps, max_memory, progress)
        elif chosen == "dense":
            ntk = compute_kernel(
                problem,
                layerwise=False,
                max_memory=max_memory,
                structured=structured,
                progress=progress,
            )
            check_kernel_nonzero(float(np.abs(ntk.kernel).max()))
            spec = spectrum_of_kernel(ntk, kk, ridge=eps, tol=tol, in_place=True)
        else:
            if eps > 0:
                raise InvalidArgumentError("ridge is not available on the matrix-free path")
            assert kk is not None
            spec = _matrix_free(
                problem,
                kk,
                max_memory=max_memory,
                tol=tol,
                maxiter=None,
                block=None,
                seed=seed,
                progress=progress,
                structured=structured,
            )
        spec.info.update(choice)
        return spec


def entk_topk(
    model: nn.Module,
    inputs: Any,
    k: int,
    *,
    reduction: str = "flattened",
    output_metric: Any = None,
    output_fn: Callable[[Any], Any] | None = None,
    positions: Any = None,
    params: Iterable[str] | str | None = None,
    dtype: Any = None,
    tol: float | None = None,
    maxiter: int | None = None,
    block: int | None = None,
    seed: int = 0,
    max_memory: int | float | str | None = None,
    structured: bool = True,
    progress: bool | None = None,
    client: Any = None,
) -> NTKSpectrum:
    """The top-k eigenpairs of the reduced, metric-weighted eNTK without forming it.

    The Rust thick-restarted block Krylov solver (`entk_fast.linalg.eigh_topk_operator`)
    on K V = J (Jᵀ V) for blocks V of ``block`` vectors (default k + 8), in float64 also for
    float32 models. Each chunk's forward runs once: its autograd graph is kept while it fits the
    memory plan, and a block product is one vmapped backward through it and one through its
    transpose (C_r of each per vector for ``trace``); the transposes' graphs are kept too when
    room is left. Chunks that do not fit take a VJP and a JVP per product. Memory stays at the
    Krylov basis (10 blocks of N·C), the kept graphs (bounded by ``max_memory``, measured as
    resident growth) and parameter-sized vectors; the residuals are tested as the basis grows,
    so a fast-converging solve stops early. The parameters of structured layers (exact
    ``nn.Linear`` / ``nn.Embedding`` calls, as on the dense path; ``structured=False`` turns
    this off) take factored products instead while their factors fit half the memory left
    after the basis: each layer's inputs and output cotangents are gathered once and
    compressed exactly, and a product is a few matrix products without autograd (for
    ``trace`` not C of them: one output unit's cotangents over the C outputs often have rank
    1). Every copy of a repeated eigenvalue is found —
    cos/sin pairs of Fourier features, a linear model's C-fold eigenvalues — also when the
    multiplicity exceeds the block. Arguments as in `entk_fast.empirical_ntk`; ``tol`` is
    the relative residual target ‖K v − λ v‖ / λ₁ (default 1e-11 in float64, 1e-4 in float32),
    ``maxiter`` the most restart cycles, ``seed`` fixes the random start blocks. ``info``
    reports ``n_matvec`` (vector products), ``residuals``, ``max_residual``, ``converged``,
    ``factored_layers`` and ``factored_bytes``, ``kept_chunks`` of ``chunks``,
    ``kept_transposes`` and ``kept_bytes``; a ``RuntimeWarning``
    says when the solver did not converge. The features and their cliffs are those of
    `entk_spectrum` (J. Lin, arXiv 2510.00468), for kernels too large to store.

    Args:
        k: the number of eigenpairs, 1 ≤ k < N·C (or N for ``trace`` / ``mean_pairs``).
        tol: relative residual target (default 1e-11 in float64, 1e-4 in float32).
        maxiter: most restart cycles (default 200).
        block: vectors per product (default k + 8, or 1 for a single cached layer).
        seed: seed of the random start blocks (results are deterministic).
        client: a ``dask.distributed.Client``: the samples are split into one shard a
            worker, each worker builds its shard's products once and keeps them, and each
            product runs on the workers (the solver stays here); the eigenpairs are those
            of one process. ``info["distributed"]`` reports the shards, rebuilds after lost
            workers, and per product the seconds (compute and wait) and bytes moved. The
            factored products of structured layers are not used; ``max_memory`` applies
            to each process. See the guide's "One solve over many workers".

    Returns:
        An `NTKSpectrum` with ``method="matrix_free"``:
        ``eigenvalues`` (k,) descending and ``eigenvectors`` (R, k), R = N·C (row n·C + c)
        or N, of ``dtype``; ``.info`` as above.

    Raises:
        InvalidTypeError: ``model`` is not an ``nn.Module``, k is not an integer, or
            ``client`` is not a dask.distributed Client.
        InvalidArgumentError: as `entk_fast.empirical_ntk`; also k missing or not in
            [1, order), and ``tol``, ``maxiter``, ``block`` or ``seed`` out of range; a
            closed ``client``, or a kernel whose products cannot be spread (a model that is
            not vmappable outside the cached-layer path).
        EntkError: with ``client``, a product failed four times (the cluster kept losing
            workers).
        MemoryBudgetError: the Krylov basis and one sample's products do not fit
            ``max_memory`` (before any work).
        LinAlgError: a product turned non-finite.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> model = nn.Linear(2, 2, bias=False)  # eNTK (X Xᵀ) ⊗ I_2: eigenvalues 3, 3, 1, 1, 0, 0
        >>> spec = ef.entk_topk(model, x, k=2, dtype=torch.float64)
        >>> spec.method, spec.eigenvalues.round(6), spec.eigenvectors.shape
        ('matrix_free', array([3., 3.]), (6, 2))
        >>> spec.info["converged"]
        True
    """
    check_model(model)
    structured = check_bool("structured", structured)
    tol, maxiter, block, seed = check_solver_options(
        tol=tol, maxiter=maxiter, block=block, seed=seed
    )
    if client is not None:
        client = check_client(client)
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
        kk = check_k(k, problem.kernel_size, required=True)
        assert kk is not None
        if client is not None:
            return distributed_topk(
                client,
                model,
                inputs,
                problem,
                k=kk,
                options={
                    "reduction": reduction,
                    "output_metric": output_metric,
                    "output_fn": output_fn,
                    "params": params,
                    "dtype": dtype,
                },
                positions=positions,
                max_memory=max_memory,
                tol=tol,
                maxiter=maxiter,
                block=block,
                seed=seed,
                progress=progress,
            )
        return _matrix_free(
            problem,
            kk,
            max_memory=max_memory,
            tol=tol,
            maxiter=maxiter,
            block=block,
            seed=seed,
            progress=progress,
            structured=structured,
        )
