"""``entk-fast spectrum``: the analyses of one checkpoint in this process (one SLURM array
task), written as a batch job would write them; ``--dry-run`` prints what its spectrum would
cost (`entk_fast.entk_plan`) instead."""

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
    parser.add_argument(
        "--out", metavar="FILE", help="results folder or .json (required unless --dry-run)"
    )
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
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="compute nothing: print the spectrum's method, its estimated time and memory per "
        "method and which layers take which path (entk_fast.entk_plan: the probe and a "
        "calibration of seconds)",
    )
    add_json_flag(parser, "the record(s) (with --dry-run: the plan)")
    parser.set_defaults(func=_run_spectrum)
    return parser


def _run_spectrum(args: argparse.Namespace) -> int:
    from .._io import print_json
    from ..batch.execute import run_checkpoint
    from ..errors import InvalidArgumentError

    if args.threads == 0:
        raise InvalidArgumentError("threads: expected an integer ≥ 1, got 0")
    if args.dry_run:
        return _dry_run(args)
    if args.out is None:
        raise InvalidArgumentError("--out is required (a results folder or a .json file)")
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


def _dry_run(args: argparse.Namespace) -> int:
    """The plan of the checkpoint's spectrum job (the eigenpairs its analyses need, as
    `entk_fast.batch.execute.analyse_checkpoint` asks for them), printed, nothing computed."""
    import dataclasses

    from .._io import print_json
    from ..batch.analyses import analysis_params, kernel_order, parse_analyses
    from ..batch.execute import pinned_threads
    from ..errors import InvalidArgumentError
    from ..ntk.estimate import entk_plan
    from ..paper.runs import load_run

    analyses = parse_analyses(args.analysis)
    with pinned_threads(args.threads):
        run = load_run(args.run)
        model = run.load_checkpoint(args.step)
        data = run.dataset()
        x = getattr(data, "inputs", data)
        wanted, base = [], None
        for analysis in analyses:
            params = analysis_params(analysis, run.kind, run.config, args.k)
            if params is None:
                continue
            base = base or params
            blocks = params.get("blocks")
            wanted.append(int(blocks[-1][-1]) if blocks else int(params["k"]))
        if base is None:
            raise InvalidArgumentError(
                f"analysis: none of {', '.join(analyses)} applies to this {run.kind} run"
            )
        k = min(max(wanted), kernel_order(model, x, base["reduction"]))
        plan = entk_plan(model, x, k, reduction=base["reduction"], dtype=base["dtype"])
    if args.json:
        print_json({"run": args.run, "step": args.step, **dataclasses.asdict(plan)})
    else:
        print(plan)
    return 0
