"""What a toy task is: the `TaskSpec` a task module fills in and registers.

A task (TMS, the modular-addition MLP, ...) is one module in ``paper/tasks/`` that defines its
config dataclass, model, data, training step and metrics, and one `TaskSpec`; the
registry (`entk_fast.paper.tasks.registry`) lists the specs, and the training loop, run
directories, plots and CLI read everything task-specific from there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..._validate import check_int, check_seed

__all__ = [
    "CliOption",
    "CurvePanel",
    "TaskSpec",
    "Trainer",
    "check_common",
    "setter",
    "stream_seed",
]


class Trainer(Protocol):
    """One task's training state: the model, its optimizer, one step and the metrics.

    ``step()`` runs one training step (one epoch for the modular-addition tasks);
    ``metrics()`` returns the history columns other than ``"step"``.

    Examples:
        >>> from entk_fast.paper import TMSConfig
        >>> from entk_fast.paper.tasks.registry import build_model, task_of
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16)
        >>> trainer = task_of("tms").trainer(config, build_model(config))
        >>> trainer.step()
        >>> sorted(trainer.metrics())
        ['loss', 'n_reconstructed']
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def step(self) -> None: ...

    def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class CliOption:
    """A ``entk-fast train KIND`` option setting one config field.

    Examples:
        >>> from entk_fast.paper.tasks.registry import task_of
        >>> option = task_of("tms").options[0]
        >>> option.flag, option.field, option.type, option.help
        ('--features', 'n_features', <class 'int'>, 'number of features n')
    """

    flag: str
    field: str
    type: type
    help: str


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the training-curve figure: history columns against step.

    Examples:
        >>> from entk_fast.paper.tasks.registry import task_of
        >>> panel = task_of("modadd").panels[1]
        >>> panel.columns, panel.percent
        (('train_acc', 'test_acc'), True)
    """

    columns: tuple[str, ...]
    ylabel: str
    log: bool = False
    percent: bool = False
    """Values in [0, 1] drawn as percentages."""
    integer: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """Everything the shared machinery needs to know about one task.

    Examples:
        >>> from entk_fast.paper import TMSConfig
        >>> from entk_fast.paper.tasks.registry import task_of
        >>> spec = task_of("tms")
        >>> spec.config_cls is TMSConfig, spec.columns[0], spec.step_unit
        (True, 'step', 'steps')
    """

    kind: str
    config_cls: type
    build_model: Callable[[Any, torch.Generator], nn.Module]
    """(config, generator) -> the freshly initialised model."""
    trainer: Callable[[Any, nn.Module], Trainer]
    """(config, freshly built model) -> the training state."""
    columns: tuple[str, ...]
    """History columns, ``"step"`` first."""
    panels: tuple[CurvePanel, CurvePanel]
    title: str
    step_unit: str
    """``"steps"`` or ``"epochs"`` (what one training step is called)."""
    help: str
    description: str
    options: tuple[CliOption, ...]
    summary: Callable[[Any, Mapping[str, Any]], list[str]]
    """(config, history) -> lines the CLI prints after training."""


def setter(config: Any) -> Callable[[str, Any], None]:
    """Store a normalised field on a frozen dataclass (e.g. lr=1 -> 1.0, so JSON is canonical).

    For a config's ``__post_init__``.

    Examples:
        >>> from entk_fast.paper import TMSConfig
        >>> from entk_fast.paper.tasks.spec import setter
        >>> TMSConfig(lr=1).lr  # __post_init__ stored float(1)
        1.0
        >>> config = TMSConfig()
        >>> setter(config)("lr", 0.5)
        >>> config.lr
        0.5
    """
    return lambda name, value: object.__setattr__(config, name, value)


def check_common(config: Any) -> None:
    """The fields every task config has: seeds and the logging / checkpoint intervals.

    Raises:
        InvalidTypeError: a seed or an interval is not an integer.
        InvalidArgumentError: a seed is outside [0, 2**63 − 1], or an interval is < 1.

    Examples:
        >>> from entk_fast.paper import TMSConfig
        >>> TMSConfig(log_every=0)  # __post_init__ calls check_common
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: log_every must be an integer >= 1, got 0
    """
    check_seed("seed", config.seed)
    check_seed("data_seed", config.data_seed)
    check_int("log_every", config.log_every, minimum=1)
    check_int("checkpoint_every", config.checkpoint_every, minimum=1)


def stream_seed(seed: int, tag: str) -> int:
    """A seed derived from ``seed`` for one random stream (``"init"``, ``"train"``).

    Derived seeds keep the init and training streams apart from the data stream even when
    seed == data_seed (two generators seeded alike would produce correlated draws).

    Returns:
        An integer in [0, 2**63), the same on every machine (a BLAKE2b hash).

    Examples:
        >>> from entk_fast.paper.tasks.spec import stream_seed
        >>> stream_seed(0, "init")
        8851645867076104042
        >>> stream_seed(0, "init") != stream_seed(0, "train")
        True
    """
    digest = hashlib.blake2b(f"entk-fast/{tag}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
