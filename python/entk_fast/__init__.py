"""entk-fast: find the features a trained network uses from its empirical NTK.

The public API is re-exported here. Submodules are imported lazily, so
``import entk_fast`` is cheap and torch is only imported by the parts that need it
(``entk_fast.linalg`` is torch-free).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointError,
    EntkError,
    InvalidArgumentError,
    InvalidTypeError,
    LinAlgError,
    MemoryBudgetError,
    RunDirectoryError,
)

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    # linalg (Rust core)
    "gram": "linalg",
    "gram_accumulate": "linalg",
    "gram_cross": "linalg",
    "hadamard_gram_accumulate": "linalg",
    "hadamard_gram_cross": "linalg",
    "eigh": "linalg",
    "eigh_topk": "linalg",
    "principal_angles": "linalg",
    "subspace_overlap": "linalg",
    "set_num_threads": "linalg",
    "get_num_threads": "linalg",
    # eNTK engine
    "empirical_ntk": "ntk",
    "entk_spectrum": "ntk",
    "entk_topk": "ntk",
    "EmpiricalNTK": "ntk",
    "NTKSpectrum": "ntk",
    # toy models, data, training, runs
    "TMS": "models",
    "ModAddMLP": "models",
    "tms_importance": "data",
    "tms_dataset": "data",
    "modadd_dataset": "data",
    "TMSConfig": "train",
    "ModAddConfig": "train",
    "train_tms": "train",
    "train_modadd": "train",
    "load_run": "runs",
    "Run": "runs",
}

__all__ = [
    "CheckpointError",
    "EntkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LinAlgError",
    "MemoryBudgetError",
    "RunDirectoryError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'entk_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("entk-fast")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


__version__ = _version()

if TYPE_CHECKING:  # pragma: no cover - for static type checkers only
    from .linalg import (  # noqa: F401
        eigh,
        eigh_topk,
        get_num_threads,
        gram,
        gram_accumulate,
        gram_cross,
        hadamard_gram_accumulate,
        principal_angles,
        set_num_threads,
        subspace_overlap,
    )
