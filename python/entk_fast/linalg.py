"""Dense linear algebra for eNTK analysis, backed by the Rust core (faer + rayon).

Every function accepts numpy arrays or CPU torch tensors of dtype float32 or float64, keeps
that dtype, wraps the input without copying where its memory layout allows, and releases
the GIL while it works (so threads calling it run in parallel). Eigenvalues are returned in
descending order everywhere. Bad input raises :class:`~entk_fast.errors.InvalidArgumentError`
(a ``ValueError``) or :class:`~entk_fast.errors.InvalidTypeError` (a ``TypeError``) naming
the argument; a solver failure raises :class:`~entk_fast.errors.LinAlgError`.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from . import _core
from .errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "as_float_matrix",
    "eigh",
    "eigh_topk",
    "get_num_threads",
    "gram",
    "gram_accumulate",
    "gram_cross",
    "hadamard_gram_accumulate",
    "hadamard_gram_cross",
    "principal_angles",
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

    ``allow_vector`` treats a 1-D array of length n as one column, shape (n, 1).
    Raises InvalidTypeError for non-float dtypes and InvalidArgumentError for wrong ndim.
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
    a = as_float_matrix(x, name)
    if not a.flags.writeable:
        raise InvalidArgumentError(f"{name}: expected a writable array (it is updated in place)")
    if not np.shares_memory(a, _to_numpy(x, name)):
        # as_float_matrix had to copy it (e.g. a misaligned buffer): an update would be lost.
        raise InvalidArgumentError(
            f"{name}: expected an aligned float array in CPU memory that can be updated in place "
            f"(a misaligned buffer: use np.require({name}, requirements='AW'); a GPU tensor: "
            f"accumulate into a CPU array)"
        )
    return a


def _detached_from(target: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """``operand``, copied if it may share memory with the in-place ``target``."""
    return operand.copy() if np.may_share_memory(target, operand) else operand


def gram(J: Any) -> FloatArray:
    """Gram matrix ``K = J Jᵀ``.

    Args:
        J: (R, P) matrix, e.g. R = N·C stacked Jacobian rows over P parameters.
    Returns:
        (R, R) symmetric array of J's dtype. One triangle is computed (a symmetric
        rank-k update) and mirrored, so K is exactly symmetric.
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
    """
    k = _writable_matrix(K, "K")
    j = _detached_from(k, as_float_matrix(J, "J"))
    _same_dtype("gram_accumulate(K, J)", k, j)
    _core.gram_accumulate(k, j, _as_float(alpha, "alpha"))


def gram_cross(A: Any, B: Any) -> FloatArray:
    """Cross Gram tile ``A Bᵀ``: A (R, P), B (S, P) → (R, S), for off-diagonal sample blocks."""
    a = as_float_matrix(A, "A")
    b = as_float_matrix(B, "B")
    _same_dtype("gram_cross(A, B)", a, b)
    return _core.gram_cross(a, b)


def hadamard_gram_accumulate(K: Any, G: Any, S: Any, *, block: int = 1, alpha: float = 1.0) -> None:
    """In place ``K[i, j] += alpha · S[i // block, j // block] · ⟨G[i], G[j]⟩``.

    The exact eNTK block of a linear layer used once: S = A Aᵀ is the Gram of its input
    activations (N, N) and G stacks the cotangents ∂f_c/∂y at its output.

    Args:
        K: (R, R) symmetric writable array.
        G: (R, Q) matrix; R must be a multiple of ``block``.
        S: (R // block, R // block) symmetric matrix.
        block: rows of G per row of S (C for a flattened kernel, 1 for reduced ones).
        alpha: finite scale factor (1/C for ``trace``, 1/C² for ``mean_pairs``).
    """
    k = _writable_matrix(K, "K")
    g = _detached_from(k, as_float_matrix(G, "G"))
    s = _detached_from(k, as_float_matrix(S, "S"))
    _same_dtype("hadamard_gram_accumulate(K, G, S)", k, g, s)
    _core.hadamard_gram_accumulate(
        k, g, s, _as_index(block, "block", low=1), _as_float(alpha, "alpha")
    )


def hadamard_gram_cross(
    Ga: Any, Gb: Any, S: Any, *, block: int = 1, alpha: float = 1.0
) -> FloatArray:
    """Off-diagonal tile of the structured block: ``alpha · (S ⊗ 1_b) ∘ (Ga Gbᵀ)``.

    ``out[i, j] = alpha · S[i // block, j // block] · ⟨Ga[i], Gb[j]⟩``, so that the
    linear-layer eNTK block can be assembled tile by tile in bounded memory.

    Args:
        Ga: (R, Q) cotangents of one sample tile; R a multiple of ``block``.
        Gb: (S, Q) cotangents of another sample tile.
        S: (R // block, S // block) activation cross-Gram of the two tiles.
    Returns:
        (R, S) array of the inputs' dtype.
    """
    ga = as_float_matrix(Ga, "Ga")
    gb = as_float_matrix(Gb, "Gb")
    s = as_float_matrix(S, "S")
    _same_dtype("hadamard_gram_cross(Ga, Gb, S)", ga, gb, s)
    return _core.hadamard_gram_cross(
        ga, gb, s, _as_index(block, "block", low=1), _as_float(alpha, "alpha")
    )


def eigh(K: Any) -> tuple[FloatArray, FloatArray]:
    """All eigenpairs of the symmetric matrix K (n, n).

    Returns:
        ``(values, vectors)``: values (n,) in descending order; vectors (n, n), column i the
        unit eigenvector of ``values[i]``. Same dtype as K. The lower triangle is used;
        an asymmetry above sqrt(eps)·max|K| is rejected.
    """
    return _core.eigh(as_float_matrix(K, "K"))


@overload
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = ...,
    seed: int | None = ...,
    oversample: int | None = ...,
    basis_blocks: int | None = ...,
    return_method: Literal[False] = ...,
) -> tuple[FloatArray, FloatArray]: ...
@overload
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = ...,
    seed: int | None = ...,
    oversample: int | None = ...,
    basis_blocks: int | None = ...,
    return_method: Literal[True],
) -> tuple[FloatArray, FloatArray, str]: ...
def eigh_topk(
    K: Any,
    k: int,
    *,
    tol: float | None = None,
    seed: int | None = None,
    oversample: int | None = None,
    basis_blocks: int | None = None,
    return_method: bool = False,
) -> tuple[FloatArray, FloatArray] | tuple[FloatArray, FloatArray, str]:
    """The k largest eigenpairs of the dense symmetric K (n, n).

    A thick-restarted block Krylov method (block size k + oversampling, so degenerate
    eigenvalues at the cut are resolved) converged to a relative residual
    ``‖K u − λ u‖ / ‖K‖ ≤ tol``, ‖K‖ estimated by the largest |Ritz value| (default tol
    1e-11 in float64, 1e-4 in float32). Small problems, where the full solve is cheaper,
    use it directly.

    Tuning: ``oversample`` extra block columns (default 8; raise it when more than 8
    eigenvalues may tie at the cut) and ``basis_blocks`` blocks in the Krylov basis
    (default 10); ``seed`` fixes the random start block (results are deterministic).

    Returns:
        ``(values, vectors)``: values (k,) descending, vectors (n, k) as columns; with
        ``return_method=True`` also ``"dense"``, ``"krylov:<cycles>"`` or ``"dense-fallback"``.
    """
    m = as_float_matrix(K, "K")
    kk = _as_index(k, "k", low=1)
    if kk > max(m.shape[0], 1) and m.shape[0] == m.shape[1]:
        raise InvalidArgumentError(
            f"k: expected an integer in [1, {m.shape[0]}] (the order of K), got {k}"
        )
    t = None if tol is None else _as_float(tol, "tol")
    if t is not None and not t > 0:
        raise InvalidArgumentError(f"tol: expected a positive number, got {tol}")
    s = None if seed is None else _as_index(seed, "seed", low=0, high=2**64 - 1)
    over = None if oversample is None else _as_index(oversample, "oversample", low=0)
    blocks = (
        None if basis_blocks is None else _as_index(basis_blocks, "basis_blocks", low=3, high=64)
    )
    values, vectors, method = _core.eigh_topk(m, kk, t, s, over, blocks)
    return (values, vectors, method) if return_method else (values, vectors)


def principal_angles(A: Any, B: Any) -> NDArray[np.float64]:
    """Principal angles between span(A) and span(B), in radians, ascending.

    Args:
        A: (n, d) matrix (or an (n,) vector); its columns need not be orthonormal.
        B: (n, m) matrix (or vector).
    Returns:
        float64 array of min(rank A, rank B) angles in [0, π/2]. Cosines come from the SVD of
        Q_Aᵀ Q_B and, for angles below 45°, sines from the SVD of the residual (Knyazev),
        so small angles stay accurate; the rank rule is ``scipy.linalg.orth``'s. Agrees with
        ``np.sort(scipy.linalg.subspace_angles(A, B))`` except where scipy's own small-angle
        pairing is off (scipy can return 0 for an angle of 1e-8 next to a large one).
    """
    a = as_float_matrix(A, "A", allow_vector=True)
    b = as_float_matrix(B, "B", allow_vector=True)
    _same_dtype("principal_angles(A, B)", a, b)
    return _core.principal_angles(a, b)


def subspace_overlap(A: Any, B: Any) -> float:
    """Subspace overlap Σ cos²θ_i between span(A) (n, d) and span(B) (n, m).

    In [0, min(rank A, rank B)]; the paper reports it divided by m as a percentage.
    """
    a = as_float_matrix(A, "A", allow_vector=True)
    b = as_float_matrix(B, "B", allow_vector=True)
    _same_dtype("subspace_overlap(A, B)", a, b)
    return float(_core.subspace_overlap(a, b))


def set_num_threads(n: int | None = None) -> None:
    """Threads used by every Rust routine; ``None`` means all cores (at most 1024)."""
    _core.set_num_threads(0 if n is None else _as_index(n, "n", low=1, high=1024))


def get_num_threads() -> int:
    """Number of threads the Rust routines use."""
    return int(_core.get_num_threads())


def _as_index(value: Any, name: str, *, low: int, high: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if int(value) < low:
        raise InvalidArgumentError(f"{name}: expected an integer ≥ {low}, got {value}")
    if int(value) > high:
        raise InvalidArgumentError(f"{name}: expected an integer ≤ {high}, got {value}")
    return int(value)


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidTypeError(f"{name}: expected a real number, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise InvalidArgumentError(f"{name}: expected a finite number, got {value}")
    return v
