"""What a toy task is: the :class:`TaskSpec` a task module fills in and registers.

A task (TMS, the modular-addition MLP, ...) is one module in ``experiments/`` that defines its
config dataclass, model, data, training step and metrics, and one :class:`TaskSpec`; the
registry (:mod:`entk_fast.paper.tasks.registry`) lists the specs, and the training loop, run
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
    """One task's training state: the model, its optimizer, one step and the metrics."""

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def step(self) -> None: ...

    def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class CliOption:
    """A ``entk-fast train KIND`` option setting one config field."""

    flag: str
    field: str
    type: type
    help: str


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the training-curve figure: history columns against step."""

    columns: tuple[str, ...]
    ylabel: str
    log: bool = False
    percent: bool = False
    """Values in [0, 1] drawn as percentages."""
    integer: bool = False


@dataclass(frozen=True)
class TaskSpec:
    """Everything the shared machinery needs to know about one task."""

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
    """Store a normalised field on a frozen dataclass (e.g. lr=1 -> 1.0, so JSON is canonical)."""
    return lambda name, value: object.__setattr__(config, name, value)


def check_common(config: Any) -> None:
    """The fields every task config has: seeds and the logging / checkpoint intervals."""
    check_seed("seed", config.seed)
    check_seed("data_seed", config.data_seed)
    check_int("log_every", config.log_every, minimum=1)
    check_int("checkpoint_every", config.checkpoint_every, minimum=1)


def stream_seed(seed: int, tag: str) -> int:
    """A seed derived from ``seed`` for one random stream (``"init"``, ``"train"``).

    Derived seeds keep the init and training streams apart from the data stream even when
    seed == data_seed (two generators seeded alike would produce correlated draws).
    """
    digest = hashlib.blake2b(f"entk-fast/{tag}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
