"""``entk-fast reproduce``: the paper's findings from trained runs, as numbers and figures."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import add_json_flag, print_json, stdout_to_stderr
from ..errors import InvalidArgumentError
from ..paper.reproduce import SECTIONS, Plan, reproduce
from ..paper.reproduce import __doc__ as REPRODUCE_DOC
from ..paper.reproduce.lm import lm_available
from .common import positive_int

__all__ = ["add_parser"]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's findings (TMS, modular addition, grokking, transformer) into "
        "a report",
        description=REPRODUCE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=[*SECTIONS, "all"], help="which section(s)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory")
    parser.add_argument(
        "--runs", type=Path, default=None, metavar="DIR", help="run directories (default OUT/runs)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="reduced sizes: a smoke test in under a minute"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    lm = parser.add_argument_group("the lm section")
    lm.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="a local Hugging Face model directory or a hub name in the local cache (default: "
        "the packaged all-MiniLM-L6-v2)",
    )
    lm.add_argument(
        "--layer",
        default=None,
        metavar="L",
        help="the Linear / Conv1D module (default: the last-but-one block's MLP output)",
    )
    lm.add_argument(
        "--text", default=None, metavar="FILE", help="English text (default: Python's docs)"
    )
    lm.add_argument(
        "--readout",
        choices=("word", "mask"),
        default="word",
        help="encoders: read at the labelled word or at a mask token in its place",
    )
    where = lm.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="spread the eigen-solve's products over N local Dask worker processes (one "
        "thread each); with --cluster: workers to request (default 1)",
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler's workers")
    lm.add_argument(
        "--cluster",
        choices=("slurm", "pbs"),
        help="workers as batch jobs through dask-jobqueue (with --cluster-config)",
    )
    lm.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="YAML/JSON keyword arguments of SLURMCluster/PBSCluster (with --cluster)",
    )
    add_json_flag(parser)
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    sections = list(SECTIONS) if args.what == "all" else [args.what]
    if args.what == "all" and lm_available() is not None:
        print(f"skipping lm: {lm_available()}", file=sys.stderr)
        sections.remove("lm")
    plan = Plan.reduced() if args.quick else Plan.paper()
    lm_options = {
        "model": args.model,
        "layer": args.layer,
        "text": None if args.text is None else str(args.text),
        "readout": args.readout,
    }
    plan = replace(plan, lm=replace(plan.lm, **lm_options))
    with stdout_to_stderr(args.json), _solve_client(args, "lm" in sections) as client:
        report = reproduce(
            sections,
            args.out,
            runs=args.runs,
            progress=not args.no_progress,
            plan=plan,
            client=client,
        )
    failed = [
        f"{name}: {text}"
        for name, checks in report["checks"].items()
        for text, ok in checks.items()
        if not ok
    ]
    if args.json:
        print_json(
            {
                "report": args.out / "report.md",
                "report_json": args.out / "report.json",
                "seconds": report["seconds"],
                "checks": report["checks"],
                "not_reproduced": failed,
            }
        )
        return 0
    print(f"report written to {args.out / 'report.md'} ({report['seconds']['all']:.0f} s)")
    for text in failed:
        print(f"  not reproduced: {text}")
    return 0


@contextlib.contextmanager
def _solve_client(args: argparse.Namespace, lm: bool) -> Iterator[Any]:
    """The Dask client the lm section's eigen-solve runs on (None: this process), with every
    requested worker connected (a solve's shards are fixed when it starts)."""
    if args.cluster_config and not args.cluster:
        raise InvalidArgumentError("cluster-config: only used with --cluster slurm|pbs")
    if args.scheduler and args.cluster:
        raise InvalidArgumentError("scheduler: a scheduler's workers exclude --cluster")
    if args.workers is None and not args.scheduler and not args.cluster:
        yield None
        return
    if args.workers == 0:
        raise InvalidArgumentError("workers: expected an integer ≥ 1, got 0")
    if not lm:
        raise InvalidArgumentError(
            "workers/scheduler/cluster: only the lm section's eigen-solve runs on Dask"
        )
    from ..batch.cluster import open_client

    with open_client(
        workers=args.workers,
        scheduler=args.scheduler,
        cluster=args.cluster,
        cluster_config=args.cluster_config,
    ) as client:
        wanted = args.workers or 1
        if args.cluster:
            print(f"waiting for {wanted} Dask workers ...", file=sys.stderr)
            client.wait_for_workers(wanted)
        print(
            f"eigen-solve on {len(client.scheduler_info()['workers'])} Dask workers",
            file=sys.stderr,
        )
        yield client
