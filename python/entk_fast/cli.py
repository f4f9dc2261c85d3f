"""The ``entk-fast`` command line.

Convention for subcommands: a module exposes ``add_parser(subparsers)``, which registers its
subparser and calls ``set_defaults(func=...)`` with ``func(args) -> int``. :func:`main` parses,
calls ``args.func(args)``, and turns an :class:`~entk_fast.errors.EntkError` into
``entk-fast: error: <message>`` on stderr with exit status 2 (1 for a computation that
failed). With ``--json``, every error also prints one JSON object on stdout,
``{"error": <message>, "type": <exception class>}``, and keeps its exit status. A signal
that stops a command exits 128 + its number, for every command: 130 for Ctrl-C (SIGINT),
143 for SIGTERM (a cluster's time limit, ``kill``).
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._io import add_json_flag, print_json_error, sigterm_as_interrupt
from .errors import EntkError, InvalidArgumentError, InvalidTypeError, RunDirectoryError

__all__ = ["main"]

PROG = "entk-fast"
#: Exit statuses: 2 for a request that cannot be carried out as given (a bad option value, a
#: run directory that holds something else; argparse uses it too), 1 for a computation that
#: failed (memory budget, solver, a corrupt checkpoint), 128 + N for signal N (130: Ctrl-C,
#: 143: SIGTERM).
USAGE_ERROR = 2
RUNTIME_ERROR = 1

#: Whether the command line being parsed asked for ``--json`` (argparse's own errors then
#: print the JSON error object too).
_JSON_ERRORS: contextvars.ContextVar[bool] = contextvars.ContextVar("json_errors", default=False)


def interrupt_status(stop: BaseException) -> int:
    """The exit status of a command stopped by a signal: 128 + its number (``signum`` of a
    :class:`~entk_fast.errors.SignalInterrupt`; SIGINT for a plain Ctrl-C)."""
    return 128 + int(getattr(stop, "signum", signal.SIGINT))


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors also print the JSON error object under
    ``--json`` (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        if _JSON_ERRORS.get():
            print_json_error(argparse.ArgumentError(None, message), message)
        super().error(message)


# Subcommands defined in other modules: (name, module, function that registers it). Each is
# imported while the parser is built; one that cannot be imported is replaced by a stub that
# explains why when invoked, so a missing optional part never breaks the other commands.
_EXTERNAL_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "entk_fast.experiments.demo", "add_parser"),
    ("reproduce", "entk_fast.experiments.reproduce", "add_parser"),
    ("batch", "entk_fast.batch.cli", "add_batch_parser"),
    ("batch-summary", "entk_fast.batch.cli", "add_summary_parser"),
    ("spectrum", "entk_fast.batch.cli", "add_spectrum_parser"),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
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
    from ._version import __version__

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
    add_train_parser(subparsers)
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


# --- train ------------------------------------------------------------------------------------


def add_train_parser(subparsers: Any) -> None:
    """Register ``train KIND`` for every task in the registry."""
    from .experiments.registry import TASKS

    train = subparsers.add_parser(
        "train",
        help="train one of the paper's toy models into a run directory",
        description="Train one of the paper's toy models, writing config.json, history.json, "
        "checkpoints/ and training_curve.png into the run directory.",
    )
    train.set_defaults(func=lambda args: _missing_subcommand(train))
    models = train.add_subparsers(title="models", metavar="MODEL")
    for spec in TASKS.values():
        parser = models.add_parser(spec.kind, help=spec.help, description=spec.description)
        defaults = spec.config_cls()
        for option in spec.options:
            _opt(parser, option.flag, option.field, option.type, defaults, option.help)
        _common_options(parser, defaults, unit=spec.step_unit)
        parser.set_defaults(func=_run_train, task=spec)


def _opt(
    parser: argparse.ArgumentParser, flag: str, field: str, type_: type, defaults: Any, text: str
) -> None:
    # default=None marks "not given", so --resume can tell given options from defaults
    parser.add_argument(
        flag,
        dest=f"cfg_{field}",
        type=type_,
        default=None,
        metavar=field.upper(),
        help=f"{text} (default: {getattr(defaults, field)})",
    )


def _common_options(parser: argparse.ArgumentParser, defaults: Any, *, unit: str) -> None:
    _opt(parser, "--seed", "seed", int, defaults, "seed of the model initialisation")
    _opt(
        parser, "--data-seed", "data_seed", int, defaults, "seed of the data set / train-test split"
    )
    _opt(
        parser, "--log-every", "log_every", int, defaults, f"record metrics every this many {unit}"
    )
    _opt(
        parser,
        "--checkpoint-every",
        "checkpoint_every",
        int,
        defaults,
        f"save a checkpoint every this many {unit} (the first and last are always saved)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="run directory to create (must not exist or be empty, unless --resume)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint; the result is bit-identical "
        "to an uninterrupted run",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    parser.add_argument("--no-plot", action="store_true", help="do not write training_curve.png")
    add_json_flag(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads while training (default: 1, fastest for these small models; "
        "results are reproducible for a fixed thread count)",
    )


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _resume_config(out: Path, spec: Any, given: dict[str, Any]) -> Any:
    """The saved config of the run in ``out``; options given on the command line must match."""
    from .errors import InvalidArgumentError, RunDirectoryError
    from .experiments import runs
    from .experiments.registry import config_from_dict

    kind, saved = runs.read_config_file(out)
    if kind != spec.kind:
        raise RunDirectoryError(f"{out} holds a {kind!r} run, not a {spec.kind!r} run")
    config = config_from_dict(kind, saved)
    requested = dataclasses.replace(config, **given)
    flags = {option.field: option.flag for option in spec.options}
    mismatched = [
        f"{flags.get(k, '--' + k.replace('_', '-'))} {given[k]} (the saved run has "
        f"{getattr(config, k)})"
        for k in given
        if getattr(requested, k) != getattr(config, k)
    ]
    if mismatched:
        raise InvalidArgumentError(
            f"cannot resume {out} with different options: {', '.join(mismatched)}"
        )
    return config


def _run_train(args: argparse.Namespace) -> int:
    from ._io import print_json, stdout_to_stderr
    from .experiments import runs
    from .experiments.train import train

    spec = args.task
    cls = spec.config_cls
    given = {
        f.name: getattr(args, f"cfg_{f.name}")
        for f in dataclasses.fields(cls)
        if getattr(args, f"cfg_{f.name}", None) is not None
    }
    if args.resume and (args.out / runs.CONFIG_FILE).exists():
        config = _resume_config(args.out, spec, given)
    else:
        config = cls(**given)
    try:
        with stdout_to_stderr(args.json):
            result = train(
                config,
                args.out,
                resume=args.resume,
                progress=False if args.no_progress else None,
                plot=not args.no_plot,
                threads=args.threads,
            )
    except KeyboardInterrupt as stop:
        steps = runs.checkpoint_steps(args.out)
        last = f"last checkpoint: step {steps[-1]}" if steps else "no checkpoint yet"
        status = interrupt_status(stop)
        how = "terminated (SIGTERM)" if status == 128 + signal.SIGTERM else "interrupted"
        print(
            f"\n{PROG}: {how} ({last}); continue with: {PROG} train {spec.kind} "
            f"--out {args.out} --resume",
            file=sys.stderr,
        )
        if args.json:
            print_json_error(stop, f"{how} ({last})")
        return status
    if args.json:
        final = {k: v[-1] for k, v in result.history.items()}
        print_json({"run_directory": result.out, "kind": spec.kind, "final": final})
        return 0
    print(f"run directory: {result.out}")
    for line in spec.summary(config, result.history):
        print(line)
    return 0
