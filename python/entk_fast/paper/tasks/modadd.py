"""Modular addition with a 1-layer MLP that groks: the training config, trainer and task entry.

Gromov's model f(x) = (1/H) W₂ (W₁ x / √(2p))² on all p² pairs (a, b) → (a + b) mod p, MSE on
one-hot labels, AdamW, full batch (the grokking experiment of J. Lin, arXiv 2510.00468).
Parameter names: ``W1.weight`` (H, 2p) and ``W2.weight`` (p, H), plain ``nn.Linear`` layers
without bias; the scales and the square are plain ops in ``forward``, so each Linear sees its
true input and the eNTK engine's structured Linear path applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._validate import check_float, check_int
from ...toys.modadd import ModAddData, ModAddMLP, modadd_dataset, train_size
from .spec import CliOption, CurvePanel, TaskSpec, check_common, setter

__all__ = ["MODADD_TASK", "ModAddConfig", "first_step_above"]


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
        data_seed: seeds the train/test split (`modadd_dataset`).
        log_every: a history row every this many epochs (and at epochs 0 and ``epochs``).
        checkpoint_every: a checkpoint every this many epochs (and at epochs 0 and ``epochs``).

    The defaults are the paper's (J. Lin, arXiv 2510.00468, the modular-addition MLP).

    Raises:
        InvalidTypeError: a field has the wrong type (e.g. a float for an integer).
        InvalidArgumentError: a field is out of range, or ``train_fraction`` leaves a set
            empty.

    Examples:
        >>> import dataclasses
        >>> from entk_fast.paper import ModAddConfig
        >>> config = dataclasses.replace(ModAddConfig(), p=7, epochs=50)
        >>> config.total_steps, config.dataset().n_train  # 70% of the 49 pairs
        (50, 34)
        >>> ModAddConfig(p=1)
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: p must be an integer >= 2, got 1
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
        train_size(self.p, fraction)
        set_("lr", check_float("lr", self.lr, low=0, low_open=True))
        set_("weight_decay", check_float("weight_decay", self.weight_decay, low=0))
        set_("epochs", check_int("epochs", self.epochs, minimum=1))
        check_common(self)

    @property
    def total_steps(self) -> int:
        """The training steps: ``epochs``."""
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
    """First logged step at which ``history[column] > threshold``, or ``None``.

    Examples:
        >>> from entk_fast.paper.tasks.modadd import first_step_above
        >>> history = {"step": [0, 10, 20], "test_acc": [0.1, 0.6, 0.99]}
        >>> first_step_above(history, "test_acc", 0.5), first_step_above(history, "test_acc", 1)
        (10, None)
    """
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
"""The ``modadd`` task: `ModAddConfig`, the `ModAddMLP` and its
trainer, as registered in `entk_fast.paper.tasks.registry.TASKS`.

Examples:
    >>> from entk_fast.paper.tasks.modadd import MODADD_TASK
    >>> MODADD_TASK.kind, MODADD_TASK.step_unit, MODADD_TASK.columns[1:3]
    ('modadd', 'epochs', ('train_loss', 'test_loss'))
"""
