"""Row layout of flattened kernels: row = n·C + c (sample-major), and its reshaping helpers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["flatten_outputs", "unflatten_outputs"]


def _check_flattened(reduction: str) -> None:
    if reduction != "flattened":
        raise InvalidArgumentError(
            f"only a flattened kernel has one row per (sample, output); this one is {reduction!r} "
            "(N × N), whose eigenvectors are already indexed by sample"
        )


def unflatten_outputs(v: Any, n_samples: int, n_outputs: int, reduction: str) -> np.ndarray:
    """(N·C,) -> (N, C), or (N·C, k) -> (N, C, k): entry [n, c] is row n·C + c."""
    _check_flattened(reduction)
    arr = np.asarray(v)
    rows = n_samples * n_outputs
    if arr.ndim not in (1, 2) or arr.shape[0] != rows:
        raise InvalidArgumentError(
            f"expected a vector ({rows},) or a matrix ({rows}, k) with N·C = {n_samples}·"
            f"{n_outputs} rows, got shape {arr.shape}"
        )
    return arr.reshape(n_samples, n_outputs, *arr.shape[1:])


def flatten_outputs(u: Any, n_samples: int, n_outputs: int, reduction: str) -> np.ndarray:
    """(N, C) -> (N·C,), or (N, C, k) -> (N·C, k): the inverse of :func:`unflatten_outputs`."""
    _check_flattened(reduction)
    arr = np.asarray(u)
    if arr.ndim not in (2, 3) or arr.shape[:2] != (n_samples, n_outputs):
        raise InvalidArgumentError(
            f"expected shape ({n_samples}, {n_outputs}) or ({n_samples}, {n_outputs}, k), "
            f"got {arr.shape}"
        )
    return arr.reshape(n_samples * n_outputs, *arr.shape[2:])
