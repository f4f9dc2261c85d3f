"""The modular-addition transformer: the training config, trainer and task entry.

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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..._validate import check_float, check_int
from ...toys.modadd import train_size
from ...toys.transformer import (
    ModAddTokens,
    ModAddTransformer,
    check_heads,
    modadd_tokens,
)
from .modadd import first_step_above
from .spec import CliOption, CurvePanel, TaskSpec, check_common, setter, stream_seed

__all__ = ["TRANSFORMER_TASK", "TransformerConfig"]


@dataclass(frozen=True)
class TransformerConfig:
    """Modular-addition transformer training. One step is one epoch of shuffled minibatches.

    Attributes:
        p: modulus (>= 2); vocabulary p + 1, outputs p + 1 logits.
        d_model, n_heads, d_mlp: residual width, attention heads, MLP width.
        train_fraction: fraction of the p² pairs in the training set.
        lr, weight_decay, beta1, beta2: AdamW hyper-parameters (eps is PyTorch's default).
            ``lr`` is 1e-3 where the paper has 3e-4: at 3e-4 seed 1 was still at 40% test
            accuracy after 4000 epochs; at 1e-3 seeds 0, 1, 2 and 4 reach ≥ 99% by epoch
            860–1290 and end at ≥ 99.5% (seed 3 stalls at 98.1%).
        batch_size: minibatch size; each epoch visits the training set once in a fresh
            random order (the last minibatch holds the remainder).
        epochs: number of epochs.
        seed: seeds the model initialisation and the minibatch order.
        data_seed: seeds the train/test split (`modadd_tokens`).
        log_every: a history row every this many epochs (and at epochs 0 and ``epochs``).
        checkpoint_every: a checkpoint every this many epochs (and at epochs 0 and ``epochs``).

    The defaults are the paper's (J. Lin, arXiv 2510.00468, v3), except ``lr`` (above).

    Raises:
        InvalidTypeError: a field has the wrong type (e.g. a float for an integer).
        InvalidArgumentError: a field is out of range, ``d_model`` is no multiple of
            ``n_heads``, or ``train_fraction`` leaves a set empty.

    Examples:
        >>> from entk_fast.paper import TransformerConfig
        >>> config = TransformerConfig(p=5, d_model=8, n_heads=2, d_mlp=16, epochs=2)
        >>> config.total_steps, config.dataset().inputs.shape
        (2, torch.Size([25, 3]))
        >>> TransformerConfig(d_model=10, n_heads=4)
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: d_model=10 must be a multiple of n_heads=4 ...
    """

    kind: ClassVar[str] = "transformer"

    p: int = 29
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    train_fraction: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    batch_size: int = 64
    epochs: int = 4000
    seed: int = 0
    data_seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 20

    def __post_init__(self) -> None:
        set_ = setter(self)
        set_("p", check_int("p", self.p, minimum=2))
        set_("d_model", check_int("d_model", self.d_model, minimum=1))
        set_("n_heads", check_int("n_heads", self.n_heads, minimum=1))
        set_("d_mlp", check_int("d_mlp", self.d_mlp, minimum=1))
        check_heads(self.d_model, self.n_heads)
        fraction = check_float(
            "train_fraction", self.train_fraction, low=0, high=1, low_open=True, high_open=True
        )
        set_("train_fraction", fraction)
        train_size(self.p, fraction)
        set_("lr", check_float("lr", self.lr, low=0, low_open=True))
        set_("weight_decay", check_float("weight_decay", self.weight_decay, low=0))
        for name in ("beta1", "beta2"):
            set_(name, check_float(name, getattr(self, name), low=0, high=1, high_open=True))
        set_("batch_size", check_int("batch_size", self.batch_size, minimum=1))
        set_("epochs", check_int("epochs", self.epochs, minimum=1))
        check_common(self)

    @property
    def total_steps(self) -> int:
        """The training steps: ``epochs``."""
        return self.epochs

    def dataset(self) -> ModAddTokens:
        """All p² sequences with this run's train/test split."""
        return modadd_tokens(self.p, self.train_fraction, seed=self.data_seed)


class _TransformerTrainer:
    """Cross-entropy on the first p logits of the last position, AdamW, shuffled minibatches.

    The minibatch order comes from ``generator`` (seeded from the config's seed), which the
    training loop saves and restores with every checkpoint, so a resumed run draws the same
    orders as an uninterrupted one.
    """

    def __init__(self, config: TransformerConfig, model: nn.Module) -> None:
        data = config.dataset()
        self.p = config.p
        self.x, self.labels = data.inputs, data.labels
        self.train_idx, self.test_idx = data.train_idx, data.test_idx
        self.x_train, self.y_train = self.x[self.train_idx], self.labels[self.train_idx]
        self.batch_size = config.batch_size
        self.model = model
        self.generator = torch.Generator().manual_seed(stream_seed(config.seed, "train"))
        self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            weight_decay=config.weight_decay,
            fused=True,  # one kernel for all parameters: the per-step overhead of a tiny model
        )

    def step(self) -> None:
        """One epoch."""
        order = torch.randperm(self.x_train.shape[0], generator=self.generator)
        x, y = self.x_train[order], self.y_train[order]
        p, optimizer, model = self.p, self.optimizer, self.model
        for xb, yb in zip(x.split(self.batch_size), y.split(self.batch_size), strict=True):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb)[:, :p], yb).backward()
            optimizer.step()

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            logits = self.model(self.x)[:, : self.p]
            loss = F.cross_entropy(logits, self.labels, reduction="none").to(torch.float64)
            correct = (logits.argmax(dim=1) == self.labels).to(torch.float64)
        m: dict[str, float] = {}
        for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
            m[f"{split}_loss"] = loss[idx].mean().item()
            m[f"{split}_acc"] = correct[idx].mean().item()
        return m


def _summary(config: TransformerConfig, history: Mapping[str, Any]) -> list[str]:
    half = first_step_above(history, "test_acc", 0.5)
    high = first_step_above(history, "test_acc", 0.99)
    return [
        f"final train acc {100 * history['train_acc'][-1]:.1f}%, "
        f"test acc {100 * history['test_acc'][-1]:.1f}%",
        "test accuracy first above 50% at epoch "
        + ("-" if half is None else str(half))
        + ", above 99% at epoch "
        + ("-" if high is None else str(high)),
    ]


def _build(config: TransformerConfig, generator: torch.Generator) -> nn.Module:
    return ModAddTransformer(
        config.p, config.d_model, config.n_heads, config.d_mlp, generator=generator
    )


TRANSFORMER_TASK = TaskSpec(
    kind="transformer",
    config_cls=TransformerConfig,
    build_model=_build,
    trainer=lambda config, model: _TransformerTrainer(config, model),
    columns=("step", "train_loss", "test_loss", "train_acc", "test_acc"),
    panels=(
        CurvePanel(("train_loss", "test_loss"), "cross-entropy", log=True),
        CurvePanel(("train_acc", "test_acc"), "accuracy (%)", percent=True),
    ),
    title="Modular addition transformer training",
    step_unit="epochs",
    help="1-layer transformer on (a, b, =) -> (a + b) mod p, grokking (arXiv 2510.00468 v3)",
    description="Train the 1-layer modular-addition transformer on half of the p² pairs "
    "(a, b, =) -> (a + b) mod p: cross-entropy on the last position, AdamW with weight "
    "decay, shuffled minibatches (one step per epoch). Options left out take the defaults "
    "shown (the paper's values). With --resume, options left out are taken from the saved "
    "run and any given must match it.",
    options=(
        CliOption("--p", "p", int, "modulus p (>= 2)"),
        CliOption("--d-model", "d_model", int, "residual stream width"),
        CliOption("--heads", "n_heads", int, "attention heads (must divide --d-model)"),
        CliOption("--d-mlp", "d_mlp", int, "MLP hidden width"),
        CliOption(
            "--train-fraction",
            "train_fraction",
            float,
            "fraction of the p² pairs used for training",
        ),
        CliOption("--lr", "lr", float, "AdamW learning rate"),
        CliOption("--weight-decay", "weight_decay", float, "AdamW weight decay"),
        CliOption("--beta1", "beta1", float, "AdamW β₁ (first-moment decay)"),
        CliOption("--beta2", "beta2", float, "AdamW β₂ (second-moment decay)"),
        CliOption("--batch-size", "batch_size", int, "minibatch size"),
        CliOption("--epochs", "epochs", int, "number of epochs"),
    ),
    summary=_summary,
)
"""The ``transformer`` task: `TransformerConfig`, the
`ModAddTransformer` and its minibatch trainer, as registered in
`entk_fast.paper.tasks.registry.TASKS`.

Examples:
    >>> from entk_fast.paper.tasks.transformer import TRANSFORMER_TASK
    >>> TRANSFORMER_TASK.kind, [option.flag for option in TRANSFORMER_TASK.options][:3]
    ('transformer', ['--p', '--d-model', '--heads'])
"""
