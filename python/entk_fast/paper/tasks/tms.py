"""Toy Models of Superposition: the training config, trainer and task entry.

The tied ReLU autoencoder y = ReLU(Wᵀ W x + b) on n = 50 sparse features with importance
0.8^i, trained with importance-weighted MSE (Elhage et al. 2022; the eNTK experiment of
J. Lin, arXiv 2510.00468). Parameter names, which layerwise eNTK groups refer to: ``W``
(m, n), used twice (encoder and decoder are tied), and ``b`` (n,).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..._validate import check_float, check_int
from ...toys.tms import TMS, tms_dataset, tms_importance
from .spec import CliOption, CurvePanel, TaskSpec, check_common, setter

__all__ = ["TMSConfig", "TMS_TASK"]


@dataclass(frozen=True)
class TMSConfig:
    """TMS training. Change fields with ``dataclasses.replace(config, ...)``.

    Attributes:
        n_features: n, number of features (input and output size).
        n_hidden: m, hidden width.
        sparsity: S in [0, 1), probability that a feature is 0.
        n_points: D, size of the fixed training set.
        importance_decay: importance of feature i is ``importance_decay**i``.
        lr: Adam learning rate.
        steps: number of full-batch Adam steps.
        seed: seeds the model initialisation.
        data_seed: seeds `tms_dataset`.
        log_every: a history row every this many steps (and at steps 0 and ``steps``).
        checkpoint_every: a checkpoint every this many steps (and at steps 0 and ``steps``).

    The defaults are the paper's (J. Lin, arXiv 2510.00468, Toy Models of Superposition).

    Raises:
        InvalidTypeError: a field has the wrong type (e.g. a float for an integer).
        InvalidArgumentError: a field is out of range.

    Examples:
        >>> from entk_fast.paper import TMSConfig
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16)
        >>> config.dataset().shape, config.importance().shape
        (torch.Size([16, 5]), torch.Size([5]))
        >>> TMSConfig(sparsity=1.0)
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: sparsity must be in [0, 1), got 1.0
    """

    kind: ClassVar[str] = "tms"

    n_features: int = 50
    n_hidden: int = 10
    sparsity: float = 0.9
    n_points: int = 500
    importance_decay: float = 0.8
    lr: float = 1e-3
    steps: int = 5000
    seed: int = 0
    data_seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        set_ = setter(self)
        set_("n_features", check_int("n_features", self.n_features, minimum=1))
        set_("n_hidden", check_int("n_hidden", self.n_hidden, minimum=1))
        set_("sparsity", check_float("sparsity", self.sparsity, low=0, high=1, high_open=True))
        set_("n_points", check_int("n_points", self.n_points, minimum=1))
        decay = check_float("importance_decay", self.importance_decay, low=0, low_open=True)
        set_("importance_decay", decay)
        set_("lr", check_float("lr", self.lr, low=0, low_open=True))
        set_("steps", check_int("steps", self.steps, minimum=1))
        check_common(self)

    @property
    def total_steps(self) -> int:
        """The training steps: ``steps``."""
        return self.steps

    def dataset(self) -> torch.Tensor:
        """The fixed training set, (n_points, n_features) float32."""
        return tms_dataset(self.n_features, self.n_points, self.sparsity, seed=self.data_seed)

    def importance(self) -> torch.Tensor:
        """Feature importances, (n_features,) float32."""
        return tms_importance(self.n_features, self.importance_decay)


class _TMSTrainer:
    """Importance-weighted MSE, Adam, full batch."""

    def __init__(self, config: TMSConfig, model: nn.Module) -> None:
        self.x = config.dataset()
        self.importance = config.importance()
        assert isinstance(model, TMS)
        self.tms = model
        self.model: nn.Module = model
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def _loss(self) -> torch.Tensor:
        return (self.importance * (self.x - self.tms(self.x)) ** 2).mean()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._loss().backward()
        self.optimizer.step()

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            loss = self._loss().item()
        return {"loss": loss, "n_reconstructed": float(self.tms.n_reconstructed())}


def _summary(config: TMSConfig, history: Mapping[str, Any]) -> list[str]:
    return [
        f"final loss {history['loss'][-1]:.4g}; reconstructed features "
        f"((WᵀW)_ii >= 0.75): {int(history['n_reconstructed'][-1])} of {config.n_features}"
    ]


def _build(config: TMSConfig, generator: torch.Generator) -> nn.Module:
    return TMS(config.n_features, config.n_hidden, generator=generator)


TMS_TASK = TaskSpec(
    kind="tms",
    config_cls=TMSConfig,
    build_model=_build,
    trainer=lambda config, model: _TMSTrainer(config, model),
    columns=("step", "loss", "n_reconstructed"),
    panels=(
        CurvePanel(("loss",), "loss", log=True),
        CurvePanel(
            ("n_reconstructed",), r"features with $(W^\top W)_{ii} \geq 0.75$", integer=True
        ),
    ),
    title="TMS training",
    step_unit="steps",
    help="Toy Model of Superposition, y = ReLU(WᵀWx + b) (arXiv 2510.00468)",
    description="Train TMS on a fixed data set: importance-weighted MSE, Adam, full batch. "
    "Options left out take the defaults shown (the paper's values). With --resume, "
    "options left out are taken from the saved run and any given must match it.",
    options=(
        CliOption("--features", "n_features", int, "number of features n"),
        CliOption("--hidden", "n_hidden", int, "hidden width m"),
        CliOption("--sparsity", "sparsity", float, "probability S in [0, 1) that a feature is 0"),
        CliOption("--points", "n_points", int, "size D of the fixed training set"),
        CliOption(
            "--importance-decay", "importance_decay", float, "importance of feature i is this**i"
        ),
        CliOption("--lr", "lr", float, "Adam learning rate"),
        CliOption("--steps", "steps", int, "number of full-batch steps"),
    ),
    summary=_summary,
)
"""The ``tms`` task: `TMSConfig`, the `TMS` and its trainer, as
registered in `entk_fast.paper.tasks.registry.TASKS`.

Examples:
    >>> from entk_fast.paper.tasks.tms import TMS_TASK
    >>> TMS_TASK.kind, TMS_TASK.columns
    ('tms', ('step', 'loss', 'n_reconstructed'))
"""
