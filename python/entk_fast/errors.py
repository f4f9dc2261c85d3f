"""The exceptions entk-fast raises, in one place.

Every error a user can provoke derives from :class:`EntkError` and also from the builtin
exception a Python user would expect (``ValueError``, ``TypeError``, ...), so both
``except entk_fast.EntkError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class EntkError(Exception):
    """Base class of every error raised by entk-fast."""


class InvalidArgumentError(EntkError, ValueError):
    """An argument has the wrong shape, value or content (the message names it)."""


class InvalidTypeError(EntkError, TypeError):
    """An argument has the wrong type or dtype (the message names it)."""


class LinAlgError(EntkError, ArithmeticError):
    """A linear-algebra routine failed to converge or produced a non-finite result."""


class MemoryBudgetError(EntkError, MemoryError):
    """The requested computation cannot fit in the memory budget; raised before any work."""


class RunDirectoryError(EntkError, OSError):
    """A run directory is missing, belongs to a different run, or cannot be written."""


class CheckpointError(EntkError, OSError):
    """A checkpoint file is missing, truncated or corrupt."""


__all__ = [
    "CheckpointError",
    "EntkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LinAlgError",
    "MemoryBudgetError",
    "RunDirectoryError",
]
