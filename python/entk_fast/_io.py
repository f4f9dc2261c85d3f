"""Atomic file writes: a temporary file next to the target, fsync, then ``os.replace``;
bounded reads of regular files; and what a CLI command prints with ``--json`` (its summary,
or one error object), and how a signal stops it.

A crash or Ctrl-C leaves either the old file or the new one, never a torn one. A full disk
is reported as a `StorageError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InvalidArgumentError, SignalInterrupt, StorageError

__all__ = [
    "TMP_FILE_RE",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "json_default",
    "open_regular",
    "owner_tag",
    "print_json",
    "print_json_error",
    "read_regular_bytes",
    "sigterm_as_interrupt",
    "stdout_to_stderr",
    "storage_error",
    "written_by_dead_process",
]

#: Names of the temporary files `atomic_open` writes (``.NAME.<owner>.<12 hex>.tmp``,
#: older versions: ``.NAME.<12 hex>.tmp``).
TMP_FILE_RE = r"^\..+\.[0-9a-f]{12}\.tmp$"
#: The writer of a temporary file or folder: ``<pid>-<8 hex of the host name>``.
_OWNER_RE = re.compile(r"\.(\d+)-([0-9a-f]{8})\.[0-9a-f]{12}\.(?:tmp|partial)$")
#: errno values that mean "the file system is full" (EDQUOT: over quota).
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<pid>-<host>`` of this process, put in the names of the temporary files it writes so
    that a later cleanup removes only those of writers that are gone."""
    return f"{os.getpid()}-{_host_tag()}"


def written_by_dead_process(name: str) -> bool:
    """Whether the temporary file or folder ``name`` (``….<pid>-<host>.<12 hex>.tmp`` or
    ``.partial``) was written by a process of this host that no longer runs. False when
    unsure: an older name without an owner, another host's writer, a live (or reused) pid."""
    match = _OWNER_RE.search(name)
    if match is None or match.group(2) != _host_tag():
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def storage_error(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` as a `StorageError` naming ``path`` when it says the disk is full (or
    over quota); ``exc`` itself otherwise."""
    code = exc.errno
    if isinstance(exc, StorageError) or code is None or code not in _FULL:
        return exc
    full = StorageError(
        f"cannot write {os.fspath(path)}: {os.strerror(code)} (errno "
        f"{errno.errorcode.get(code, '?')}); free space or write elsewhere — the file it "
        "would replace is unchanged"
    )
    full.errno = code
    return full


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit, fsync it and rename it onto
    ``path``. On an exception (Ctrl-C included) the temporary file is removed and ``path``
    is left untouched. ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text).
    """
    if mode not in ("wb", "w"):
        raise InvalidArgumentError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{owner_tag()}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, unlike mkstemp's 0o600.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise storage_error(e, target) from e
    try:
        with open(fd, mode, encoding=None if mode == "wb" else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (full := storage_error(e, target)) is not e:
            raise full from e
        raise
    fsync_dir(target.parent)


def read_regular_bytes(
    path: str | os.PathLike[str], max_bytes: int, *, what: str = "path"
) -> bytes:
    """The bytes of ``path`` when it is a regular file (a symlink to one is followed) of at
    most ``max_bytes``; `InvalidArgumentError` naming ``what`` otherwise (a device
    such as /dev/zero, a FIFO, a folder, a file too large). OSError when it cannot be read."""
    with open_regular(path, max_bytes, what=what) as (f, size):
        data = f.read(size + 1)  # bounded by the size checked against the cap
    if len(data) > size:
        raise InvalidArgumentError(f"{what}: {os.fspath(path)} grew while it was read")
    return data


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike[str], max_bytes: int | None, *, what: str = "path"
) -> Iterator[tuple[IO[bytes], int]]:
    """``(binary file, size)`` of ``path`` when it is a regular file (symlinks followed) of at
    most ``max_bytes`` (None: any size); refused before a byte is read otherwise. Opened
    non-blocking, so a FIFO never hangs the caller."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgumentError(
                f"{what}: {os.fspath(path)} is not a regular file (a device, FIFO, socket or "
                "folder, or a symlink to one); refusing to read it"
            )
        if max_bytes is not None and st.st_size > max_bytes:
            raise InvalidArgumentError(
                f"{what}: {os.fspath(path)} holds {st.st_size} bytes, more than the "
                f"{max_bytes} allowed"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = open(fd, "rb", closefd=True)  # noqa: SIM115 - closed below
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, st.st_size


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_open`)."""
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
    """The ``--json`` option of a command that prints a summary (see `print_json`)."""
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print {what} as one JSON object on stdout (the narration goes to stderr)",
    )


def print_json_error(exc: BaseException, message: str | None = None) -> None:
    """A failed ``--json`` command's one JSON object on stdout:
    ``{"error": message, "type": the exception's class name}``."""
    print_json({"error": str(exc) if message is None else message, "type": type(exc).__name__})


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `SignalInterrupt` (a KeyboardInterrupt) in the main thread for
    the block, so a command stops as on Ctrl-C (temporary files removed, reports written)
    and exits 128 + 15. Elsewhere than the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SignalInterrupt(signum, f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stdout_to_stderr(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """While a ``--json`` command computes, its human-readable lines go to stderr, so stdout
    holds nothing but the JSON object printed after the block."""
    return contextlib.redirect_stdout(sys.stderr) if enabled else contextlib.nullcontext()
