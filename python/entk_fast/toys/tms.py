"""Toy Models of Superposition: the tied ReLU autoencoder and its sparse data set.

The tied ReLU autoencoder y = ReLU(Wᵀ W x + b) on n = 50 sparse features with importance
0.8^i, trained with importance-weighted MSE (Elhage et al. 2022; the eNTK experiment of
J. Lin, arXiv 2510.00468). Parameter names, which layerwise eNTK groups refer to: ``W``
(m, n), used twice (encoder and decoder are tied), and ``b`` (n,).
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_float, check_int, check_seed
from ..errors import InvalidArgumentError

__all__ = ["TMS", "tms_dataset", "tms_importance"]


def tms_importance(
    n: int, decay: float = 0.8, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Feature importances ``I_i = decay**i`` for ``i = 0 .. n-1``; shape ``(n,)``.

    The powers are computed in double precision and then cast to ``dtype``.
    """
    check_int("n", n, minimum=1)
    check_float("decay", decay, low=0.0, low_open=True)
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
    check_int("n_features", n_features, minimum=1)
    check_int("n_points", n_points, minimum=1)
    check_float("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    check_seed("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n_points, n_features, generator=gen, dtype=dtype)
    keep = torch.rand(n_points, n_features, generator=gen, dtype=dtype) >= sparsity
    x = values * keep
    if normalize:
        norms = x.norm(dim=1, keepdim=True)
        x = x / norms.clamp_min(torch.finfo(dtype).tiny)
    return x


class TMS(nn.Module):
    """Toy Model of Superposition: ``y = ReLU(Wᵀ W x + b)``.

    ``W`` (n_hidden, n_features) is Xavier-normal (std ``sqrt(2 / (n + m))``), ``b``
    (n_features,) starts at zero. Input ``x``: (..., n_features); output: same shape.
    """

    def __init__(
        self, n_features: int, n_hidden: int, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.n_features = check_int("n_features", n_features, minimum=1)
        self.n_hidden = check_int("n_hidden", n_hidden, minimum=1)
        self.W = nn.Parameter(torch.empty(n_hidden, n_features))
        self.b = nn.Parameter(torch.zeros(n_features))
        nn.init.xavier_normal_(self.W, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.n_features:
            raise InvalidArgumentError(
                f"x must have shape (..., {self.n_features}), got {tuple(x.shape)}"
            )
        hidden = x @ self.W.T
        return torch.relu(hidden @ self.W + self.b)

    def feature_gram(self) -> torch.Tensor:
        """``Wᵀ W`` (n_features, n_features), detached; the diagonal is each feature's norm²."""
        with torch.no_grad():
            return self.W.T @ self.W

    def n_reconstructed(self, threshold: float = 0.75) -> int:
        """Number of features with ``(Wᵀ W)_ii >= threshold`` (the paper's criterion)."""
        check_float("threshold", threshold)
        with torch.no_grad():
            return int(((self.W * self.W).sum(dim=0) >= threshold).sum())

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_hidden={self.n_hidden}"
