"""``entk-fast reproduce``: the paper's findings from trained runs, as numbers and figures."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .._io import add_json_flag, print_json, stdout_to_stderr
from ..paper.reproduce import SECTIONS, Plan, reproduce
from ..paper.reproduce import __doc__ as REPRODUCE_DOC
from ..paper.reproduce.lm import lm_available

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
    with stdout_to_stderr(args.json):
        report = reproduce(
            sections, args.out, runs=args.runs, progress=not args.no_progress, plan=plan
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
