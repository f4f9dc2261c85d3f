"""The paper's two toy models: TMS (tied ReLU autoencoder) and the grokking modular-addition MLP.

Parameter names (what layerwise eNTK groups refer to):

* :class:`TMS`: ``W`` (m, n), used twice (encoder and decoder are tied), and ``b`` (n,).
* :class:`ModAddMLP`: ``W1.weight`` (H, 2p) and ``W2.weight`` (p, H), both plain
  ``nn.Linear`` layers without bias; the scales and the square are plain ops in ``forward``,
  so each Linear sees its true input and the eNTK engine's structured Linear path applies.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import skip_init

from .data import _check_float, _check_int
from .errors import InvalidArgumentError

__all__ = ["TMS", "ModAddMLP"]


class TMS(nn.Module):
    """Toy Model of Superposition: ``y = ReLU(Wᵀ W x + b)``.

    ``W`` (n_hidden, n_features) is Xavier-normal (std ``sqrt(2 / (n + m))``), ``b``
    (n_features,) starts at zero. Input ``x``: (..., n_features); output: same shape.
    """

    def __init__(
        self, n_features: int, n_hidden: int, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.n_features = _check_int("n_features", n_features, minimum=1)
        self.n_hidden = _check_int("n_hidden", n_hidden, minimum=1)
        self.W = nn.Parameter(torch.empty(n_hidden, n_features))
        self.b = nn.Parameter(torch.zeros(n_features))
        nn.init.xavier_normal_(self.W, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim("x", x, self.n_features)
        hidden = x @ self.W.T
        return torch.relu(hidden @ self.W + self.b)

    def feature_gram(self) -> torch.Tensor:
        """``Wᵀ W`` (n_features, n_features), detached; the diagonal is each feature's norm²."""
        with torch.no_grad():
            return self.W.T @ self.W

    def n_reconstructed(self, threshold: float = 0.75) -> int:
        """Number of features with ``(Wᵀ W)_ii >= threshold`` (the paper's criterion)."""
        _check_float("threshold", threshold)
        with torch.no_grad():
            return int(((self.W * self.W).sum(dim=0) >= threshold).sum())

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_hidden={self.n_hidden}"


class ModAddMLP(nn.Module):
    """Gromov's modular-addition MLP: ``f(x) = (1/H) W₂ (W₁ x / √(2p))²``, no biases.

    ``W1 = nn.Linear(2p, H)`` and ``W2 = nn.Linear(H, p)``, weights i.i.d. N(0, 1)
    (``nn.Linear`` stores weights as (out, in)). Input: (..., 2p) (two concatenated one-hot
    vectors); output: (..., p) scores for ``(a + b) mod p``.
    """

    def __init__(
        self, p: int, hidden: int = 512, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.p = _check_int("p", p, minimum=2)
        self.hidden = _check_int("hidden", hidden, minimum=1)
        self.input_scale = 1.0 / math.sqrt(2 * p)
        self.output_scale = 1.0 / hidden
        # skip_init: nn.Linear's own init would draw from the global RNG before we overwrite it
        self.W1 = skip_init(nn.Linear, 2 * p, hidden, bias=False)
        self.W2 = skip_init(nn.Linear, hidden, p, bias=False)
        for layer in (self.W1, self.W2):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_last_dim("x", x, 2 * self.p)
        z = self.W1(x) * self.input_scale
        return self.W2(z * z) * self.output_scale

    def extra_repr(self) -> str:
        return f"p={self.p}, hidden={self.hidden}"


def _check_last_dim(name: str, x: torch.Tensor, size: int) -> None:
    if x.dim() == 0 or x.shape[-1] != size:
        raise InvalidArgumentError(f"{name} must have shape (..., {size}), got {tuple(x.shape)}")
