"""Modular addition with a 1-layer MLP that groks: data, model, config and training step.

Gromov's model f(x) = (1/H) W₂ (W₁ x / √(2p))² on all p² pairs (a, b) → (a + b) mod p, MSE on
one-hot labels, AdamW, full batch (the grokking experiment of J. Lin, arXiv 2510.00468).
Parameter names: ``W1.weight`` (H, 2p) and ``W2.weight`` (p, H), plain ``nn.Linear`` layers
without bias; the scales and the square are plain ops in ``forward``, so each Linear sees its
true input and the eNTK engine's structured Linear path applies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .._validate import check_float, check_int, check_seed
from ..errors import InvalidArgumentError
from .task import CliOption, CurvePanel, TaskSpec, check_common, setter

__all__ = [
    "MODADD_TASK",
    "ModAddConfig",
    "ModAddData",
    "ModAddMLP",
    "first_step_above",
    "modadd_dataset",
    "modadd_onehot_targets",
]


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
    check_int("p", p, minimum=2)
    check_float("train_fraction", train_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_seed("seed", seed)
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
    check_int("p", p, minimum=2)
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


@dataclass(frozen=True)
class ModAddConfig:
    """Modular-addition MLP training. One step is one full-batch epoch.

    Attributes:
        p: modulus (>= 2); inputs are 2p-dimensional, outputs p-dimensional.
        hidden: H, hidden width.
        train_fraction: fraction of the p² pairs in the training set.
        lr, weight_decay: AdamW hyper-parameters (betas and eps are PyTorch's defaults).
        epochs: number of full-batch AdamW steps.
        seed: seeds the model initialisation.
        data_seed: seeds the train/test split (:func:`~entk_fast.modadd_dataset`).
        log_every: a history row every this many epochs (and at epochs 0 and ``epochs``).
        checkpoint_every: a checkpoint every this many epochs (and at epochs 0 and ``epochs``).
    """

    kind: ClassVar[str] = "modadd"

    p: int = 29
    hidden: int = 512
    train_fraction: float = 0.7
    lr: float = 0.05
    weight_decay: float = 0.01
    epochs: int = 500
    seed: int = 0
    data_seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        set_ = setter(self)
        set_("p", check_int("p", self.p, minimum=2))
        set_("hidden", check_int("hidden", self.hidden, minimum=1))
        fraction = check_float(
            "train_fraction", self.train_fraction, low=0, high=1, low_open=True, high_open=True
        )
        set_("train_fraction", fraction)
        _train_size(self.p, fraction)
        set_("lr", check_float("lr", self.lr, low=0, low_open=True))
        set_("weight_decay", check_float("weight_decay", self.weight_decay, low=0))
        set_("epochs", check_int("epochs", self.epochs, minimum=1))
        check_common(self)

    @property
    def total_steps(self) -> int:
        return self.epochs

    def dataset(self) -> ModAddData:
        """All p² pairs with this run's train/test split."""
        return modadd_dataset(self.p, self.train_fraction, seed=self.data_seed)


class _ModAddTrainer:
    """MSE on one-hot labels, AdamW, full batch; accuracy by arg-max."""

    def __init__(self, config: ModAddConfig, model: nn.Module) -> None:
        data = config.dataset()
        self.x, self.labels, targets = data.inputs, data.labels, data.targets
        self.train_idx, self.test_idx = data.train_idx, data.test_idx
        self.x_train, self.y_train = self.x[self.train_idx], targets[self.train_idx]
        self.targets = targets
        self.model = model
        self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.mse_loss(self.model(self.x_train), self.y_train).backward()
        self.optimizer.step()

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            out = self.model(self.x)
            sq_err = ((out - self.targets) ** 2).mean(dim=1)
            correct = (out.argmax(dim=1) == self.labels).to(torch.float64)
        m: dict[str, float] = {}
        for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
            m[f"{split}_loss"] = sq_err[idx].mean().item()
            m[f"{split}_acc"] = correct[idx].mean().item()
        return m


def first_step_above(history: Mapping[str, Any], column: str, threshold: float) -> int | None:
    """First logged step at which ``history[column] > threshold``, or ``None``."""
    import numpy as np

    values = np.asarray(history[column], dtype=np.float64)
    hits = np.flatnonzero(values > threshold)
    return None if hits.size == 0 else int(np.asarray(history["step"])[hits[0]])


def _summary(config: ModAddConfig, history: Mapping[str, Any]) -> list[str]:
    epoch = first_step_above(history, "test_acc", 0.5)
    return [
        f"final train acc {100 * history['train_acc'][-1]:.1f}%, "
        f"test acc {100 * history['test_acc'][-1]:.1f}%",
        "test accuracy first above 50% at epoch " + ("-" if epoch is None else str(epoch)),
    ]


def _build(config: ModAddConfig, generator: torch.Generator) -> nn.Module:
    return ModAddMLP(config.p, config.hidden, generator=generator)


MODADD_TASK = TaskSpec(
    kind="modadd",
    config_cls=ModAddConfig,
    build_model=_build,
    trainer=lambda config, model: _ModAddTrainer(config, model),
    columns=("step", "train_loss", "test_loss", "train_acc", "test_acc"),
    panels=(
        CurvePanel(("train_loss", "test_loss"), "loss", log=True),
        CurvePanel(("train_acc", "test_acc"), "accuracy (%)", percent=True),
    ),
    title="Modular addition training",
    step_unit="epochs",
    help="modular-addition MLP f(x) = (1/H) W₂ (W₁x/√(2p))², grokking (arXiv 2510.00468)",
    description="Train the modular-addition MLP on all p² pairs (a, b) -> (a + b) mod p: "
    "MSE on one-hot labels, AdamW, full batch (one step per epoch). Options left out take "
    "the defaults shown (the paper's values). With --resume, options left out are taken "
    "from the saved run and any given must match it.",
    options=(
        CliOption("--p", "p", int, "modulus p (>= 2)"),
        CliOption("--hidden", "hidden", int, "hidden width H"),
        CliOption(
            "--train-fraction",
            "train_fraction",
            float,
            "fraction of the p² pairs used for training",
        ),
        CliOption("--lr", "lr", float, "AdamW learning rate"),
        CliOption("--weight-decay", "weight_decay", float, "AdamW weight decay"),
        CliOption("--epochs", "epochs", int, "number of full-batch epochs"),
    ),
    summary=_summary,
)
