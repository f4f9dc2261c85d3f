"""Data sets of the two toy models: TMS feature vectors and all modular-addition pairs.

Every generator draws from its own ``torch.Generator`` seeded with ``seed``, so the result
depends on the seed alone, never on the global RNG state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "ModAddData",
    "modadd_dataset",
    "modadd_onehot_targets",
    "tms_dataset",
    "tms_importance",
]


def tms_importance(
    n: int, decay: float = 0.8, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Feature importances ``I_i = decay**i`` for ``i = 0 .. n-1``; shape ``(n,)``.

    The powers are computed in double precision and then cast to ``dtype``.
    """
    _check_int("n", n, minimum=1)
    _check_float("decay", decay, low=0.0, low_open=True)
    return torch.tensor([decay**i for i in range(n)], dtype=torch.float64).to(dtype)


def tms_dataset(
    n_features: int = 50,
    n_points: int = 500,
    sparsity: float = 0.9,
    *,
    seed: int = 0,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The fixed TMS training set; shape ``(n_points, n_features)``.

    Each coordinate is 0 with probability ``sparsity`` and otherwise drawn from U[0, 1).
    With ``normalize`` (the paper's setting) every row is then scaled to unit L2 norm; a row
    whose coordinates all came out 0 (probability ``sparsity**n_features``) stays all zero.
    """
    _check_int("n_features", n_features, minimum=1)
    _check_int("n_points", n_points, minimum=1)
    _check_float("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    _check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n_points, n_features, generator=gen, dtype=dtype)
    keep = torch.rand(n_points, n_features, generator=gen, dtype=dtype) >= sparsity
    x = values * keep
    if normalize:
        norms = x.norm(dim=1, keepdim=True)
        x = x / norms.clamp_min(torch.finfo(dtype).tiny)
    return x


@dataclass(frozen=True, eq=False)
class ModAddData:
    """All ``p**2`` pairs ``(a, b)`` with label ``(a + b) mod p``, and a train/test split.

    Row ``i = a*p + b`` of every per-pair tensor belongs to the pair ``(a, b)``.

    Attributes:
        p: the modulus.
        inputs: ``(p**2, 2p)`` float32; one-hot of ``a`` in columns ``0..p-1`` and one-hot of
            ``b`` in columns ``p..2p-1``.
        labels: ``(p**2,)`` int64, ``(a + b) mod p``.
        a, b: ``(p**2,)`` int64 operand indices.
        train_idx, test_idx: sorted int64 row indices; together they partition ``0..p**2-1``.
    """

    p: int
    inputs: torch.Tensor
    labels: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor

    @property
    def targets(self) -> torch.Tensor:
        """One-hot labels, ``(p**2, p)`` float32 (the MSE regression targets)."""
        return modadd_onehot_targets(self.labels, self.p)

    @property
    def n_train(self) -> int:
        return int(self.train_idx.numel())

    @property
    def n_test(self) -> int:
        return int(self.test_idx.numel())


def modadd_dataset(p: int, train_fraction: float = 0.7, *, seed: int = 0) -> ModAddData:
    """All modular-addition pairs for modulus ``p`` with a seeded random train/test split.

    The training set holds ``floor(train_fraction * p**2 + 0.5)`` pairs (589 of 841 for
    ``p = 29``); both sets must be non-empty.
    """
    _check_int("p", p, minimum=2)
    _check_float("train_fraction", train_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    _check_seed("seed", seed)
    n = p * p
    n_train = _train_size(p, train_fraction)
    idx = torch.arange(n)
    a, b = idx // p, idx % p
    inputs = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).to(torch.float32)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ModAddData(
        p=p,
        inputs=inputs,
        labels=(a + b) % p,
        a=a,
        b=b,
        train_idx=perm[:n_train].sort().values,
        test_idx=perm[n_train:].sort().values,
    )


def modadd_onehot_targets(labels: torch.Tensor, p: int) -> torch.Tensor:
    """One-hot float32 targets ``(N, p)`` for integer labels ``(N,)`` in ``0..p-1``."""
    _check_int("p", p, minimum=2)
    return F.one_hot(labels.long(), p).to(torch.float32)


def _train_size(p: int, train_fraction: float) -> int:
    n = p * p
    n_train = math.floor(train_fraction * n + 0.5)
    if not 1 <= n_train <= n - 1:
        raise InvalidArgumentError(
            f"train_fraction={train_fraction!r} leaves the train or the test set empty for "
            f"p={p} ({n} pairs); it must give between 1 and {n - 1} training pairs"
        )
    return n_train


# --- argument checks, shared with models.py and train.py -----------------------------------

_MAX_SEED = 2**63 - 1


def _check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``float(value)`` if it is a finite real in the stated interval, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        )
    x = float(value)
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    interval = f"{left}{lo}, {hi}{right}"
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise InvalidArgumentError(f"{name} must be in {interval}, got {value!r}")
    return x


def _check_seed(name: str, value: object) -> int:
    _check_int(name, value, minimum=0)
    if value > _MAX_SEED:  # type: ignore[operator]
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**63 - 1], got {value}")
    return value  # type: ignore[return-value]
