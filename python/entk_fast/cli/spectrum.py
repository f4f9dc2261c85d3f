"""``entk-fast spectrum``: the analyses of one checkpoint in this process (one SLURM array
task), written as a batch job would write them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._io import add_json_flag
from ..batch.analyses import DEFAULT_K
from .common import positive_int

__all__ = ["add_spectrum_parser"]


def add_spectrum_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``entk-fast spectrum RUN --step S --out FILE``."""
    parser = subparsers.add_parser(
        "spectrum",
        help="analyse one checkpoint (one SLURM array task), as a batch job would",
        description=(
            "Compute the analyses of one checkpoint in this process and write the same files "
            "as a batch job. --out is a results folder (files under jobs/RUN/, readable by "
            "batch-summary and reused by batch) or a .json file (one analysis; its arrays "
            "go next to it as .npz). A result with unchanged inputs is not recomputed."
        ),
    )
    parser.add_argument("run", metavar="RUN", help="the run directory")
    parser.add_argument("--step", type=positive_int, required=True, help="checkpoint step")
    parser.add_argument("--out", required=True, metavar="FILE", help="results folder or .json")
    parser.add_argument(
        "--analysis", default="spectrum", metavar="LIST", help="analyses (default: spectrum)"
    )
    parser.add_argument(
        "--k", type=int, default=DEFAULT_K, help=f"eigenpairs (default {DEFAULT_K})"
    )
    parser.add_argument(
        "--name",
        help="the run's name in a results folder (default: RUN as given when it is a relative "
        "path inside this folder, e.g. seed1/modadd, as batch names it from here; else RUN's "
        "folder name). Results of another run under the same name are never overwritten",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="Rust/torch threads (default: unchanged; SLURM_CPUS_PER_TASK is a good value)",
    )
    parser.add_argument("--force", action="store_true", help="recompute a valid result")
    add_json_flag(parser, "the record(s)")
    parser.set_defaults(func=_run_spectrum)
    return parser


def _run_spectrum(args: argparse.Namespace) -> int:
    from .._io import print_json
    from ..batch.execute import run_checkpoint
    from ..errors import InvalidArgumentError

    if args.threads == 0:
        raise InvalidArgumentError("threads: expected an integer ≥ 1, got 0")
    records, computed = run_checkpoint(
        args.run,
        args.step,
        args.out,
        args.analysis,
        k=args.k,
        name=args.name,
        threads=args.threads,
        force=args.force,
    )
    if args.json:
        print_json(
            {
                "run": args.run,
                "step": args.step,
                "out": args.out,
                "computed": computed,
                "records": records,
            }
        )
    else:
        state = "computed" if computed else "up to date (inputs unchanged; --force recomputes)"
        for record in records:
            print(f"{record['job']}: {state} -> {Path(args.out)}")
    return 0
