"""The registry of toy tasks: ``kind`` -> `TaskSpec`.

A new task is one module in ``paper/tasks/`` that defines a ``TaskSpec``, and one line here.
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
"""Every registered task, by kind (what ``config.json`` and ``entk-fast train KIND`` name).

Examples:
    >>> from entk_fast.paper.tasks.registry import TASKS
    >>> sorted(TASKS)
    ['modadd', 'tms', 'transformer']
"""


def task_of(kind: str) -> TaskSpec:
    """The task registered as ``kind``.

    Raises:
        InvalidArgumentError: no task is registered as ``kind``.

    Examples:
        >>> from entk_fast.paper.tasks.registry import task_of
        >>> task_of("tms").config_cls.__name__
        'TMSConfig'
        >>> task_of("mlp")
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: kind must be one of ['modadd', 'tms', ...
    """
    spec = TASKS.get(kind)
    if spec is None:
        raise InvalidArgumentError(f"kind must be one of {sorted(TASKS)}, got {kind!r}")
    return spec


def task_of_config(config: Any) -> TaskSpec:
    """The task whose config class ``config`` is an instance of (exactly, not a subclass).

    Raises:
        InvalidTypeError: ``config`` is no registered task's config.

    Examples:
        >>> from entk_fast.paper import ModAddConfig
        >>> from entk_fast.paper.tasks.registry import task_of_config
        >>> task_of_config(ModAddConfig()).kind
        'modadd'
    """
    for spec in TASKS.values():
        if type(config) is spec.config_cls:
            return spec
    names = " or ".join(spec.config_cls.__name__ for spec in TASKS.values())
    raise InvalidTypeError(f"config must be a {names}, got {type(config).__name__}")


def config_from_dict(kind: str, fields: Mapping[str, Any]) -> Any:
    """Rebuild a config from ``kind`` and its ``dataclasses.asdict`` fields (e.g. from JSON).

    Fields left out take their defaults.

    Raises:
        InvalidArgumentError: ``kind`` is unknown, a field is unknown, or a value is out of
            range.
        InvalidTypeError: a value has the wrong type.

    Examples:
        >>> from entk_fast.paper.tasks.registry import config_from_dict
        >>> config_from_dict("tms", {"n_features": 5, "steps": 10})
        TMSConfig(n_features=5, n_hidden=10, sparsity=0.9, n_points=500, ...steps=10, ...)
    """
    cls = task_of(kind).config_cls
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown {kind} config field(s): {', '.join(unknown)}")
    return cls(**fields)


def build_model(config: Any) -> nn.Module:
    """The freshly initialised model of ``config`` (deterministic in ``config.seed``).

    Raises:
        InvalidTypeError: ``config`` is no registered task's config.

    Examples:
        >>> import torch
        >>> from entk_fast.paper import TMSConfig
        >>> from entk_fast.paper.tasks.registry import build_model
        >>> config = TMSConfig(n_features=5, n_hidden=2)
        >>> model = build_model(config)
        >>> model, torch.equal(model.W, build_model(config).W)
        (TMS(n_features=5, n_hidden=2), True)
    """
    spec = task_of_config(config)
    generator = torch.Generator().manual_seed(stream_seed(config.seed, "init"))
    return spec.build_model(config, generator)
