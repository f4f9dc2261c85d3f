"""The paper's harness (J. Lin, arXiv 2510.00468): training the toy models into run
directories, the demo, the figures and ``reproduce/`` (one module per section of the paper).

It uses the library like any user would. The names most users want:

* `train_tms`, `train_modadd` and `TMSConfig`, `ModAddConfig`,
  `TransformerConfig`: train a toy model, writing checkpoints into a run directory;
* `load_run` and `Run`: read a run directory back (config, history, checkpoints).

Submodules are imported on first use, so ``import entk_fast.paper`` is cheap.

Examples:
    >>> import tempfile
    >>> from entk_fast.paper import TMSConfig, load_run, train_tms
    >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=20, checkpoint_every=10)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = train_tms(config, f"{tmp}/run", progress=False, plot=False)
    ...     run = load_run(f"{tmp}/run")
    ...     run.completed, run.checkpoint_steps
    (True, [0, 10, 20])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "train_tms": "training",
    "train_modadd": "training",
    "train": "training",
    "load_run": "runs",
    "Run": "runs",
    "TMSConfig": "tasks.tms",
    "ModAddConfig": "tasks.modadd",
    "TransformerConfig": "tasks.transformer",
}

__all__ = [
    "ModAddConfig",
    "Run",
    "TMSConfig",
    "TransformerConfig",
    "load_run",
    "train",
    "train_modadd",
    "train_tms",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'entk_fast.paper' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - what static type checkers see for the lazy names
    from .runs import Run, load_run  # noqa: F401
    from .tasks.modadd import ModAddConfig  # noqa: F401
    from .tasks.tms import TMSConfig  # noqa: F401
    from .tasks.transformer import TransformerConfig  # noqa: F401
    from .training import train, train_modadd, train_tms  # noqa: F401
