"""Atomic file writes: a temporary file next to the target, fsync, then ``os.replace``; and
the one JSON object a CLI command prints with ``--json``.

A crash or Ctrl-C leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InvalidArgumentError

__all__ = [
    "TMP_FILE_RE",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "json_default",
    "print_json",
    "stdout_to_stderr",
]

#: Names of the temporary files :func:`atomic_open` writes (``.NAME.<12 hex>.tmp``).
TMP_FILE_RE = r"^\..+\.[0-9a-f]{12}\.tmp$"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit, fsync it and rename it onto
    ``path``. On an exception (Ctrl-C included) the temporary file is removed and ``path``
    is left untouched. ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text).
    """
    if mode not in ("wb", "w"):
        raise InvalidArgumentError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, unlike mkstemp's 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, mode, encoding=None if mode == "wb" else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays, paths and sets as JSON."""
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def print_json(obj: Any) -> None:
    """A command's ``--json`` output: ``obj`` as one JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(obj, default=json_default) + "\n")
    sys.stdout.flush()


def add_json_flag(parser: Any, what: str = "the summary") -> None:
    """The ``--json`` option of a command that prints a summary (see :func:`print_json`)."""
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} as one JSON object on stdout (the narration goes to stderr)",
    )


def stdout_to_stderr(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """While a ``--json`` command computes, its human-readable lines go to stderr, so stdout
    holds nothing but the JSON object printed after the block."""
    return contextlib.redirect_stdout(sys.stderr) if enabled else contextlib.nullcontext()
