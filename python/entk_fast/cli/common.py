"""What every ``entk-fast`` command shares: the program name, the exit statuses and argument
types."""

from __future__ import annotations

import argparse
import signal
import sys

__all__ = [
    "PROG",
    "RUNTIME_ERROR",
    "USAGE_ERROR",
    "interrupt_status",
    "missing_subcommand",
    "positive_int",
]

PROG = "entk-fast"
#: Exit statuses: 2 for a request that cannot be carried out as given (a bad option value, a
#: run directory that holds something else; argparse uses it too), 1 for a computation that
#: failed (memory budget, solver, a corrupt checkpoint), 128 + N for signal N (130: Ctrl-C,
#: 143: SIGTERM).
USAGE_ERROR = 2
RUNTIME_ERROR = 1


def interrupt_status(stop: BaseException) -> int:
    """The exit status of a command stopped by a signal: 128 + its number (``signum`` of a
    `SignalInterrupt`; SIGINT for a plain Ctrl-C)."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


def missing_subcommand(parser: argparse.ArgumentParser) -> int:
    """A command group called without its subcommand: print its help, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {value}")
    return value
