"""What a results store holds: a table per run, the failures, and the alignment curves
(cliff-block overlap vs epoch, per run) as CSV and PNG."""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open, atomic_write_text
from ..errors import InvalidArgumentError
from .store import ResultStore

__all__ = ["BatchSummary", "CURVE_COLUMNS", "summarize", "write_curves"]

CURVE_COLUMNS = (
    "run",
    "step",
    "block",
    "family",
    "overlap",
    "overlap_percent",
    "train_acc",
    "test_acc",
)


@dataclass
class RunSummary:
    """The results of one run."""

    name: str
    kind: str
    steps: dict[str, list[int]] = field(default_factory=dict)
    """Analysis -> steps with a result, ascending."""
    curves: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    """(block, family) -> [(step, overlap)], ascending steps."""
    dimension: int | None = None
    test_acc: list[tuple[int, float]] = field(default_factory=list)

    def final(self, block: str, family: str) -> float | None:
        points = self.curves.get((block, family))
        return points[-1][1] if points else None

    def onset(self) -> int | None:
        """The step where the overlap of the second cliff block with a+b rises fastest."""
        from ..analysis import alignment_curve

        blocks = sorted({b for b, _ in self.curves}, key=_block_start)
        if len(blocks) < 2 or self.dimension is None:
            return None
        points = self.curves.get((blocks[1], "a+b"), [])
        if len(points) < 2:
            return None
        steps, values = zip(*points, strict=True)
        return alignment_curve(list(steps), list(values), self.dimension).onset


@dataclass
class BatchSummary:
    out: Path
    runs: dict[str, RunSummary]
    failures: dict[str, dict[str, Any]]
    last_batch: dict[str, Any] | None
    rows: list[dict[str, Any]]
    """The curve rows (CURVE_COLUMNS), sorted by run, block, family, step."""

    @property
    def n_results(self) -> int:
        return sum(len(steps) for run in self.runs.values() for steps in run.steps.values())

    def table(self) -> str:
        """The runs, one line each: results per analysis, final overlaps (% of p − 1),
        final test accuracy and the alignment onset."""
        header = (
            f"{'run':<24} {'kind':<7} {'spectra':>7} {'overlaps':>8}  "
            f"{'blk1 a / b (%)':>15}  {'blk2 a+b / a-b (%)':>18}  {'test acc':>8}  {'onset':>5}"
        )
        lines = [header, "-" * len(header)]
        for name, run in sorted(self.runs.items()):
            blocks = sorted({b for b, _ in run.curves}, key=_block_start)

            def pct(
                block_index: int, family: str, run: RunSummary = run, blocks: list[str] = blocks
            ) -> str:
                if len(blocks) <= block_index or not run.dimension:
                    return "-"
                value = run.final(blocks[block_index], family)
                return "-" if value is None else f"{100 * value / run.dimension:.1f}"

            first = f"{pct(0, 'a')} / {pct(0, 'b')}"
            second = f"{pct(1, 'a+b')} / {pct(1, 'a-b')}"
            acc = f"{100 * run.test_acc[-1][1]:.1f}%" if run.test_acc else "-"
            onset = run.onset()
            lines.append(
                f"{name:<24} {run.kind:<7} {len(run.steps.get('spectrum', [])):>7} "
                f"{len(run.steps.get('overlaps', [])):>8}  {first:>15}  {second:>18}  "
                f"{acc:>8}  {'-' if onset is None else onset:>5}"
            )
        if not self.runs:
            lines.append("(no results)")
        return "\n".join(lines)

    def text(self) -> str:
        lines = [f"results in {self.out}: {self.n_results} results from {len(self.runs)} runs"]
        if self.last_batch is not None:
            counts = self.last_batch.get("counts")
            counts = counts if isinstance(counts, dict) else {}
            lines.append(
                "last batch: "
                f"{counts.get('succeeded', 0)} succeeded, {counts.get('skipped', 0)} skipped, "
                f"{counts.get('failed', 0)} failed"
                + (" (interrupted)" if self.last_batch.get("interrupted") else "")
            )
        lines += ["", self.table()]
        if self.failures:
            lines += ["", f"{len(self.failures)} failed jobs (tracebacks in failures.json):"]
            for name, entry in sorted(self.failures.items()):
                error = str(entry.get("error", "")).splitlines()
                lines.append(f"  {name}: {error[0] if error else '?'}")
        return "\n".join(lines)


def _block_start(block: str) -> int:
    try:
        return int(block.split("-")[0])
    except ValueError:
        return 0


def summarize(out: str | os.PathLike[str]) -> BatchSummary:
    """Read every record, the failures and the last batch report of the store ``out``."""
    root = Path(out)
    if not root.is_dir():
        raise InvalidArgumentError(f"results: {root} is not a results directory")
    store = ResultStore(root)
    runs: dict[str, RunSummary] = {}
    accs: dict[str, dict[int, float]] = defaultdict(dict)
    steps: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    points: dict[str, dict[tuple[str, str], dict[int, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    rows: list[dict[str, Any]] = []
    run_paths: dict[str, str] = {}
    damaged: list[str] = []
    for path, record in store.iter_record_files():
        try:
            parsed = _parse_record(record)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            damaged.append(f"{path.relative_to(root)} ({type(e).__name__}: {e})")
            continue
        name, step, analysis, kind, metrics, run_path, result = parsed
        run = runs.setdefault(name, RunSummary(name, kind))
        steps[name][analysis].add(step)
        run_paths.setdefault(name, run_path)
        if "test_acc" in metrics:
            accs[name][step] = metrics["test_acc"]
        if result is None:
            continue
        dimension, blocks = result
        run.dimension = dimension
        for block, families in blocks.items():
            for family, value in families.items():
                points[name][(block, family)][step] = value
                rows.append(
                    {
                        "run": name,
                        "step": step,
                        "block": block,
                        "family": family,
                        "overlap": value,
                        "overlap_percent": 100.0 * value / (run.dimension or 1),
                        "train_acc": metrics.get("train_acc", ""),
                        "test_acc": metrics.get("test_acc", ""),
                    }
                )
    if damaged:
        warnings.warn(
            f"results: {len(damaged)} damaged records left out of the summary (entk-fast "
            f"batch recomputes them): {'; '.join(damaged[:5])}",
            RuntimeWarning,
            stacklevel=2,
        )
    for name, run in runs.items():
        run.steps = {a: sorted(s) for a, s in sorted(steps[name].items())}
        run.curves = {key: sorted(v.items()) for key, v in points[name].items()}
        run.test_acc = _full_accuracy(run_paths.get(name)) or sorted(accs[name].items())
    rows.sort(key=lambda r: (r["run"], _block_start(r["block"]), r["family"], r["step"]))
    return BatchSummary(root, runs, store.read_failures(), store.read_report(), rows)


def _parse_record(record: dict[str, Any]) -> tuple[Any, ...]:
    """The fields the summary reads from one record, checked: ``(run, step, analysis, kind,
    metrics, run_path, overlaps)`` with ``overlaps = (dimension, {block: {family: value}})``
    for an overlaps record, else None. Raises (TypeError, ValueError, ...) on a damaged one."""
    name = record["run"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"run {name!r}")
    step = record["step"]
    if not isinstance(step, int) or isinstance(step, bool):
        raise TypeError(f"step {step!r}")
    analysis = str(record["analysis"])
    inputs = record.get("inputs")
    kind = str(inputs.get("kind", "?")) if isinstance(inputs, dict) else "?"
    raw = record.get("metrics") or {}
    metrics = {str(k): float(v) for k, v in raw.items() if k in ("train_acc", "test_acc")}
    provenance = record.get("provenance")
    run_path = str(provenance.get("run_path", "")) if isinstance(provenance, dict) else ""
    if analysis != "overlaps":
        return name, step, analysis, kind, metrics, run_path, None
    result = record["result"]
    dimension = int(result.get("dimension", 0)) or None
    blocks = {
        str(block): {str(family): float(value) for family, value in families.items()}
        for block, families in result.get("blocks", {}).items()
    }
    return name, step, analysis, kind, metrics, run_path, (dimension, blocks)


def _full_accuracy(path: str | None) -> list[tuple[int, float]]:
    """The run's whole test-accuracy curve when its folder is still readable here (the
    records hold it at the checkpoints only)."""
    from ..errors import EntkError
    from ..paper.runs import load_run

    if not path:
        return []
    try:
        history = load_run(path).history
        steps, acc = history["step"], history["test_acc"]
        return [(int(s), float(a)) for s, a in zip(steps, acc, strict=True)]
    except (EntkError, KeyError, TypeError, ValueError):
        return []


def write_curves(summary: BatchSummary, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``curves.csv`` (one row per run, step, block and family) and ``curves.png``
    (per run: the first cliff block's overlap with a, the second's with a+b, and the test
    accuracy, against the epoch) into ``directory``, atomically. Returns both paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CURVE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    csv_path = folder / "curves.csv"
    atomic_write_text(csv_path, buffer.getvalue())
    png_path = folder / "curves.png"
    figure = _figure(summary)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_open(png_path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    return csv_path, png_path


def _figure(summary: BatchSummary) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    titles = (
        "eigenvectors 2 … 2p−1 vs family a",
        "eigenvectors 2p … 4p−3 vs family a+b",
        "test accuracy",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("overlap (% of p − 1)")
    axes[2].set_ylabel("test accuracy (%)")
    drawn = False
    for name, run in sorted(summary.runs.items()):
        blocks = sorted({b for b, _ in run.curves}, key=_block_start)
        for ax, index, family in ((axes[0], 0, "a"), (axes[1], 1, "a+b")):
            if len(blocks) > index and run.dimension:
                pts = run.curves.get((blocks[index], family), [])
                if pts:
                    x, y = np.array(pts).T
                    ax.plot(x, 100 * y / run.dimension, marker=".", label=name)
                    drawn = True
        if run.test_acc:
            x, y = np.array(run.test_acc).T
            axes[2].plot(x, 100 * y, label=name)
    if drawn:
        axes[1].legend(fontsize=8)
    else:
        for ax in axes[:2]:
            ax.text(
                0.5, 0.5, "no overlaps results", ha="center", va="center", transform=ax.transAxes
            )
    return figure
