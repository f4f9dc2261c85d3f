"""The one set of argument checks: each returns the normalised value or raises an error that
names the argument and says what was expected.

The Rust core checks the shapes, ranges and values of the arrays it receives; these checks
are for the Python-level arguments (counts, seeds, tolerances, memory sizes, choices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, InvalidTypeError

__all__ = [
    "MAX_SEED",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_k",
    "check_kernel_nonzero",
    "check_ridge",
    "check_seed",
    "check_solver_options",
    "parse_memory",
]

MAX_SEED = 2**63 - 1


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False (a numpy bool too); a flag given as anything else, such as
    ``"yes"`` or ``1``, is refused rather than read by its truth value."""
    if not isinstance(value, bool | np.bool_):
        raise InvalidTypeError(
            f"{name} must be True or False, got {type(value).__name__} {value!r}"
        )
    return bool(value)


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an int if it is an integer (Python or numpy, not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if it is a finite real (Python or numpy) in the stated interval."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidTypeError(
            f"{name} must be a real number, got {type(value).__name__} {value!r}"
        )
    x = float(value)
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise InvalidArgumentError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return x


def check_seed(name: str, value: object) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    seed = check_int(name, value, minimum=0)
    if seed > MAX_SEED:
        raise InvalidArgumentError(f"{name} must be an integer in [0, 2**63 - 1], got {seed}")
    return seed


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{name} must be a string, got {type(value).__name__}")
    if value not in choices:
        raise InvalidArgumentError(
            f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}"
        )
    return value


def check_k(k: object, size: int, *, required: bool) -> int | None:
    """The number of eigenpairs: an integer in [1, size], or None where allowed."""
    if k is None:
        if required:
            raise InvalidArgumentError("k is required: give the number of eigenpairs to compute")
        return None
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise InvalidTypeError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= int(k) <= size:
        raise InvalidArgumentError(f"k must be in [1, {size}] (the kernel's order), got {k}")
    return int(k)


def check_ridge(ridge: object) -> float:
    """The relative ridge ε ≥ 0 (finite, and small enough that ε·mean(diag K) stays finite)."""
    eps = check_float("ridge", ridge, low=0.0)
    if eps > 1e100:
        raise InvalidArgumentError(
            f"ridge is relative to mean(diag K) and must be at most 1e100, got {ridge!r}"
        )
    return eps


def check_solver_options(
    *, tol: object = None, maxiter: object = None, block: object = None, seed: object = 0
) -> tuple[float | None, int | None, int | None, int]:
    """``(tol, maxiter, block, seed)`` of an iterative eigensolver, checked before any work.

    ``tol``: None (the solver's default) or a finite real > 0 (both top-k solvers refuse 0 and
    negative values). ``maxiter``: None or an integer ≥ 1. ``block``: None or an integer ≥ 1
    (its upper limit, the kernel's order, is checked once that is known). ``seed``: an
    integer in [0, 2**63 - 1].
    """
    tol_value = None if tol is None else check_float("tol", tol, low=0.0, low_open=True)
    iters = None if maxiter is None else check_int("maxiter", maxiter, minimum=1)
    vectors = None if block is None else check_int("block", block, minimum=1)
    return tol_value, iters, vectors, check_seed("seed", seed)


def check_kernel_nonzero(magnitude: float) -> None:
    """Refuse an identically zero eNTK before an eigensolver sees it.

    ``magnitude``: trace(K), max |K|, or |K v| for a random v (zero only when K = 0, K being
    PSD). A zero eNTK means the model's output does not depend on the selected parameters;
    every vector is then an eigenvector of eigenvalue 0 and there are no features to find.
    """
    if magnitude == 0:
        raise InvalidArgumentError(
            "the eNTK is identically zero: the model's output does not depend on the selected "
            "parameters (a .detach() or torch.no_grad() in forward, or params= naming "
            "parameters the output does not use), so it has no spectrum to analyse; "
            "empirical_ntk(...) returns that zero kernel"
        )


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MAX_BYTES = 2**62


def parse_memory(value: Any, name: str = "max_memory") -> int | None:
    """Bytes from a number (bytes) or a string like ``'4GB'``, ``'512 MiB'``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be a number of bytes or a string like '4GB'")
    if isinstance(value, int | float | np.integer | np.floating):
        size = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(
                f"{name} {value!r} is not a size; use bytes or e.g. '512MB', '4GB', '2GiB'"
            )
        size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise InvalidTypeError(
            f"{name} must be a number of bytes or a string like '4GB', got {type(value).__name__}"
        )
    if not math.isfinite(size) or size <= 0:
        raise InvalidArgumentError(f"{name} must be a positive, finite size, got {value!r}")
    return int(min(size, _MAX_BYTES))
