"""entk-fast: find the features a trained network uses from its empirical NTK.

The user's API: `empirical_ntk` (the kernel), `entk_spectrum` and `entk_topk`
(its eigenpairs), `entk_plan` (what `entk_spectrum` would do and cost, before it runs), their
results `EmpiricalNTK` and `NTKSpectrum`, the errors, and
`entk_fast.linalg` (the Rust kernels). Beside them: `entk_fast.plotting`,
`entk_fast.analysis`, `entk_fast.toys` (the paper's models and data sets),
`entk_fast.paper` (its harness) and `entk_fast.batch` (many runs, on Dask).

Submodules are imported lazily, so ``import entk_fast`` is cheap and torch is only imported by
the parts that need it (``entk_fast.linalg`` is torch-free). ``entk_fast.__version__`` is the
installed version, a string.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> import entk_fast as ef
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> x = torch.randn(4, 3)  # N = 4 samples, C = 2 outputs
    >>> ef.empirical_ntk(model, x).kernel.shape  # (N·C, N·C)
    (8, 8)
    >>> spec = ef.entk_spectrum(model, x, k=3)
    >>> spec.eigenvalues.shape, spec.eigenvectors.shape  # (k,), (N·C, k)
    ((3,), (8, 3))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    EntkError,
    InvalidArgumentError,
    InvalidTypeError,
    LinAlgError,
    MemoryBudgetError,
)

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "empirical_ntk": "ntk.kernel",
    "entk_spectrum": "ntk.spectrum",
    "entk_topk": "ntk.spectrum",
    "entk_plan": "ntk.estimate",
    "EmpiricalNTK": "results",
    "NTKSpectrum": "results",
    "set_num_threads": "linalg",
    "get_num_threads": "linalg",
}

#: Subpackages reachable as attributes (``entk_fast.linalg``, ``entk_fast.toys``, ...), imported
#: on first use.
_SUBMODULES = frozenset(
    {"analysis", "batch", "linalg", "ntk", "paper", "plotting", "results", "toys"}
)

# Spelled out, not built from _LAZY: static tools read a literal list (pyright does not
# follow `*_LAZY`). tests/test_typing.py checks that it names every lazy name.
__all__ = [
    "EmpiricalNTK",
    "EntkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LinAlgError",
    "MemoryBudgetError",
    "NTKSpectrum",
    "__version__",
    "empirical_ntk",
    "entk_plan",
    "entk_spectrum",
    "entk_topk",
    "get_num_threads",
    "linalg",
    "set_num_threads",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'entk_fast' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - what static type checkers see for the lazy names
    from . import linalg  # noqa: F401
    from .linalg import get_num_threads, set_num_threads  # noqa: F401
    from .ntk.estimate import entk_plan  # noqa: F401
    from .ntk.kernel import empirical_ntk  # noqa: F401
    from .ntk.spectrum import entk_spectrum, entk_topk  # noqa: F401
    from .results import EmpiricalNTK, NTKSpectrum  # noqa: F401
