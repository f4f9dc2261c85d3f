"""The demo: the paper's headline result end to end, in well under a minute (``entk-fast demo``).

Trains the modular-addition MLP (p = 29) until it groks, computes its traced eNTK on all p²
inputs (and the per-layer kernels), and shows that the spectrum has cliffs after eigenvalues
1, 57 and 113 whose eigenvectors span the Fourier families of a and b, then of a+b and a−b.
``--synthetic`` runs a torch-free check of the linear-algebra core on a planted Jacobian.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._io import add_json_flag
from .._validate import check_seed
from ..paper.demo import run_modadd_demo, run_synthetic_demo

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the grokking MLP and find its Fourier features in the eNTK spectrum",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--p", type=int, default=29, help="modulus, an odd prime (default 29)")
    parser.add_argument("--epochs", type=int, default=500, help="training epochs (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the summary as JSON to this file"
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="torch-free: planted low-rank Jacobian, its Gram, spectrum and principal angles",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_flag(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .._io import atomic_write_json, print_json, stdout_to_stderr

    check_seed("--seed", args.seed)
    if args.out is not None:
        _check_writable(args.out)
    with stdout_to_stderr(args.json):
        if args.synthetic:
            summary = run_synthetic_demo(seed=args.seed)
        else:
            summary = run_modadd_demo(
                p=args.p,
                epochs=args.epochs,
                seed=args.seed,
                progress=False if args.no_progress else None,
            )
        if args.out is not None:
            atomic_write_json(args.out, summary)
            print(f"summary written to {args.out}")
    if args.json:
        print_json({"demo": "synthetic" if args.synthetic else "modadd", **summary})
    return 0


def _check_writable(path: Path) -> None:
    """Refuse an output file that cannot be written, before any work."""
    import os

    from ..errors import InvalidArgumentError

    if path.is_dir():
        raise InvalidArgumentError(
            f"--out {path} is a directory; give a file name, e.g. {path}/demo.json"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgumentError(f"--out {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidArgumentError(f"--out {path}: the directory {parent} is not writable")
