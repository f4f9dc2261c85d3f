"""Modular addition with a 1-layer MLP: the model and its data set (all p² pairs, split).

Gromov's model f(x) = (1/H) W₂ (W₁ x / √(2p))² on all p² pairs (a, b) → (a + b) mod p, MSE on
one-hot labels, AdamW, full batch (the grokking experiment of J. Lin, arXiv 2510.00468).
Parameter names: ``W1.weight`` (H, 2p) and ``W2.weight`` (p, H), plain ``nn.Linear`` layers
without bias; the scales and the square are plain ops in ``forward``, so each Linear sees its
true input and the eNTK engine's structured Linear path applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .._validate import check_float, check_int, check_seed
from ..errors import InvalidArgumentError

__all__ = ["modadd_dataset", "modadd_onehot_targets", "ModAddData", "ModAddMLP", "train_size"]


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

    Examples:
        >>> from entk_fast.toys import modadd_dataset
        >>> data = modadd_dataset(5)
        >>> data.inputs.shape, data.targets.shape, (data.n_train, data.n_test)
        (torch.Size([25, 10]), torch.Size([25, 5]), (18, 7))
        >>> int(data.a[7]), int(data.b[7]), int(data.labels[7])  # row 7 = 1·5 + 2
        (1, 2, 3)
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
        """The number of training pairs."""
        return int(self.train_idx.numel())

    @property
    def n_test(self) -> int:
        """The number of test pairs."""
        return int(self.test_idx.numel())


def modadd_dataset(p: int, train_fraction: float = 0.7, *, seed: int = 0) -> ModAddData:
    """All modular-addition pairs for modulus ``p`` with a seeded random train/test split.

    The training set holds ``floor(train_fraction * p**2 + 0.5)`` pairs (589 of 841 for
    ``p = 29``); both sets must be non-empty. The data of the grokking experiment (J. Lin,
    arXiv 2510.00468).

    Args:
        p: the modulus, ≥ 2.
        train_fraction: the share of the p² pairs in the training set, in (0, 1).
        seed: seeds the split (deterministic; independent of torch's global generator).

    Returns:
        A `ModAddData` (inputs (p², 2p) float32, labels (p²,) int64, the split).

    Raises:
        InvalidTypeError: p or seed is not an integer, or train_fraction not a real.
        InvalidArgumentError: p < 2, train_fraction outside (0, 1) or leaving a set empty,
            or a seed outside [0, 2**63 − 1].

    Examples:
        >>> from entk_fast.toys import modadd_dataset
        >>> data = modadd_dataset(29)
        >>> data.inputs.shape, data.n_train, data.n_test
        (torch.Size([841, 58]), 589, 252)
    """
    check_int("p", p, minimum=2)
    check_float("train_fraction", train_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_seed("seed", seed)
    n = p * p
    n_train = train_size(p, train_fraction)
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
    """One-hot float32 targets ``(N, p)`` for integer labels ``(N,)`` in ``0..p-1``.

    Raises:
        InvalidTypeError: p is not an integer.
        InvalidArgumentError: p < 2 (a label ≥ p raises torch's own ``RuntimeError``).

    Examples:
        >>> import torch
        >>> from entk_fast.toys import modadd_onehot_targets
        >>> modadd_onehot_targets(torch.tensor([0, 2]), 3)
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
    """
    check_int("p", p, minimum=2)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= p):
        raise InvalidArgumentError(
            f"labels must be in [0, {p}) for p = {p}, got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return F.one_hot(labels.long(), p).to(torch.float32)


def train_size(p: int, train_fraction: float) -> int:
    """The training pairs of a split: ``floor(train_fraction * p**2 + 0.5)``.

    Raises:
        InvalidArgumentError: the split would leave the train or the test set empty.

    Examples:
        >>> from entk_fast.toys.modadd import train_size
        >>> train_size(29, 0.7)
        589
        >>> train_size(5, 0.01)
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: train_fraction=0.01 leaves the train or ...
    """
    n = p * p
    n_train = math.floor(train_fraction * n + 0.5)
    if not 1 <= n_train <= n - 1:
        raise InvalidArgumentError(
            f"train_fraction={train_fraction!r} leaves the train or the test set empty for "
            f"p={p} ({n} pairs); it must give between 1 and {n - 1} training pairs"
        )
    return n_train


class ModAddMLP(nn.Module):
    """Gromov's modular-addition MLP: ``f(x) = (1/H) W₂ (W₁ x / √(2p))²``, no biases.

    ``W1 = nn.Linear(2p, H)`` and ``W2 = nn.Linear(H, p)``, weights i.i.d. N(0, 1)
    (``nn.Linear`` stores weights as (out, in)). Input: (..., 2p) (two concatenated one-hot
    vectors); output: (..., p) scores for ``(a + b) mod p``. The grokking model of J. Lin,
    arXiv 2510.00468, whose eNTK eigenvectors form Fourier families
    (`entk_fast.analysis.block_overlaps`).

    Args:
        p: the modulus, ≥ 2.
        hidden: H, the hidden width, ≥ 1.
        generator: draws the weights (default: torch's global generator).

    Raises:
        InvalidTypeError: p or hidden is not an integer.
        InvalidArgumentError: p < 2 or hidden < 1; in ``forward``, ``x``'s last dim is not 2p.

    Examples:
        >>> import torch
        >>> import entk_fast as ef
        >>> from entk_fast.toys import ModAddMLP, modadd_dataset
        >>> model = ModAddMLP(5, hidden=16, generator=torch.Generator().manual_seed(0))
        >>> data = modadd_dataset(5)
        >>> model(data.inputs).shape, [name for name, _ in model.named_parameters()]
        (torch.Size([25, 5]), ['W1.weight', 'W2.weight'])
        >>> ef.empirical_ntk(model, data.inputs, reduction="trace").shape  # (p², p²)
        (25, 25)
    """

    def __init__(
        self, p: int, hidden: int = 512, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.p = check_int("p", p, minimum=2)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.input_scale = 1.0 / math.sqrt(2 * p)
        self.output_scale = 1.0 / hidden
        # skip_init: nn.Linear's own init would draw from the global RNG before we overwrite it
        self.W1 = skip_init(nn.Linear, 2 * p, hidden, bias=False)
        self.W2 = skip_init(nn.Linear, hidden, p, bias=False)
        for layer in (self.W1, self.W2):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != 2 * self.p:
            raise InvalidArgumentError(
                f"x must have shape (..., {2 * self.p}), got {tuple(x.shape)}"
            )
        z = self.W1(x) * self.input_scale
        return self.W2(z * z) * self.output_scale

    def extra_repr(self) -> str:
        return f"p={self.p}, hidden={self.hidden}"
