"""``entk-fast train KIND``: train one of the paper's toy models into a run directory
(resumable: ``--resume`` continues bit-identically from the last checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any

from .._io import add_json_flag, print_json_error
from .common import PROG, interrupt_status, missing_subcommand

__all__ = ["add_train_parser"]


def add_train_parser(subparsers: Any) -> None:
    """Register ``train KIND`` for every task in the registry."""
    from ..paper.tasks.registry import TASKS

    train = subparsers.add_parser(
        "train",
        help="train one of the paper's toy models into a run directory",
        description="Train one of the paper's toy models, writing config.json, history.json, "
        "checkpoints/ and training_curve.png into the run directory.",
    )
    train.set_defaults(func=lambda args: missing_subcommand(train))
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


def _resume_config(out: Path, spec: Any, given: dict[str, Any]) -> Any:
    """The saved config of the run in ``out``; options given on the command line must match."""
    from ..errors import InvalidArgumentError, RunDirectoryError
    from ..paper import runs
    from ..paper.tasks.registry import config_from_dict

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
    from .._io import print_json, stdout_to_stderr
    from ..paper import runs
    from ..paper.training import train

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
