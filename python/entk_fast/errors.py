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


class StorageError(EntkError, OSError):
    """A file could not be written because its file system is full (or over quota); the
    message names the path. The file it would have replaced is left as it was."""


class SignalInterrupt(KeyboardInterrupt):
    """A signal (SIGTERM: a cluster's time limit, ``kill``) stopped a command the way Ctrl-C
    does; ``signum`` is the signal. The CLI exits with 128 + ``signum`` (143 for SIGTERM, as
    130 = 128 + SIGINT for Ctrl-C). Not an :class:`EntkError`: like Ctrl-C it is no error."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(message if message is not None else f"signal {signum}")
        self.signum = int(signum)


__all__ = [
    "CheckpointError",
    "EntkError",
    "InvalidArgumentError",
    "InvalidTypeError",
    "LinAlgError",
    "MemoryBudgetError",
    "RunDirectoryError",
    "SignalInterrupt",
    "StorageError",
]
