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

    The powers are computed in double precision and then cast to ``dtype``. The TMS loss
    weights (Elhage et al. 2022; J. Lin, arXiv 2510.00468 uses decay 0.8).

    Args:
        n: the number of features, ≥ 1.
        decay: the ratio of consecutive importances, > 0.
        dtype: the result's dtype.

    Returns:
        (n,) tensor of ``dtype``.

    Raises:
        InvalidTypeError: n is not an integer, or decay not a real number.
        InvalidArgumentError: n < 1, or decay ≤ 0 or not finite.

    Examples:
        >>> from entk_fast.toys import tms_importance
        >>> tms_importance(4)
        tensor([1.0000, 0.8000, 0.6400, 0.5120])
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

    Args:
        n_features: n, the features per point.
        n_points: D, the number of points.
        sparsity: S in [0, 1), the probability that a coordinate is 0.
        seed: seeds the draw (deterministic; independent of torch's global generator).
        normalize: scale every non-zero row to unit norm.
        dtype: the result's dtype.

    Returns:
        (n_points, n_features) tensor of ``dtype``, entries in [0, 1].

    Raises:
        InvalidTypeError: a count or the seed is not an integer, or sparsity not a real.
        InvalidArgumentError: a count < 1, sparsity outside [0, 1), or a seed outside
            [0, 2**63 − 1].

    Examples:
        >>> from entk_fast.toys import tms_dataset
        >>> x = tms_dataset(n_features=5, n_points=8, sparsity=0.5, seed=0)
        >>> x.shape, x.dtype, bool((x.norm(dim=1) - 1).abs().max() < 1e-6)
        (torch.Size([8, 5]), torch.float32, True)
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
    The first model of J. Lin, arXiv 2510.00468, whose flattened eNTK's top eigenvectors
    recover the features (`entk_fast.analysis.feature_heatmap`).

    Args:
        n_features: n, the input and output width, ≥ 1.
        n_hidden: m, the hidden width, ≥ 1.
        generator: draws ``W`` (default: torch's global generator).

    Raises:
        InvalidTypeError: a width is not an integer.
        InvalidArgumentError: a width is < 1; in ``forward``, ``x``'s last dim is not n.

    Examples:
        >>> import torch
        >>> import entk_fast as ef
        >>> from entk_fast.toys import TMS, tms_dataset
        >>> model = TMS(5, 2, generator=torch.Generator().manual_seed(0))
        >>> x = tms_dataset(5, 8, seed=0)
        >>> model(x).shape, sorted(name for name, _ in model.named_parameters())
        (torch.Size([8, 5]), ['W', 'b'])
        >>> ef.empirical_ntk(model, x).shape  # (N·n, N·n)
        (40, 40)
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
        """``Wᵀ W`` (n_features, n_features), detached; the diagonal is each feature's norm².

        Examples:
            >>> from entk_fast.toys import TMS
            >>> TMS(5, 2).feature_gram().shape
            torch.Size([5, 5])
        """
        with torch.no_grad():
            return self.W.T @ self.W

    def n_reconstructed(self, threshold: float = 0.75) -> int:
        """Number of features with ``(Wᵀ W)_ii >= threshold`` (the paper's criterion).

        Examples:
            >>> import torch
            >>> from entk_fast.toys import TMS
            >>> model = TMS(3, 2)
            >>> with torch.no_grad():
            ...     _ = model.W.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]))
            >>> model.n_reconstructed()  # feature norms² 1, 1, 0.5
            2
        """
        check_float("threshold", threshold)
        with torch.no_grad():
            return int(((self.W * self.W).sum(dim=0) >= threshold).sum())

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_hidden={self.n_hidden}"
