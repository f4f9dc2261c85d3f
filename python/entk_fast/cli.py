"""The ``entk-fast`` command line.

Convention for subcommands: a module exposes ``add_parser(subparsers)``, which registers its
subparser and calls ``set_defaults(func=...)`` with ``func(args) -> int``. :func:`main` parses,
calls ``args.func(args)``, and turns an :class:`~entk_fast.errors.EntkError` into
``entk-fast: error: <message>`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import EntkError

__all__ = ["main"]

PROG = "entk-fast"

# Subcommands defined in other modules: (name, module). Each is imported while the parser is
# built; one that cannot be imported is replaced by a stub that explains why when invoked, so
# a missing optional part never breaks the other commands.
_EXTERNAL_COMMANDS: tuple[tuple[str, str], ...] = (("demo", "entk_fast.demo"),)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except EntkError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find the features a trained network uses from its empirical NTK.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_train_parser(subparsers)
    for name, module in _EXTERNAL_COMMANDS:
        _add_external(subparsers, name, module)
    return parser


def _add_external(subparsers: Any, name: str, module: str) -> None:
    try:
        add_parser = importlib.import_module(module).add_parser
    except (ImportError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}"
        stub = subparsers.add_parser(name, help=f"(unavailable: {reason})")
        stub.set_defaults(func=_unavailable(name, reason))
        return
    add_parser(subparsers)


def _unavailable(name: str, reason: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"{PROG}: error: the {name!r} command is unavailable ({reason})", file=sys.stderr)
        return 2

    return run


# --- train ------------------------------------------------------------------------------------


def add_train_parser(subparsers: Any) -> None:
    """Register ``train tms`` and ``train modadd``."""
    train = subparsers.add_parser(
        "train",
        help="train a toy model (TMS or the modular-addition MLP) into a run directory",
        description="Train one of the paper's toy models, writing config.json, history.json, "
        "checkpoints/ and training_curve.png into the run directory.",
    )
    train.set_defaults(func=lambda args: _missing_subcommand(train))
    models = train.add_subparsers(title="models", metavar="MODEL")
    from .train import ModAddConfig, TMSConfig

    tms = models.add_parser(
        "tms",
        help="Toy Model of Superposition, y = ReLU(WᵀWx + b) (SPEC §2)",
        description="Train TMS on a fixed data set: importance-weighted MSE, Adam, full batch. "
        "Options left out take the defaults shown (the paper's values). With --resume, "
        "options left out are taken from the saved run and any given must match it.",
    )
    t = TMSConfig()
    _opt(tms, "--features", "n_features", int, t, "number of features n")
    _opt(tms, "--hidden", "n_hidden", int, t, "hidden width m")
    _opt(tms, "--sparsity", "sparsity", float, t, "probability S in [0, 1) that a feature is 0")
    _opt(tms, "--points", "n_points", int, t, "size D of the fixed training set")
    _opt(
        tms,
        "--importance-decay",
        "importance_decay",
        float,
        t,
        "importance of feature i is this**i",
    )
    _opt(tms, "--lr", "lr", float, t, "Adam learning rate")
    _opt(tms, "--steps", "steps", int, t, "number of full-batch steps")
    _common_options(tms, t, unit="steps")
    tms.set_defaults(func=_run_train, config_cls=TMSConfig)

    mod = models.add_parser(
        "modadd",
        help="modular-addition MLP f(x) = (1/H) W₂ (W₁x/√(2p))², grokking (SPEC §3)",
        description="Train the modular-addition MLP on all p² pairs (a, b) -> (a + b) mod p: "
        "MSE on one-hot labels, AdamW, full batch (one step per epoch). Options left out take "
        "the defaults shown (the paper's values). With --resume, options left out are taken "
        "from the saved run and any given must match it.",
    )
    m = ModAddConfig()
    _opt(mod, "--p", "p", int, m, "modulus p (>= 2)")
    _opt(mod, "--hidden", "hidden", int, m, "hidden width H")
    _opt(
        mod,
        "--train-fraction",
        "train_fraction",
        float,
        m,
        "fraction of the p² pairs used for training",
    )
    _opt(mod, "--lr", "lr", float, m, "AdamW learning rate")
    _opt(mod, "--weight-decay", "weight_decay", float, m, "AdamW weight decay")
    _opt(mod, "--epochs", "epochs", int, m, "number of full-batch epochs")
    _common_options(mod, m, unit="epochs")
    mod.set_defaults(func=_run_train, config_cls=ModAddConfig)


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


def _resume_config(out: Path, cls: Any, given: dict[str, Any]) -> Any:
    """The saved config of the run in ``out``; options given on the command line must match."""
    from . import runs
    from .errors import InvalidArgumentError, RunDirectoryError
    from .train import config_from_dict

    kind, saved = runs.read_config_file(out)
    if kind != cls.kind:
        raise RunDirectoryError(f"{out} holds a {kind!r} run, not a {cls.kind!r} run")
    config = config_from_dict(kind, saved)
    requested = dataclasses.replace(config, **given)
    mismatched = [
        f"{_flag(k)} {given[k]} (the saved run has {getattr(config, k)})"
        for k in given
        if getattr(requested, k) != getattr(config, k)
    ]
    if mismatched:
        raise InvalidArgumentError(
            f"cannot resume {out} with different options: {', '.join(mismatched)}"
        )
    return config


def _flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


_FLAGS = {"n_features": "--features", "n_hidden": "--hidden", "n_points": "--points"}


def _run_train(args: argparse.Namespace) -> int:
    from . import runs
    from .train import first_step_above, train_modadd, train_tms

    cls = args.config_cls
    given = {
        f.name: getattr(args, f"cfg_{f.name}")
        for f in dataclasses.fields(cls)
        if getattr(args, f"cfg_{f.name}", None) is not None
    }
    if args.resume and (args.out / runs.CONFIG_FILE).exists():
        config = _resume_config(args.out, cls, given)
    else:
        config = cls(**given)
    train = train_tms if cls.kind == "tms" else train_modadd
    try:
        result = train(
            config,
            args.out,
            resume=args.resume,
            progress=not args.no_progress,
            plot=not args.no_plot,
            threads=args.threads,
        )
    except KeyboardInterrupt:
        steps = runs.checkpoint_steps(args.out)
        last = f"last checkpoint: step {steps[-1]}" if steps else "no checkpoint yet"
        print(
            f"\n{PROG}: interrupted ({last}); continue with: {PROG} train {cls.kind} "
            f"--out {args.out} --resume",
            file=sys.stderr,
        )
        return 130
    h = result.history
    print(f"run directory: {result.out}")
    if cls.kind == "tms":
        print(
            f"final loss {h['loss'][-1]:.4g}; reconstructed features "
            f"((WᵀW)_ii >= 0.75): {int(h['n_reconstructed'][-1])} of {config.n_features}"
        )
    else:
        print(
            f"final train acc {100 * h['train_acc'][-1]:.1f}%, "
            f"test acc {100 * h['test_acc'][-1]:.1f}%"
        )
        epoch = first_step_above(h, "test_acc", 0.5)
        print("test accuracy first above 50% at epoch " + ("-" if epoch is None else str(epoch)))
    return 0
