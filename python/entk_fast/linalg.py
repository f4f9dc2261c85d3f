"""Dense linear algebra for eNTK analysis, backed by the Rust core (faer + rayon).

Every function accepts numpy arrays or CPU torch tensors of dtype float32 or float64, keeps
that dtype, wraps the input without copying where its memory layout allows, and releases
the GIL while it works (so threads calling it run in parallel). Eigenvalues are returned in
descending order everywhere. Bad input raises `InvalidArgumentError`
(a ``ValueError``) or `InvalidTypeError` (a ``TypeError``) naming
the argument; a solver failure raises `LinAlgError`, and a result
that does not fit in memory a ``MemoryError``. Long iterative solves stop at Ctrl-C
(``KeyboardInterrupt``).

This module owns types and normalisation only (torch → numpy, dtype, dimensions, integer and
real types); the Rust core checks shapes, ranges and values, so each rule lives in one place.

Examples:
    >>> import numpy as np
    >>> from entk_fast import linalg
    >>> J = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])  # 3 Jacobian rows, 2 parameters
    >>> values, vectors = linalg.eigh(linalg.gram(J))
    >>> values.shape, vectors.shape, bool(values[0] >= values[1] >= values[2])
    ((3,), (3, 3), True)
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._resources import threads_from_environment
from .errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "as_float_matrix",
    "column_pivots",
    "eigh",
    "eigh_topk",
    "eigh_topk_operator",
    "get_num_threads",
    "gram",
    "gram_accumulate",
    "gram_cross",
    "hadamard_gram_accumulate",
    "hadamard_gram_cross",
    "hadamard_gram_factored_accumulate",
    "hadamard_gram_factored_accumulate_many",
    "principal_angles",
    "rank_one_residual",
    "set_num_threads",
    "subspace_overlap",
]

FloatArray = NDArray[np.floating[Any]]
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# rayon's threads do not survive fork(): torch DataLoader workers and multiprocessing
# children get a fresh pool on first use instead of deadlocking on the parent's.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_core._after_fork_in_child)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    module = type(x).__module__
    if module.startswith("torch"):
        # Shares memory with a CPU tensor; a GPU tensor has to be copied to the host.
        return x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        return np.asarray(x)
    raise InvalidTypeError(
        f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}"
    )


def as_float_matrix(x: Any, name: str, *, allow_vector: bool = False) -> np.ndarray:
    """``x`` as a 2-D float32/float64 numpy array (no copy when already one), validated.

    The normalisation every function of this module applies to its matrix arguments.

    Args:
        x: a numpy array, a torch tensor (a GPU tensor is copied to the host), a list or a
            scalar, of dtype float32 or float64 (kept).
        name: the argument's name, for error messages.
        allow_vector: treat a 1-D array of length n as one column, shape (n, 1).

    Returns:
        A 2-D aligned numpy array of ``x``'s dtype, sharing memory with ``x`` where it can.

    Raises:
        InvalidTypeError: ``x`` is of another type, or not float32/float64 (integers too).
        InvalidArgumentError: ``x`` is not 2-D (or 1-D with ``allow_vector``).

    Examples:
        >>> import numpy as np
        >>> from entk_fast.linalg import as_float_matrix
        >>> as_float_matrix(np.arange(3.0), "x", allow_vector=True).shape
        (3, 1)
        >>> as_float_matrix(np.arange(3), "x")
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidTypeError: x: expected dtype float32 or float64, got int64 ...
    """
    a = _to_numpy(x, name)
    if a.dtype not in _FLOATS:
        raise InvalidTypeError(
            f"{name}: expected dtype float32 or float64, got {a.dtype} "
            f"(convert with .astype(np.float64))"
        )
    if a.ndim == 1 and allow_vector:
        a = a[:, None]
    if a.ndim != 2:
        want = "a 1-D or 2-D array" if allow_vector else "a 2-D array"
        raise InvalidArgumentError(f"{name}: expected {want}, got shape {a.shape}")
    if not a.flags.aligned:
        a = np.require(a, requirements="A")
    return a


def _same_dtype(names: str, *arrays: np.ndarray) -> None:
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        got = ", ".join(str(a.dtype) for a in arrays)
        raise InvalidTypeError(f"{names}: expected one dtype for all, got {got}")


def _writable_matrix(x: Any, name: str) -> np.ndarray:
    if getattr(x, "requires_grad", False):
        # Like torch's own in-place ops on such tensors: autograd cannot see our update.
        raise InvalidArgumentError(
            f"{name}: expected a tensor that does not require grad (it is updated in place, "
            f"which autograd cannot track); accumulate into K.detach() or a new tensor"
        )
    a = as_float_matrix(x, name)
    if a.flags.writeable and not np.shares_memory(a, _to_numpy(x, name)):
        # as_float_matrix had to copy it (e.g. a misaligned buffer): an update would be lost.
        raise InvalidArgumentError(
            f"{name}: expected an aligned float array in CPU memory that can be updated in place "
            f"(a misaligned buffer: use np.require({name}, requirements='AW'); a GPU tensor: "
            f"accumulate into a CPU array)"
        )
    return a


def _updated_in_place(x: Any) -> None:
    """Tells autograd that the tensor ``x`` changed (as a torch in-place op would)."""
    if type(x).__module__.startswith("torch"):
        import torch

        torch.autograd.graph.increment_version(x)


def _detached_from(target: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """``operand``, copied if it may share memory with the in-place ``target``."""
    return operand.copy() if np.may_share_memory(target, operand) else operand


def gram(J: Any) -> FloatArray:
    """Gram matrix ``K = J Jᵀ``: the eNTK of the stacked Jacobian J (J. Lin, arXiv 2510.00468).

    Args:
        J: (R, P) float32/float64 matrix, e.g. R = N·C stacked Jacobian rows (row n·C + c)
            over P parameters.

    Returns:
        (R, R) symmetric array of J's dtype. One triangle is computed (a symmetric
        rank-k update) and mirrored, so K is exactly symmetric.

    Raises:
        InvalidTypeError: J is not a float32/float64 array or tensor.
        InvalidArgumentError: J is not 2-D, or holds NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> J = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
        >>> linalg.gram(J)
        array([[ 5., 11.,  2.],
               [11., 25.,  4.],
               [ 2.,  4.,  1.]])
    """
    return _core.gram(as_float_matrix(J, "J"))


def gram_accumulate(K: Any, J: Any, *, alpha: float = 1.0) -> None:
    """In place ``K += alpha · J Jᵀ``.

    Summing over column blocks of J (parameter groups, streamed Jacobian chunks) yields the
    Gram matrix of the full J while only one block is ever held.

    Args:
        K: (R, R) symmetric, writable array (numpy, or a CPU torch tensor sharing memory);
            same dtype as J. Only its lower triangle is read; the result is exactly symmetric.
        J: (R, P) block of columns.
        alpha: finite scale factor.

    Raises:
        InvalidTypeError: K and J differ in dtype, or one is not float32/float64.
        InvalidArgumentError: the shapes do not match, alpha is not finite, or K cannot be
            updated in place (read-only, misaligned, on a GPU, or a tensor requiring grad).

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> J = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
        >>> K = np.zeros((3, 3))
        >>> linalg.gram_accumulate(K, J[:, :1])  # one parameter block at a time
        >>> linalg.gram_accumulate(K, J[:, 1:])
        >>> np.array_equal(K, linalg.gram(J))
        True
    """
    k = _writable_matrix(K, "K")
    j = _detached_from(k, as_float_matrix(J, "J"))
    _same_dtype("gram_accumulate(K, J)", k, j)
    _core.gram_accumulate(k, j, _as_float(alpha, "alpha"))
    _updated_in_place(K)


def rank_one_residual(
    G: Any, S: Any, W: Any, *, positions: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per column k of G: how far it is from rank one, ``(Σ (G − S ⊗ W)², Σ G²)``.

    Column k holds one output unit's cotangents g[(n, r, t), k] over samples n, output rows r
    and positions t (row (n·rows + r)·T + t); it is rank one when g = s[(n, t), k] · w[r, k].
    One pass over G (in parallel over the samples); the sums are float64.

    Args:
        G: (n·rows·T, K) float32/float64.
        S: (n·T, K), G's dtype.
        W: (rows, K), G's dtype.
        positions: T ≥ 1.

    Returns:
        ``(lost, energy)``: two (K,) float64 arrays.

    Raises:
        InvalidArgumentError: the shapes do not match, or ``positions`` < 1.
        LinAlgError: G, S or W holds NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> s = np.array([[1.0, 2.0], [3.0, -1.0]])  # (n·T, K): 2 samples, T = 1
        >>> w = np.array([[2.0, 1.0], [0.5, 4.0], [1.0, 1.0]])  # (rows, K)
        >>> G = np.einsum("nk,rk->nrk", s, w).reshape(-1, 2)  # each column rank one
        >>> linalg.rank_one_residual(G, s, w)[0]
        array([0., 0.])
        >>> G[0, 1] += 1.0
        >>> linalg.rank_one_residual(G, s, w)[0]
        array([0., 1.])
    """
    return _core.rank_one_residual(
        as_float_matrix(G, "G"), as_float_matrix(S, "S"), as_float_matrix(W, "W"), positions
    )


def column_pivots(G: Any) -> tuple[NDArray[np.int64], FloatArray]:
    """Per column of G (M, K): the row of its largest absolute value (the first of equal ones) and
    that value, ``(rows (K,) int64, values (K,))``.

    Raises:
        InvalidArgumentError: G is empty or holds NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> rows, values = linalg.column_pivots(np.array([[1.0, -4.0], [-3.0, 2.0]]))
        >>> rows, values
        (array([1, 0]), array([-3., -4.]))
    """
    return _core.column_pivots(as_float_matrix(G, "G"))


def gram_cross(A: Any, B: Any) -> FloatArray:
    """Cross Gram tile ``A Bᵀ``: A (R, P), B (S, P) → (R, S), for off-diagonal sample blocks.

    Args:
        A: (R, P) float32/float64 matrix.
        B: (S, P) matrix of the same dtype.

    Returns:
        (R, S) array of the inputs' dtype; with Jacobians, the cross kernel K(X, X2).

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: A and B are not 2-D with the same number of columns.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> A = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])
        >>> linalg.gram_cross(A, A[:1])
        array([[ 5.],
               [11.],
               [ 2.]])
    """
    a = as_float_matrix(A, "A")
    b = as_float_matrix(B, "B")
    _same_dtype("gram_cross(A, B)", a, b)
    return _core.gram_cross(a, b)


def hadamard_gram_accumulate(
    K: Any, G: Any, S: Any, *, block: int = 1, alpha: float = 1.0, positions: int = 1
) -> None:
    """In place ``K[i, j] += alpha · S[i // block, j // block] · ⟨G[i], G[j]⟩``.

    The exact eNTK block of a linear layer used once: S = A Aᵀ is the Gram of its input
    activations (N, N) and G stacks the cotangents ∂f_c/∂y at its output.

    With ``positions`` = T > 1 (a layer applied at T positions of each sample, e.g. every
    token of a sequence) G stacks T blocks of R rows, one per position, S is the (T·m, T·m)
    Gram of the inputs over (position, sample) with m = R // block, and

        K[i, j] += alpha · Σ_{t,u} S[t·m + i // block, u·m + j // block] · ⟨G[t·R + i], G[u·R + j]⟩

    (Σ_{t,u} ⟨a_t, a'_u⟩ ⟨g_t, g'_u⟩: J. Lin, arXiv 2510.00468, the cheap exact paths), with K
    read and written once for all T² position pairs.

    Args:
        K: (R, R) symmetric writable array.
        G: (T·R, Q) matrix; R must be a multiple of ``block``.
        S: (T·R // block, T·R // block) symmetric matrix.
        block: rows of G per row of S (C for a flattened kernel, 1 for reduced ones).
        alpha: finite scale factor (1/C for ``trace``, 1/C² for ``mean_pairs``).
        positions: T, the positions per sample (default 1).

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: the shapes do not fit together, ``block`` or ``positions`` is
            not ≥ 1, alpha is not finite, or K cannot be updated in place.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> rng = np.random.default_rng(0)
        >>> G = rng.standard_normal((4, 3))  # N = 2 samples · C = 2 outputs, 3 output units
        >>> S = np.array([[2.0, 1.0], [1.0, 3.0]])  # the inputs' (N, N) Gram
        >>> K = np.zeros((4, 4))
        >>> linalg.hadamard_gram_accumulate(K, G, S, block=2)
        >>> np.allclose(K, np.kron(S, np.ones((2, 2))) * (G @ G.T))
        True
    """
    k = _writable_matrix(K, "K")
    g = _detached_from(k, as_float_matrix(G, "G"))
    s = _detached_from(k, as_float_matrix(S, "S"))
    _same_dtype("hadamard_gram_accumulate(K, G, S)", k, g, s)
    _core.hadamard_gram_accumulate(
        k,
        g,
        s,
        _as_int(block, "block"),
        _as_float(alpha, "alpha"),
        _as_int(positions, "positions"),
    )
    _updated_in_place(K)


def hadamard_gram_factored_accumulate(
    K: Any, G: Any, A: Any, *, block: int = 1, alpha: float = 1.0, positions: int = 1
) -> None:
    """`hadamard_gram_accumulate` with S = A Aᵀ given by its factor, never formed.

    ``K[i, j] += alpha · Σ_{t,u} ⟨A[t·m + i // block], A[u·m + j // block]⟩ ·
    ⟨G[t·R + i], G[u·R + j]⟩`` with m = R // block: a layer's eNTK block from its inputs A
    and output cotangents G, position by position (T = ``positions``). Each row tile of K
    takes the input and cotangent products of every position pair in cache, so neither the
    (T·m)² input Gram nor a (T·R)² product is held: the fast form when the inputs are narrow.

    Args:
        K: (R, R) symmetric writable array.
        G: (T·R, Q) matrix; R must be a multiple of ``block``.
        A: (T·R // block, D) matrix of inputs.
        block: rows of G per input row (C for a flattened kernel, 1 for reduced ones).
        alpha: finite scale factor.
        positions: T, the positions per sample (default 1).

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: the shapes do not fit together, ``block`` or ``positions`` is
            not ≥ 1, alpha is not finite, or K cannot be updated in place.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> rng = np.random.default_rng(0)
        >>> G = rng.standard_normal((4, 3))  # N = 2 samples · C = 2 outputs
        >>> A = rng.standard_normal((2, 5))  # the layer's input, one row a sample
        >>> K = np.zeros((4, 4))
        >>> linalg.hadamard_gram_factored_accumulate(K, G, A, block=2)
        >>> np.allclose(K, np.kron(A @ A.T, np.ones((2, 2))) * (G @ G.T))
        True
    """
    k = _writable_matrix(K, "K")
    g = _detached_from(k, as_float_matrix(G, "G"))
    a = _detached_from(k, as_float_matrix(A, "A"))
    _same_dtype("hadamard_gram_factored_accumulate(K, G, A)", k, g, a)
    _core.hadamard_gram_factored_accumulate(
        k,
        g,
        a,
        _as_int(block, "block"),
        _as_float(alpha, "alpha"),
        _as_int(positions, "positions"),
    )
    _updated_in_place(K)


def hadamard_gram_factored_accumulate_many(
    K: Any,
    terms: Sequence[tuple[Any, Any, int, int]],
    *,
    alpha: float = 1.0,
) -> None:
    """Several `hadamard_gram_factored_accumulate` updates of one K in one call.

    ``K += alpha · Σ_i`` the block of term i = ``(G_i, A_i, block_i, positions_i)``: the
    layers whose eNTK blocks add into one kernel. K is checked, tiled and mirrored once, and
    each row tile of K takes every term's products in one task (one parallel section, no
    thread wake-up per layer); every term is checked before K is touched.

    Args:
        K: (R, R) symmetric writable array.
        terms: (G (T·R, Q), A (T·R // block, D), block, T) per layer, as in
            `hadamard_gram_factored_accumulate`; Q, D, block and T may differ.
        alpha: finite scale factor.

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: a term is not a 4-tuple, its shapes do not fit K, or K cannot
            be updated in place.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> rng = np.random.default_rng(0)
        >>> G1, A1 = rng.standard_normal((4, 3)), rng.standard_normal((2, 5))
        >>> G2, A2 = rng.standard_normal((4, 2)), rng.standard_normal((2, 1))
        >>> K = np.zeros((4, 4))
        >>> linalg.hadamard_gram_factored_accumulate_many(K, [(G1, A1, 2, 1), (G2, A2, 2, 1)])
        >>> one = np.zeros((4, 4))
        >>> for G, A in ((G1, A1), (G2, A2)):
        ...     linalg.hadamard_gram_factored_accumulate(one, G, A, block=2)
        >>> np.allclose(K, one)
        True
    """
    k = _writable_matrix(K, "K")
    gs, a_s, blocks, positions = [], [], [], []
    for i, term in enumerate(terms):
        if not isinstance(term, tuple) or len(term) != 4:
            got = f"{len(term)} items" if isinstance(term, tuple) else type(term).__name__
            raise InvalidArgumentError(
                f"terms[{i}] must be a tuple of 4 (G, A, block, positions), got {got}"
            )
        g, a, block, t = term
        gs.append(_detached_from(k, as_float_matrix(g, f"terms[{i}] G")))
        a_s.append(_detached_from(k, as_float_matrix(a, f"terms[{i}] A")))
        blocks.append(_as_int(block, f"terms[{i}] block"))
        positions.append(_as_int(t, f"terms[{i}] positions"))
    _same_dtype("hadamard_gram_factored_accumulate_many(K, terms)", k, *gs, *a_s)
    _core.hadamard_gram_factored_accumulate_many(
        k, gs, a_s, blocks, positions, _as_float(alpha, "alpha")
    )
    _updated_in_place(K)


def hadamard_gram_cross(
    Ga: Any, Gb: Any, S: Any, *, block: int = 1, alpha: float = 1.0
) -> FloatArray:
    """Off-diagonal tile of the structured block: ``alpha · (S ⊗ 1_b) ∘ (Ga Gbᵀ)``.

    ``out[i, j] = alpha · S[i // block, j // block] · ⟨Ga[i], Gb[j]⟩``, so that the
    linear-layer eNTK block can be assembled tile by tile in bounded memory.

    Args:
        Ga: (R, Q) cotangents of one sample tile; R a multiple of ``block``.
        Gb: (R2, Q) cotangents of another sample tile; R2 a multiple of ``block``.
        S: (R // block, R2 // block) activation cross-Gram of the two tiles.
        block: rows of Ga and Gb per row and column of S (C for a flattened kernel).
        alpha: finite scale factor.

    Returns:
        (R, R2) array of the inputs' dtype.

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: the shapes do not fit together, or alpha is not finite.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> rng = np.random.default_rng(0)
        >>> Ga, Gb = rng.standard_normal((4, 3)), rng.standard_normal((2, 3))
        >>> S = np.array([[2.0], [1.0]])  # 2 samples of one tile × 1 of the other
        >>> tile = linalg.hadamard_gram_cross(Ga, Gb, S, block=2)
        >>> tile.shape, np.allclose(tile, np.kron(S, np.ones((2, 2))) * (Ga @ Gb.T))
        ((4, 2), True)
    """
    ga = as_float_matrix(Ga, "Ga")
    gb = as_float_matrix(Gb, "Gb")
    s = as_float_matrix(S, "S")
    _same_dtype("hadamard_gram_cross(Ga, Gb, S)", ga, gb, s)
    return _core.hadamard_gram_cross(ga, gb, s, _as_int(block, "block"), _as_float(alpha, "alpha"))


def eigh(K: Any) -> tuple[FloatArray, FloatArray]:
    """All eigenpairs of the symmetric matrix K (n, n).

    Args:
        K: (n, n) symmetric float32/float64 matrix (numpy or CPU torch).

    Returns:
        ``(values, vectors)``: values (n,) in descending order; vectors (n, n), column i the
        unit eigenvector of ``values[i]``. Same dtype as K. The lower triangle is used;
        an asymmetry above sqrt(eps)·max|K| is rejected.

    Raises:
        InvalidTypeError: K is not a float32/float64 array or tensor.
        InvalidArgumentError: K is not square, not symmetric, or holds NaN or inf.
        LinAlgError: the solver failed.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> K = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> values, vectors = linalg.eigh(K)
        >>> values
        array([3., 1.])
        >>> np.allclose(K @ vectors, vectors * values)
        True
    """
    return _core.eigh(as_float_matrix(K, "K"))


TopkInfo = dict[str, Any]


@overload
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = ...,
    return_info: Literal[False] = ...,
    seed: int | None = ...,
    oversample: int | None = ...,
    basis_blocks: int | None = ...,
) -> tuple[FloatArray, FloatArray]: ...
@overload
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = ...,
    return_info: Literal[True],
    seed: int | None = ...,
    oversample: int | None = ...,
    basis_blocks: int | None = ...,
) -> tuple[FloatArray, FloatArray, TopkInfo]: ...
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = None,
    return_info: bool = False,
    seed: int | None = None,
    oversample: int | None = None,
    basis_blocks: int | None = None,
) -> tuple[FloatArray, FloatArray] | tuple[FloatArray, FloatArray, TopkInfo]:
    """The k largest eigenpairs of the dense symmetric K (n, n).

    A thick-restarted block Krylov method (block size k + oversampling, so degenerate
    eigenvalues at the cut are resolved) converged until every returned pair has a relative
    residual ``‖K v − λ v‖ / |λ|max ≤ tol``, |λ|max the largest |Ritz value| (|λ_1| for a PSD
    K); default tol 1e-11 in float64, 1e-4 in float32, allowed range [eps, 1). Hence
    ``|λ − λ_true| ≤ tol·|λ|max`` for each value. Small problems, where the full solve is
    cheaper, use it directly; a Krylov run that does not converge in 200 restart cycles, or
    stops improving, falls back to it. Ctrl-C interrupts the iteration.

    Tuning (rarely needed): ``oversample`` extra block columns (default 8), ``basis_blocks``
    blocks in the Krylov basis (in [3, 256]; default 10, or 16 when that basis is at most a
    quarter of n), ``seed`` of the random start block
    (results are deterministic).

    Returns:
        ``(values, vectors)``: values (k,) descending, vectors (n, k) as columns; with
        ``return_info=True`` also a dict: ``method`` ("dense", "krylov" or
        "dense-fallback"), ``cycles``, ``n_matvec`` (products K·v), ``block``,
        ``residuals`` (per pair, as above), ``max_residual``, ``tol``, ``converged``,
        ``stagnated``. Same dtype as K.

    Raises:
        InvalidTypeError: K is not a float32/float64 array, or an option is not an integer
            (a real for ``tol``).
        InvalidArgumentError: K is not square and symmetric, holds NaN or inf, k is not in
            [1, n], or an option is out of range.
        LinAlgError: the solver failed.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> K = np.diag([1.0, 6.0, 2.0, 5.0, 3.0, 4.0])
        >>> values, vectors = linalg.eigh_topk(K, 2)
        >>> values, vectors.shape
        (array([6., 5.]), (6, 2))
        >>> _, _, info = linalg.eigh_topk(K, 2, return_info=True)
        >>> info["converged"]
        True
    """
    m = as_float_matrix(K, "K")
    values, vectors, info = _core.eigh_topk(
        m,
        _as_int(k, "k"),
        None if tol is None else _as_float(tol, "tol"),
        None if seed is None else _as_int(seed, "seed"),
        None if oversample is None else _as_int(oversample, "oversample"),
        None if basis_blocks is None else _as_int(basis_blocks, "basis_blocks"),
    )
    return (values, vectors, info) if return_info else (values, vectors)


def eigh_topk_operator(
    matmat: Callable[[np.ndarray], Any],
    n: int,
    k: int,
    *,
    dtype: Any = np.float64,
    block: int | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    seed: int = 0,
    basis_blocks: int | None = None,
) -> tuple[FloatArray, FloatArray, TopkInfo]:
    """The k largest eigenpairs of a symmetric operator known only through products.

    ``matmat(V)`` receives a numpy array V (n, b) of ``dtype`` and must return K @ V, (n, b),
    as a numpy array or CPU torch tensor (it is converted to ``dtype``'s array, never
    upcast silently: another float dtype is refused). The same thick-restarted block Krylov
    iteration as `eigh_topk` drives it, with ``block`` vectors per product (default
    k + 8). Every copy of a repeated eigenvalue is found, also when the multiplicity exceeds
    the block size (converged pairs are locked and fresh random blocks search the rest).
    ``matmat`` runs on the calling thread with the GIL held; the linear algebra between
    calls runs in the Rust pool without it. Ctrl-C, or an exception in ``matmat``, stops
    the iteration and propagates.

    Args:
        matmat: V (n, b) -> K @ V for a symmetric K (checked on the projected matrix).
        n: order of K.
        k: number of eigenpairs, 1 ≤ k ≤ n.
        dtype: np.float32 or np.float64 (the dtype of V and of the results).
        block: vectors per product, 1 ≤ block ≤ n (smaller: less memory per product,
            more products).
        tol: relative residual target as in `eigh_topk` (default 1e-11 / 1e-4).
        maxiter: most restart cycles (default 200).
        seed: seed of the random start blocks.
        basis_blocks: Krylov basis width in blocks, in [3, 256] (default as `eigh_topk`);
            the basis and its images take 2 · basis_blocks · block · n floats.

    Returns:
        ``(values (k,) descending, vectors (n, k), info)``, info as in `eigh_topk`
        (``method`` is "krylov"). The residuals are tested as the basis grows whenever the
        products since the last test took longer than a test, so a fast-converging solve
        stops before the basis is full. When the iteration did not converge (maxiter reached or
        the residuals stagnated) the best pairs found are returned, ``info["converged"]``
        is False, and a ``RuntimeWarning`` says so.

    Raises:
        InvalidTypeError: ``matmat`` is not callable, ``dtype`` is not float32/float64, or
            ``matmat`` returned another dtype.
        InvalidArgumentError: n, k, block, tol or basis_blocks is out of range, or
            ``matmat`` returned a wrong shape, NaN or inf, or an asymmetric operator.
        LinAlgError: the solver failed.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> K = np.diag(np.arange(50.0, 0.0, -1.0))  # known only through K @ V below
        >>> values, vectors, info = linalg.eigh_topk_operator(lambda V: K @ V, 50, 3)
        >>> values, vectors.shape, info["converged"]
        (array([50., 49., 48.]), (50, 3), True)
    """
    if not callable(matmat):
        raise InvalidTypeError(
            f"matmat: expected a callable V -> K @ V, got {type(matmat).__name__}"
        )
    dt = np.dtype(dtype) if isinstance(dtype, (type, np.dtype, str)) else None
    if dt not in _FLOATS:
        raise InvalidTypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}")

    def product(v: np.ndarray) -> np.ndarray:
        out = _to_numpy(matmat(v), "matmat")
        if out.dtype != dt:
            raise InvalidTypeError(
                f"matmat: expected K @ V of dtype {dt} (the dtype of V), got {out.dtype}"
            )
        return out

    values, vectors, info = _core.eigh_topk_operator(
        product,
        _as_int(n, "n"),
        _as_int(k, "k"),
        dt.name,
        None if block is None else _as_int(block, "block"),
        None if tol is None else _as_float(tol, "tol"),
        None if maxiter is None else _as_int(maxiter, "maxiter"),
        _as_int(seed, "seed"),
        None if basis_blocks is None else _as_int(basis_blocks, "basis_blocks"),
    )
    if not info["converged"]:
        why = "its residuals stopped improving" if info["stagnated"] else "maxiter was reached"
        warnings.warn(
            f"eigh_topk_operator did not converge ({why} after {info['cycles']} cycles, "
            f"{info['n_matvec']} products): max relative residual {info['max_residual']:.2e} "
            f"> tol {info['tol']:.1e}; raise maxiter or tol",
            RuntimeWarning,
            stacklevel=2,
        )
    return values, vectors, info


def principal_angles(A: Any, B: Any) -> NDArray[np.float64]:
    """Principal angles between span(A) and span(B), in radians, ascending.

    Args:
        A: (n, d) float32/float64 matrix (or an (n,) vector); its columns need not be
            orthonormal.
        B: (n, m) matrix (or vector) of the same dtype.

    Returns:
        float64 array of min(rank A, rank B) angles in [0, π/2]. Cosines come from the SVD of
        Q_Aᵀ Q_B and, for angles below 45°, sines from the SVD of the residual (Knyazev),
        so small angles stay accurate; the rank rule is ``scipy.linalg.orth``'s. Agrees with
        ``np.sort(scipy.linalg.subspace_angles(A, B))`` except where scipy's own small-angle
        pairing is off (scipy can return 0 for an angle of 1e-8 next to a large one).

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: A and B differ in rows, or hold NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> A = np.array([1.0, 0.0, 0.0])
        >>> B = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> np.degrees(linalg.principal_angles(A, B)).round(6)
        array([45.])
    """
    a = as_float_matrix(A, "A", allow_vector=True)
    b = as_float_matrix(B, "B", allow_vector=True)
    _same_dtype("principal_angles(A, B)", a, b)
    return _core.principal_angles(a, b)


def subspace_overlap(A: Any, B: Any) -> float:
    """Subspace overlap Σ cos²θ_i between span(A) (n, d) and span(B) (n, m).

    In [0, min(rank A, rank B)]; the paper (J. Lin, arXiv 2510.00468) reports it divided by
    m as a percentage. θ_i are the `principal_angles`.

    Args:
        A: (n, d) float32/float64 matrix (or an (n,) vector).
        B: (n, m) matrix (or vector) of the same dtype.

    Returns:
        The overlap, a Python float.

    Raises:
        InvalidTypeError: the dtypes differ, or are not float32/float64.
        InvalidArgumentError: A and B differ in rows, or hold NaN or inf.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> I = np.eye(4)
        >>> linalg.subspace_overlap(I[:, :2], I[:, 1:3])  # they share one direction
        1.0
    """
    a = as_float_matrix(A, "A", allow_vector=True)
    b = as_float_matrix(B, "B", allow_vector=True)
    _same_dtype("subspace_overlap(A, B)", a, b)
    return float(_core.subspace_overlap(a, b))


def set_num_threads(n: int | None = None) -> None:
    """Threads used by every Rust routine, in [1, 1024]; ``None`` means the default: the first
    of RAYON_NUM_THREADS, OMP_NUM_THREADS, SLURM_CPUS_PER_TASK that is set, else every CPU
    this process may run on (its affinity mask and cgroup CPU quota).

    The default applies from import on, so Dask workers (which set OMP_NUM_THREADS=1) and
    SLURM tasks do not oversubscribe their node. A process forked after this call (torch
    DataLoader workers, multiprocessing) keeps the count.

    Args:
        n: the thread count, or None for the default.

    Raises:
        InvalidTypeError: n is not an integer.
        InvalidArgumentError: n is not in [1, 1024].

    Examples:
        >>> import entk_fast as ef
        >>> ef.set_num_threads(2)
        >>> ef.get_num_threads()
        2
        >>> ef.set_num_threads(None)  # back to the default
    """
    if n is None:
        _core.set_num_threads(threads_from_environment())
    else:
        _core.set_num_threads(_as_int(n, "n"))


def get_num_threads() -> int:
    """Number of threads the Rust routines use (see `set_num_threads`).

    Returns:
        The thread count, an int ≥ 1.

    Examples:
        >>> from entk_fast import linalg
        >>> linalg.get_num_threads() >= 1
        True
    """
    return int(_core.get_num_threads())


def _as_int(value: Any, name: str) -> int:
    """``value`` as a Python int (numpy integers included); its range is the core's to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name}: expected an integer, got {type(value).__name__}")
    v = int(value)
    if not -(2**127) <= v < 2**127:  # what the binding can take; the core checks the range
        raise InvalidArgumentError(f"{name}: expected an integer of at most 128 bits, got {v}")
    return v


def _as_float(value: Any, name: str) -> float:
    """``value`` as a Python float; whether it is finite or in range is the core's to check."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


if threads_from_environment() is not None:  # the environment's thread count, from import on
    _core.set_num_threads(threads_from_environment())
