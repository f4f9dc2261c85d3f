"""The registry of toy tasks: ``kind`` -> :class:`~entk_fast.paper.tasks.spec.TaskSpec`.

A new task is one module in ``experiments/`` that defines a ``TaskSpec``, and one line here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...errors import InvalidArgumentError, InvalidTypeError
from .modadd import MODADD_TASK
from .spec import TaskSpec, stream_seed
from .tms import TMS_TASK
from .transformer import TRANSFORMER_TASK

__all__ = ["TASKS", "build_model", "config_from_dict", "task_of", "task_of_config"]

TASKS: dict[str, TaskSpec] = {spec.kind: spec for spec in (TMS_TASK, MODADD_TASK, TRANSFORMER_TASK)}


def task_of(kind: str) -> TaskSpec:
    """The task registered as ``kind``."""
    spec = TASKS.get(kind)
    if spec is None:
        raise InvalidArgumentError(f"kind must be one of {sorted(TASKS)}, got {kind!r}")
    return spec


def task_of_config(config: Any) -> TaskSpec:
    """The task whose config class ``config`` is an instance of."""
    for spec in TASKS.values():
        if type(config) is spec.config_cls:
            return spec
    names = " or ".join(spec.config_cls.__name__ for spec in TASKS.values())
    raise InvalidTypeError(f"config must be a {names}, got {type(config).__name__}")


def config_from_dict(kind: str, fields: Mapping[str, Any]) -> Any:
    """Rebuild a config from ``kind`` and its ``dataclasses.asdict`` fields (e.g. from JSON)."""
    cls = task_of(kind).config_cls
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown {kind} config field(s): {', '.join(unknown)}")
    return cls(**fields)


def build_model(config: Any) -> nn.Module:
    """The freshly initialised model of ``config`` (deterministic in ``config.seed``)."""
    spec = task_of_config(config)
    generator = torch.Generator().manual_seed(stream_seed(config.seed, "init"))
    return spec.build_model(config, generator)
