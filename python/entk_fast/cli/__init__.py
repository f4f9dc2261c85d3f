"""The ``entk-fast`` command line.

Convention for subcommands: a module exposes ``add_parser(subparsers)``, which registers its
subparser and calls ``set_defaults(func=...)`` with ``func(args) -> int``. `main` parses,
calls ``args.func(args)``, and turns an `EntkError` into
``entk-fast: error: <message>`` on stderr with exit status 2 (1 for a computation that
failed). With ``--json``, every error also prints one JSON object on stdout,
``{"error": <message>, "type": <exception class>}``, and keeps its exit status. A signal
that stops a command exits 128 + its number, for every command: 130 for Ctrl-C (SIGINT),
143 for SIGTERM (a cluster's time limit, ``kill``).
"""

from __future__ import annotations

import argparse
import contextvars
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .._io import add_json_flag, print_json_error, sigterm_as_interrupt
from .._openmp import SHORT_SPIN, SPIN_VARIABLE, shorten_openmp_spin
from ..errors import EntkError, InvalidArgumentError, InvalidTypeError, RunDirectoryError
from .common import PROG, RUNTIME_ERROR, USAGE_ERROR, interrupt_status

__all__ = ["PROG", "RUNTIME_ERROR", "USAGE_ERROR", "interrupt_status", "main"]

#: Whether the command line being parsed asked for ``--json`` (argparse's own errors then
#: print the JSON error object too).
_JSON_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("json_errors", default=False)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors also print the JSON error object under
    ``--json`` (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        if _JSON_ERRORS.get():
            print_json_error(argparse.ArgumentError(None, message), message)
        super().error(message)


# The subcommands, one module each: (name, module, function that registers it). Each is
# imported while the parser is built; one that cannot be imported is replaced by a stub that
# explains why when invoked, so a missing optional part never breaks the other commands.
_EXTERNAL_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("train", "entk_fast.cli.train", "add_train_parser"),
    ("demo", "entk_fast.cli.demo", "add_parser"),
    ("reproduce", "entk_fast.cli.reproduce", "add_parser"),
    ("batch", "entk_fast.cli.batch", "add_batch_parser"),
    ("batch-summary", "entk_fast.cli.batch", "add_summary_parser"),
    ("spectrum", "entk_fast.cli.spectrum", "add_spectrum_parser"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    Before anything imports torch, the process's OpenMP threads are told to spin briefly
    (`entk_fast._openmp.shorten_openmp_spin`, unless ``GOMP_SPINCOUNT`` or
    ``OMP_WAIT_POLICY`` is set): the Rust kernels then have the cores after torch's work."""
    shortened = shorten_openmp_spin()
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    options = words[: words.index("--")] if "--" in words else words
    token = _JSON_ERRORS.set("--json" in options)
    try:
        args = parser.parse_args(words)
    finally:
        _JSON_ERRORS.reset(token)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose)
    if shortened:
        logging.getLogger("entk_fast").info(
            "%s=%s for this process (torch's idle OpenMP threads spin briefly); set "
            "GOMP_SPINCOUNT or OMP_WAIT_POLICY yourself to choose",
            SPIN_VARIABLE,
            SHORT_SPIN,
        )
    as_json = bool(getattr(args, "json", False))
    try:
        with sigterm_as_interrupt():
            return int(func(args) or 0)
    except (InvalidArgumentError, InvalidTypeError, RunDirectoryError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if as_json:
            print_json_error(e)
        return USAGE_ERROR
    except EntkError as e:  # the request was fine; the computation failed
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if as_json:
            print_json_error(e)
        return RUNTIME_ERROR
    except KeyboardInterrupt as e:
        how = (
            "terminated" if getattr(e, "signum", signal.SIGINT) != signal.SIGINT else "interrupted"
        )
        print(f"\n{PROG}: {how}", file=sys.stderr)
        if as_json:
            print_json_error(e, how)
        return interrupt_status(e)
    except Exception as e:  # a bug or an unforeseen failure: its traceback follows on stderr
        if as_json:
            print_json_error(e)
        raise


def _configure_logging(verbose: int) -> None:
    """``-v``: what is computed, the planned memory, the chosen path and times (INFO) on
    stderr, with timestamps for cluster logs; ``-vv``: DEBUG. Quiet by default."""
    if verbose <= 0:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger = logging.getLogger("entk_fast")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = _Parser(
        prog=PROG,
        description="Find the features a trained network uses from its empirical NTK.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what is computed, planned memory, chosen paths and times to stderr (-vv: more)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, module, function in _EXTERNAL_COMMANDS:
        _add_external(subparsers, name, module, function)
    return parser


def _add_external(subparsers: Any, name: str, module: str, function: str) -> None:
    try:
        add_parser = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}"
        stub = subparsers.add_parser(name, help=f"(unavailable: {reason})")
        add_json_flag(stub, "the error")
        stub.set_defaults(func=_unavailable(name, reason))
        return
    add_parser(subparsers)


def _unavailable(name: str, reason: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        message = f"the {name!r} command is unavailable ({reason})"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            print_json_error(ImportError(message))
        return 2

    return run
