"""The exceptions entk-fast raises, in one place.

Every error a user can provoke derives from `EntkError` and also from the builtin
exception a Python user would expect (``ValueError``, ``TypeError``, ...), so both
``except entk_fast.EntkError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class EntkError(Exception):
    """Base class of every error raised by entk-fast.

    Catch it to handle any error the library raises on purpose; each subclass is also the
    builtin exception a Python user would expect (``ValueError``, ``TypeError``, ...).

    Examples:
        >>> import numpy as np
        >>> from entk_fast import EntkError, linalg
        >>> try:
        ...     linalg.gram(np.ones((3, 2), dtype=np.int64))
        ... except EntkError as exc:
        ...     print(type(exc).__name__)
        InvalidTypeError
    """


class InvalidArgumentError(EntkError, ValueError):
    """An argument has the wrong shape, value or content (the message names it).

    Also a ``ValueError``.

    Examples:
        >>> import numpy as np
        >>> from entk_fast import linalg
        >>> linalg.gram(np.ones(3))
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidArgumentError: J: expected a 2-D array, got shape (3,)
        >>> try:
        ...     linalg.eigh(np.ones((2, 3)))
        ... except ValueError as exc:
        ...     print(exc)
        K: expected a square matrix (n, n), got shape (2, 3)
    """


class InvalidTypeError(EntkError, TypeError):
    """An argument has the wrong type or dtype (the message names it).

    Also a ``TypeError``.

    Examples:
        >>> import torch
        >>> import entk_fast as ef
        >>> ef.empirical_ntk("not a model", torch.ones(4, 3))
        Traceback (most recent call last):
            ...
        entk_fast.errors.InvalidTypeError: model must be a torch.nn.Module, got str
    """


class LinAlgError(EntkError, ArithmeticError):
    """A linear-algebra routine failed to converge or produced a non-finite result.

    Raised by the Rust solvers of `entk_fast.linalg` and by the matrix-free products of
    `entk_topk`; bad input is an
    `InvalidArgumentError` instead, raised before any work. Also an
    ``ArithmeticError``.

    Examples:
        >>> from entk_fast import EntkError, LinAlgError
        >>> issubclass(LinAlgError, EntkError), issubclass(LinAlgError, ArithmeticError)
        (True, True)
    """


class MemoryBudgetError(EntkError, MemoryError):
    """The requested computation cannot fit in the memory budget; raised before any work.

    The message says what needs how much, and what would fit (a reduction, fewer parameters,
    `entk_topk`). Also a ``MemoryError``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        >>> ef.empirical_ntk(model, torch.ones(4, 3), max_memory=1)
        Traceback (most recent call last):
            ...
        entk_fast.errors.MemoryBudgetError: max_memory = 1 B is too small: ...
    """


class RunDirectoryError(EntkError, OSError):
    """A run directory is missing, belongs to a different run, or cannot be written.

    Raised by `entk_fast.paper.load_run` and the training functions of
    `entk_fast.paper`. Also an ``OSError``.

    Examples:
        >>> from entk_fast.paper import load_run
        >>> load_run("no/such/run")
        Traceback (most recent call last):
            ...
        entk_fast.errors.RunDirectoryError: run directory no/such/run does not exist
    """


class CheckpointError(EntkError, OSError):
    """A checkpoint file is missing, truncated or corrupt.

    Raised by `entk_fast.paper.Run.load_checkpoint` and when a run is resumed. Also an
    ``OSError``.

    Examples:
        >>> import tempfile
        >>> from entk_fast.paper import TMSConfig, load_run, train_tms
        >>> config = TMSConfig(n_features=4, n_hidden=2, n_points=8, steps=2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_tms(config, f"{tmp}/run", progress=False, plot=False)
        ...     load_run(f"{tmp}/run").load_checkpoint(step=1)
        Traceback (most recent call last):
            ...
        entk_fast.errors.CheckpointError: no checkpoint for step 1 in ... (available steps: 0, 2)
    """


class StorageError(EntkError, OSError):
    """A file could not be written because its file system is full (or over quota); the
    message names the path. The file it would have replaced is left as it was.

    Also an ``OSError``, so ``except OSError`` handlers written for a full disk still work.

    Examples:
        >>> from entk_fast.errors import EntkError, StorageError
        >>> issubclass(StorageError, EntkError), issubclass(StorageError, OSError)
        (True, True)
    """


class SignalInterrupt(KeyboardInterrupt):
    """A signal (SIGTERM: a cluster's time limit, ``kill``) stopped a command the way Ctrl-C
    does; ``signum`` is the signal. The CLI exits with 128 + ``signum`` (143 for SIGTERM, as
    130 = 128 + SIGINT for Ctrl-C). Not an `EntkError`: like Ctrl-C it is no error.

    Args:
        signum: the signal's number.
        message: the text of the exception (default ``"signal {signum}"``).

    Examples:
        >>> import signal
        >>> from entk_fast.errors import SignalInterrupt
        >>> stop = SignalInterrupt(signal.SIGTERM)
        >>> stop.signum, str(stop), isinstance(stop, KeyboardInterrupt)
        (15, 'signal 15', True)
    """

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
