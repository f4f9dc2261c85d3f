"""Type stub of the Rust extension ``entk_fast._core`` (use `entk_fast.linalg`)."""

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

_F: TypeAlias = NDArray[np.float32] | NDArray[np.float64]

__version__: str
__all__ = [
    "__version__",
    "_after_fork_in_child",
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

def gram(j: _F) -> _F: ...
def gram_accumulate(k: _F, j: _F, alpha: float = 1.0) -> None: ...
def gram_cross(a: _F, b: _F) -> _F: ...
def rank_one_residual(
    g: _F, s: _F, w: _F, positions: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def column_pivots(g: _F) -> tuple[NDArray[np.int64], _F]: ...
def hadamard_gram_accumulate(
    k: _F, g: _F, s: _F, block: int = 1, alpha: float = 1.0, positions: int = 1
) -> None: ...
def hadamard_gram_factored_accumulate(
    k: _F, g: _F, a: _F, block: int = 1, alpha: float = 1.0, positions: int = 1
) -> None: ...
def hadamard_gram_factored_accumulate_many(
    k: _F,
    gs: list[_F],
    a_s: list[_F],
    blocks: list[int],
    positions: list[int],
    alpha: float = 1.0,
) -> None: ...
def hadamard_gram_cross(ga: _F, gb: _F, s: _F, block: int = 1, alpha: float = 1.0) -> _F: ...
def eigh(k: _F) -> tuple[_F, _F]: ...
def eigh_topk(
    k_matrix: _F,
    k: int,
    tol: float | None = None,
    seed: int | None = None,
    oversample: int | None = None,
    basis_blocks: int | None = None,
) -> tuple[_F, _F, dict[str, Any]]: ...
def eigh_topk_operator(
    matmat: Callable[[_F], _F],
    n: int,
    k: int,
    dtype: str,
    block: int | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    seed: int | None = None,
    basis_blocks: int | None = None,
) -> tuple[_F, _F, dict[str, Any]]: ...
def principal_angles(a: _F, b: _F) -> NDArray[np.float64]: ...
def subspace_overlap(a: _F, b: _F) -> float: ...
def set_num_threads(n: int | None = None) -> None: ...
def get_num_threads() -> int: ...
def _after_fork_in_child() -> None: ...
