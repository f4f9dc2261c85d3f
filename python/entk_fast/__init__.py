"""entk-fast: find the features a trained network uses from its empirical NTK.

The public API is re-exported here. Submodules are imported lazily, so
``import entk_fast`` is cheap and torch is only imported by the parts that need it
(``entk_fast.linalg`` is torch-free).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
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
    "hadamard_gram_factored_accumulate": "linalg",
    "hadamard_gram_factored_accumulate_many": "linalg",
    "eigh": "linalg",
    "eigh_topk": "linalg",
    "eigh_topk_operator": "linalg",
    "principal_angles": "linalg",
    "subspace_overlap": "linalg",
    "set_num_threads": "linalg",
    "get_num_threads": "linalg",
    # results
    "EmpiricalNTK": "results",
    "NTKSpectrum": "results",
    # eNTK engine and spectra
    "empirical_ntk": "ntk.kernel",
    "entk_spectrum": "spectrum",
    "entk_topk": "spectrum",
    # toy tasks, training, runs
    "TMS": "experiments.tms",
    "TMSConfig": "experiments.tms",
    "tms_importance": "experiments.tms",
    "tms_dataset": "experiments.tms",
    "ModAddMLP": "experiments.modadd",
    "ModAddConfig": "experiments.modadd",
    "modadd_dataset": "experiments.modadd",
    "train_tms": "experiments.train",
    "train_modadd": "experiments.train",
    "load_run": "experiments.runs",
    "Run": "experiments.runs",
}

# Spelled out, not built from _LAZY: static tools read a literal list (pyright does not
# follow `*_LAZY`). tests/test_typing.py checks that it names every lazy name.
__all__ = [
    "CheckpointError",
    "EntkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LinAlgError",
    "MemoryBudgetError",
    "RunDirectoryError",
    "__version__",
    "gram",
    "gram_accumulate",
    "gram_cross",
    "hadamard_gram_accumulate",
    "hadamard_gram_cross",
    "hadamard_gram_factored_accumulate",
    "hadamard_gram_factored_accumulate_many",
    "eigh",
    "eigh_topk",
    "eigh_topk_operator",
    "principal_angles",
    "subspace_overlap",
    "set_num_threads",
    "get_num_threads",
    "EmpiricalNTK",
    "NTKSpectrum",
    "empirical_ntk",
    "entk_spectrum",
    "entk_topk",
    "TMS",
    "TMSConfig",
    "tms_importance",
    "tms_dataset",
    "ModAddMLP",
    "ModAddConfig",
    "modadd_dataset",
    "train_tms",
    "train_modadd",
    "load_run",
    "Run",
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


if TYPE_CHECKING:  # pragma: no cover - what static type checkers see for the lazy names
    from .experiments.modadd import ModAddConfig, ModAddMLP, modadd_dataset  # noqa: F401
    from .experiments.runs import Run, load_run  # noqa: F401
    from .experiments.tms import TMS, TMSConfig, tms_dataset, tms_importance  # noqa: F401
    from .experiments.train import train_modadd, train_tms  # noqa: F401
    from .linalg import (  # noqa: F401
        eigh,
        eigh_topk,
        eigh_topk_operator,
        get_num_threads,
        gram,
        gram_accumulate,
        gram_cross,
        hadamard_gram_accumulate,
        hadamard_gram_cross,
        hadamard_gram_factored_accumulate,
        hadamard_gram_factored_accumulate_many,
        principal_angles,
        set_num_threads,
        subspace_overlap,
    )
    from .ntk.kernel import empirical_ntk  # noqa: F401
    from .results import EmpiricalNTK, NTKSpectrum  # noqa: F401
    from .spectrum import entk_spectrum, entk_topk  # noqa: F401
