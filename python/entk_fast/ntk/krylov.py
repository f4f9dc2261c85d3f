"""The matrix-free top-k solve shared by one process and a Dask cluster: the block shape and
the Rust thick-restarted block Krylov (`entk_fast.linalg.eigh_topk_operator`) driven by a
kernel-block product K V, wherever that product runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import linalg
from .._progress import progress_bar
from .._validate import check_kernel_nonzero
from ..errors import InvalidArgumentError
from ..results import NTKSpectrum
from .problem import Problem

__all__ = ["BASIS_BLOCKS", "FLOAT32_TOL", "krylov_shape", "solve_topk", "topk_spectrum"]

#: The matrix-free solver's default relative residual target for float32 products (the
#: float64 solver's own default, 1e-11, is below their round-off).
FLOAT32_TOL = 1e-4
#: Krylov basis width of the matrix-free solver, in blocks. The solver tests convergence as
#: the basis grows (eNTK products are expensive), so a wider basis saves products only when a
#: solve needs restarts, and it costs 2 · block · N·C floats per block: the LM stand-in's
#: top-25 (N·C = 131 072) converged in 7 blocks of 33.
BASIS_BLOCKS = 10


def krylov_shape(
    problem: Problem, k: int, block: int | None, cached_layer: bool
) -> tuple[int, int]:
    """(vectors a product, basis blocks) for the top ``k``.

    Cached-layer products run the model's own batched forward over many samples, so one
    vector a product costs no more a vector than a block: single vectors reach a Krylov
    degree, and with it convergence, in the fewest products (about a third of a block of
    k + 8 on a language-model layer's top 25 at 1e-3). The other products are vmapped per
    sample, where a block of vectors (k + 8) amortises the per-call work.
    """
    size = problem.kernel_size
    default_width = 1 if cached_layer else k + 8
    width = min(size, default_width) if block is None else int(block)
    if not 1 <= width <= size:
        raise InvalidArgumentError(f"block must be in [1, {size}], got {block}")
    basis_blocks = BASIS_BLOCKS
    if width < k:
        # a basis of at least 2k + 16 vectors (ARPACK's 2k + 1, and room to restart)
        basis_blocks = int(min(256, max(BASIS_BLOCKS, -(-(2 * k + 16) // width))))
    return width, basis_blocks


def solve_topk(
    problem: Problem,
    k: int,
    products: Callable[[np.ndarray], np.ndarray],
    *,
    width: int,
    basis_blocks: int,
    tol: float | None,
    maxiter: int | None,
    seed: int,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The top ``k`` eigenpairs of the kernel whose block product is ``products`` (V (R, b)
    -> K V (R, b), any float dtype): eigenvalues (k,) descending, eigenvectors (R, k), both
    float64, and the solver's ``info``. A first product that is zero (K = 0) is refused."""
    count = 0
    with progress_bar(progress, None, "eNTK top-k", unit="matvec") as bar:

        def matmat(v: np.ndarray) -> np.ndarray:
            nonlocal count
            out = np.asarray(products(v), dtype=np.float64)
            if count == 0:  # the random start block: K V = 0 only if K = 0
                check_kernel_nonzero(float(np.abs(out).max()))
            count += v.shape[1]
            bar.update(v.shape[1])
            return out

        # The solver runs in float64 also for float32 problems: its basis in float32 loses
        # orthogonality, and residuals stalled near 2e-3, above the 1e-4 tolerance, on a
        # language-model-like spectrum; float32 products in a float64 basis converge.
        return linalg.eigh_topk_operator(
            matmat,
            problem.kernel_size,
            k,
            dtype=np.float64,
            # the tolerance the problem's dtype supports (float32 products: 1e-4)
            tol=tol if tol is not None or problem.itemsize == 8 else FLOAT32_TOL,
            block=width,
            maxiter=maxiter,
            seed=seed,
            basis_blocks=basis_blocks,
        )


def topk_spectrum(
    problem: Problem, values: np.ndarray, vectors: np.ndarray, info: dict[str, Any]
) -> NTKSpectrum:
    """The matrix-free solve's `NTKSpectrum`: ``values`` (k,) and ``vectors`` (R, k) in the
    problem's dtype, with the solver's and the products' ``info``."""
    return NTKSpectrum(
        eigenvalues=values.astype(problem.numpy_dtype),
        eigenvectors=vectors.astype(problem.numpy_dtype),
        method="matrix_free",
        n_samples=problem.n_samples,
        n_outputs=problem.n_outputs,
        reduction=problem.reduction.name,
        n_parameters=problem.numel(problem.selected),
        output_metric=problem.metric,
        info={**info, "solver": "eigh_topk_operator"},
    )
