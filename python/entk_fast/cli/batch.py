"""The batch commands of the ``entk-fast`` CLI: ``batch`` and ``batch-summary``.

Each ``add_*_parser(subparsers)`` registers one subcommand whose ``func(args)`` returns the
exit status: 0 when everything succeeded, 1 when some jobs failed (recorded in
``failures.json``); errors in the request raise `EntkError`s that
the main CLI reports. SIGTERM (a SLURM time limit) stops a batch like Ctrl-C: the tasks are
cancelled, every finished result stays in the store, and a re-run continues.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from .._io import add_json_flag, sigterm_as_interrupt
from ..batch.analyses import ANALYSES, DEFAULT_K
from .common import positive_int

if TYPE_CHECKING:
    from ..batch.summary import BatchSummary

__all__ = ["add_batch_parser", "add_summary_parser"]


def add_batch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``entk-fast batch RUNS_DIR --out RESULTS ...``."""
    parser = subparsers.add_parser(
        "batch",
        help="analyse every checkpoint of many runs on a Dask cluster (resumable)",
        description=(
            "Run analyses (spectrum, overlaps) of every checkpoint of every run under RUNS_DIR "
            "as Dask tasks: on a local cluster (--workers), an existing scheduler "
            "(--scheduler) or SLURM/PBS through dask-jobqueue (--cluster). Each result is "
            "written to RESULTS as it completes; a re-run skips results whose inputs are "
            "unchanged. Jobs that keep failing are recorded in RESULTS/failures.json."
        ),
    )
    parser.add_argument("runs_dir", metavar="RUNS_DIR", help="a run, or a folder of runs")
    parser.add_argument("--out", required=True, metavar="RESULTS", help="results folder")
    parser.add_argument(
        "--analysis",
        default=",".join(ANALYSES),
        metavar="LIST",
        help=f"comma-separated analyses among {', '.join(ANALYSES)} (default: all)",
    )
    parser.add_argument(
        "--k", type=int, default=DEFAULT_K, help=f"eigenpairs per spectrum (default {DEFAULT_K})"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    where.add_argument(
        "--cluster",
        choices=("slurm", "pbs"),
        help="submit workers as batch jobs through dask-jobqueue",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="local cluster: worker processes (default: the usable cores; 0: no Dask, "
        "run in this process); --cluster: workers to request (default 1)",
    )
    parser.add_argument(
        "--cluster-config",
        metavar="FILE",
        help="YAML/JSON keyword arguments of SLURMCluster/PBSCluster (with --cluster)",
    )
    parser.add_argument(
        "--retries", type=positive_int, default=2, help="extra attempts of a failing job"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="Rust/torch threads per task (default 1: one core per worker)",
    )
    parser.add_argument("--force", action="store_true", help="recompute valid results too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(parser)
    parser.set_defaults(func=_run_batch)
    return parser


def add_summary_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``entk-fast batch-summary RESULTS``."""
    parser = subparsers.add_parser(
        "batch-summary",
        help="summarise a results folder: table, failures, curves (PNG + CSV)",
        description=(
            "Print a table of the results in RESULTS (per run: results, final cliff-block "
            "overlaps, test accuracy, alignment onset) and the failed jobs, and write the "
            "curves (overlap vs epoch per run) as curves.csv and curves.png."
        ),
    )
    parser.add_argument("results", metavar="RESULTS", help="a folder written by entk-fast batch")
    parser.add_argument(
        "--plots", metavar="DIR", help="where curves.csv/curves.png go (default: RESULTS)"
    )
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    add_json_flag(parser)
    parser.set_defaults(func=_run_summary)
    return parser


def _sigterm_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises `SignalInterrupt` (a KeyboardInterrupt) in
    the main thread for the block: a batch stops as on Ctrl-C (tasks cancelled, report
    written, finished results kept), and the CLI exits 128 + 15 = 143 as every command does
    on SIGTERM."""
    return sigterm_as_interrupt()


def _run_batch(args: argparse.Namespace) -> int:
    from .._io import print_json, stdout_to_stderr
    from ..batch.analyses import parse_analyses
    from ..batch.cluster import dashboard_address, open_client
    from ..batch.execute import run_batch
    from ..errors import InvalidArgumentError

    analyses = parse_analyses(args.analysis)
    if args.workers == 0 and (args.scheduler or args.cluster):
        raise InvalidArgumentError(
            "workers: 0 (run in this process) excludes --scheduler and --cluster"
        )
    if args.cluster_config and not args.cluster:
        raise InvalidArgumentError("cluster-config: only used with --cluster slurm|pbs")
    if args.threads == 0:
        raise InvalidArgumentError("threads: expected an integer ≥ 1, got 0")
    progress = not args.no_progress
    options = {
        "k": args.k,
        "retries": args.retries,
        "threads": args.threads,
        "force": args.force,
        "progress": progress,
    }
    with _sigterm_as_interrupt(), stdout_to_stderr(args.json):
        if args.workers == 0:
            print("running in this process (no Dask)", file=sys.stderr)
            report = run_batch(args.runs_dir, args.out, analyses, client=None, **options)
        else:
            with open_client(
                workers=args.workers,
                scheduler=args.scheduler,
                cluster=args.cluster,
                cluster_config=args.cluster_config,
            ) as client:
                link = dashboard_address(client)
                info = client.scheduler_info()
                print(
                    f"dask scheduler {info.get('address', '?')} "
                    f"({len(info.get('workers', {}))} workers now); dashboard: "
                    + (link or "none (pip install bokeh for one)"),
                    file=sys.stderr,
                )
                report = run_batch(args.runs_dir, args.out, analyses, client=client, **options)
    if args.json:
        print_json({"results": report.out, **report.as_dict()})
    else:
        print(report.summary())
    return 1 if report.failed else 0


def _run_summary(args: argparse.Namespace) -> int:
    from .._io import print_json
    from ..batch.summary import summarize, write_curves

    summary = summarize(args.results)
    if not args.json:
        print(summary.text())
    curves = None
    if not args.no_plot:
        csv_path, png_path = write_curves(summary, args.plots or args.results)
        curves = {"csv": csv_path, "png": png_path}
        if not args.json:
            print(f"\ncurves: {csv_path} and {png_path}")
    if args.json:
        print_json({**_summary_json(summary), "curves": curves})
    return 0


def _summary_json(summary: BatchSummary) -> dict[str, Any]:
    """What ``batch-summary`` prints, as data: per run the results per analysis, the final
    overlaps of each cliff block with each family (of ``dimension``), the final test
    accuracy and the alignment onset; the failed jobs' errors; the last batch's report."""
    runs = {}
    for name, run in sorted(summary.runs.items()):
        acc = {"step": run.test_acc[-1][0], "value": run.test_acc[-1][1]} if run.test_acc else None
        final: dict[str, dict[str, float]] = {}
        for (block, family), points in sorted(run.curves.items()):
            final.setdefault(block, {})[family] = points[-1][1]
        runs[name] = {
            "kind": run.kind,
            "steps": run.steps,
            "dimension": run.dimension,
            "final_overlaps": final,
            "test_acc": acc,
            "onset": run.onset(),
        }
    failures = {
        job: str(entry.get("error", "")).splitlines()[0] if entry.get("error") else None
        for job, entry in sorted(summary.failures.items())
    }
    return {
        "results": summary.out,
        "n_results": summary.n_results,
        "runs": runs,
        "failures": failures,
        "last_batch": summary.last_batch,
    }
