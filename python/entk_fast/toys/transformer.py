"""The 1-layer modular-addition transformer and its token data set.

The third model of J. Lin, *Feature Identification via the Empirical NTK* (arXiv 2510.00468,
v3): the sequence (a, b, "=") with "=" the token p, a learned token and position embedding,
one causal attention layer (4 heads) and a ReLU MLP with residual connections, no LayerNorm
and no biases; cross-entropy on the logits of the last position, AdamW with weight decay 1 and
minibatches of 64 on half of the p² pairs.

Every weight matrix is its own module, so the default layerwise eNTK groups are the paper's
per-matrix kernels: ``embed`` (W_E), ``pos_embed`` (W_pos), ``attn.W_Q``, ``attn.W_K``,
``attn.W_V``, ``attn.W_O``, ``mlp.W_in``, ``mlp.W_out`` and ``unembed`` (W_U). Each is a plain
``nn.Linear`` (no bias) or ``nn.Embedding`` called on its true input, so the eNTK engine's
structured Linear/Embedding path can apply; the position embedding is called on
``arange(3)`` for every sample for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import skip_init

from .._validate import check_int
from ..errors import InvalidArgumentError
from .modadd import modadd_dataset

__all__ = [
    "CausalAttention",
    "check_heads",
    "MLP",
    "modadd_tokens",
    "ModAddTokens",
    "ModAddTransformer",
    "N_POSITIONS",
]

N_POSITIONS = 3
"""Sequence length: the tokens a, b and "=".

Examples:
    >>> from entk_fast.toys import modadd_tokens
    >>> from entk_fast.toys.transformer import N_POSITIONS
    >>> modadd_tokens(5).inputs.shape[1] == N_POSITIONS
    True
"""


@dataclass(frozen=True, eq=False)
class ModAddTokens:
    """All ``p**2`` sequences ``(a, b, =)`` with label ``(a + b) mod p``, and a train/test split.

    Row ``i = a*p + b`` of every per-pair tensor belongs to the pair ``(a, b)``; the split is
    the one `modadd_dataset` draws for the same ``train_fraction`` and
    seed.

    Attributes:
        p: the modulus; the vocabulary is ``0..p``, the token ``p`` is "=".
        inputs: ``(p**2, 3)`` int64 token ids ``[a, b, p]``.
        labels: ``(p**2,)`` int64, ``(a + b) mod p``.
        a, b: ``(p**2,)`` int64 operands.
        train_idx, test_idx: sorted int64 row indices; together they partition ``0..p**2-1``.

    Examples:
        >>> from entk_fast.toys import modadd_tokens
        >>> data = modadd_tokens(5)
        >>> data.inputs[:2], (data.n_train, data.n_test)
        (tensor([[0, 0, 5],
                [0, 1, 5]]), (13, 12))
    """

    p: int
    inputs: torch.Tensor
    labels: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    train_idx: torch.Tensor
    test_idx: torch.Tensor

    @property
    def n_train(self) -> int:
        """The number of training sequences."""
        return int(self.train_idx.numel())

    @property
    def n_test(self) -> int:
        """The number of test sequences."""
        return int(self.test_idx.numel())


def modadd_tokens(p: int, train_fraction: float = 0.5, *, seed: int = 0) -> ModAddTokens:
    """The token sequences of all modular-addition pairs with a seeded train/test split.

    The training set holds ``floor(train_fraction * p**2 + 0.5)`` pairs (421 of 841 for
    ``p = 29`` and the default 0.5). The data of the transformer experiment (J. Lin, arXiv
    2510.00468, v3).

    Args:
        p: the modulus, ≥ 2; the token p is "=".
        train_fraction: the share of the p² pairs in the training set, in (0, 1).
        seed: seeds the split, as `modadd_dataset`.

    Returns:
        A `ModAddTokens` (inputs (p², 3) int64 ``[a, b, p]``, labels (p²,) int64).

    Raises:
        InvalidTypeError: p or seed is not an integer, or train_fraction not a real.
        InvalidArgumentError: as `modadd_dataset`.

    Examples:
        >>> from entk_fast.toys import modadd_tokens
        >>> data = modadd_tokens(29)
        >>> data.inputs.shape, data.inputs.dtype, data.n_train
        (torch.Size([841, 3]), torch.int64, 421)
    """
    pairs = modadd_dataset(p, train_fraction, seed=seed)
    equals = torch.full_like(pairs.a, p)
    return ModAddTokens(
        p=p,
        inputs=torch.stack([pairs.a, pairs.b, equals], dim=1),
        labels=pairs.labels,
        a=pairs.a,
        b=pairs.b,
        train_idx=pairs.train_idx,
        test_idx=pairs.test_idx,
    )


def _linear(n_in: int, n_out: int, generator: torch.Generator | None) -> nn.Linear:
    # skip_init: nn.Linear's own init would draw from the global RNG before we overwrite it
    layer = skip_init(nn.Linear, n_in, n_out, bias=False)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(n_in), generator=generator)
    return layer


def _embedding(n: int, d: int, generator: torch.Generator | None) -> nn.Embedding:
    weight = torch.randn(n, d, generator=generator) / math.sqrt(d)
    return nn.Embedding.from_pretrained(weight, freeze=False)


class CausalAttention(nn.Module):
    """Multi-head causal self-attention without biases: ``W_O · concat_h softmax(QKᵀ/√d_h) V``.

    ``W_Q``, ``W_K``, ``W_V``, ``W_O`` are ``nn.Linear(d, d, bias=False)``; head h uses rows
    ``h·d_h .. (h+1)·d_h - 1`` of Q, K and V. Input and output: (N, T, d). Position t
    attends to positions 0..t.

    Args:
        d_model: d, the width; a multiple of ``n_heads`` (not checked here:
            `ModAddTransformer` checks it with `check_heads`).
        n_heads: the number of heads, ≥ 1.
        generator: draws the weights, N(0, 1/d) (default: torch's global generator).

    Examples:
        >>> import torch
        >>> from entk_fast.toys.transformer import CausalAttention
        >>> attention = CausalAttention(8, n_heads=2)
        >>> x = torch.randn(4, 3, 8)
        >>> attention(x).shape
        torch.Size([4, 3, 8])
        >>> y = x.clone()
        >>> y[:, 2] = 0.0  # the last position cannot change the earlier ones' outputs
        >>> torch.allclose(attention(x)[:, :2], attention(y)[:, :2])
        True
    """

    def __init__(
        self, d_model: int, n_heads: int, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        check_heads(d_model, n_heads)
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.W_Q = _linear(d_model, d_model, generator)
        self.W_K = _linear(d_model, d_model, generator)
        self.W_V = _linear(d_model, d_model, generator)
        self.W_O = _linear(d_model, d_model, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        heads = (n, t, self.n_heads, self.d_head)
        q = self.W_Q(x).view(heads).transpose(1, 2)  # (N, H, T, d_h)
        k = self.W_K(x).view(heads).transpose(1, 2)
        v = self.W_V(x).view(heads).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (N, H, T, T)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        pattern = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        z = (pattern @ v).transpose(1, 2).reshape(n, t, d)
        return self.W_O(z)


class MLP(nn.Module):
    """``W_out · ReLU(W_in · x)``, no biases; (..., d) -> (..., d).

    Args:
        d_model: d, the input and output width.
        d_mlp: the hidden width.
        generator: draws the weights, N(0, 1/fan_in) (default: torch's global generator).

    Examples:
        >>> import torch
        >>> from entk_fast.toys.transformer import MLP
        >>> MLP(8, 16)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(self, d_model: int, d_mlp: int, *, generator: torch.Generator | None = None):
        super().__init__()
        check_int("d_model", d_model, minimum=1)
        check_int("d_mlp", d_mlp, minimum=1)
        self.W_in = _linear(d_model, d_mlp, generator)
        self.W_out = _linear(d_mlp, d_model, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(torch.relu(self.W_in(x)))


class ModAddTransformer(nn.Module):
    """A 1-layer transformer for ``(a + b) mod p`` (arXiv 2510.00468, v3), no LayerNorm/biases.

    ``x₀ = W_E[tokens] + W_pos[0..2]``, ``x₁ = x₀ + attn(x₀)`` (causal, ``n_heads`` heads),
    ``x₂ = x₁ + mlp(x₁)`` (ReLU), logits ``= W_U x₂`` at the last position (where alone the
    MLP is evaluated: no later layer reads the other positions). Every weight is
    N(0, 1/fan_in) with torch's fan-in (the input width of a Linear, the width d of an
    embedding row).

    Input: (N, 3) integer tokens ``[a, b, p]`` (any ids in ``0..p``); output: (N, p + 1)
    logits, the last one that of "=" (the loss uses the first p; the eNTK all p + 1).

    Args:
        p: the modulus, ≥ 2; the vocabulary is 0..p.
        d_model: the residual width, a multiple of ``n_heads``.
        n_heads: attention heads, ≥ 1.
        d_mlp: the MLP's hidden width, ≥ 1.
        generator: draws the weights (default: torch's global generator).

    Raises:
        InvalidTypeError: a size is not an integer.
        InvalidArgumentError: a size is out of range or ``d_model`` is no multiple of
            ``n_heads``; in ``forward``, tokens that are not (N, 3) integers (an id above p
            raises torch's ``IndexError``).

    Examples:
        >>> import torch
        >>> import entk_fast as ef
        >>> from entk_fast.toys import ModAddTransformer, modadd_tokens
        >>> model = ModAddTransformer(5, d_model=8, n_heads=2, d_mlp=16)
        >>> tokens = modadd_tokens(5).inputs
        >>> model(tokens).shape  # (N, p + 1) logits
        torch.Size([25, 6])
        >>> ntk = ef.empirical_ntk(model, tokens[:4], reduction="trace", layerwise=True)
        >>> list(ntk.layer_kernels)[:3], ntk.shape
        (['embed', 'pos_embed', 'attn.W_Q'], (4, 4))
    """

    def __init__(
        self,
        p: int,
        d_model: int = 64,
        n_heads: int = 4,
        d_mlp: int = 256,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = check_int("p", p, minimum=2)
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        self.d_mlp = check_int("d_mlp", d_mlp, minimum=1)
        check_heads(d_model, n_heads)
        vocab = p + 1
        self.embed = _embedding(vocab, d_model, generator)
        self.pos_embed = _embedding(N_POSITIONS, d_model, generator)
        self.attn = CausalAttention(d_model, n_heads, generator=generator)
        self.mlp = MLP(d_model, d_mlp, generator=generator)
        self.unembed = _linear(d_model, vocab, generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != N_POSITIONS:
            raise InvalidArgumentError(
                f"tokens must have shape (N, {N_POSITIONS}), got {tuple(tokens.shape)}"
            )
        if tokens.is_floating_point() or tokens.is_complex():
            raise InvalidArgumentError(f"tokens must be integer ids, got {tokens.dtype}")
        n = tokens.shape[0]
        positions = torch.arange(N_POSITIONS, device=tokens.device).expand(n, N_POSITIONS)
        x = self.embed(tokens) + self.pos_embed(positions)  # (N, 3, d)
        x = x + self.attn(x)
        # With one layer nothing mixes positions after the attention, so the other positions'
        # MLP outputs never reach the logits: the MLP runs on the last position only (a third
        # of the work, the same function and gradients).
        last = x[:, -1]  # (N, d)
        return self.unembed(last + self.mlp(last))

    def extra_repr(self) -> str:
        return f"p={self.p}, d_model={self.d_model}, n_heads={self.n_heads}, d_mlp={self.d_mlp}"


def check_heads(d_model: int, n_heads: int) -> None:
    """Check that ``n_heads`` heads split ``d_model`` into equal widths.

    Raises:
        InvalidArgumentError: ``d_model`` is not a multiple of ``n_heads``.

    Examples:
        >>> from entk_fast.toys.transformer import check_heads
        >>> check_heads(8, 2)
        >>> check_heads(8, 3)
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: d_model=8 must be a multiple of n_heads=3 ...
    """
    check_int("d_model", d_model, minimum=1)
    check_int("n_heads", n_heads, minimum=1)
    if d_model % n_heads:
        raise InvalidArgumentError(
            f"d_model={d_model} must be a multiple of n_heads={n_heads} (equal head widths)"
        )
