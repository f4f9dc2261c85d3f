"""``entk-fast reproduce``: the paper's findings from trained runs, as numbers and figures.

Sections (J. Lin, *Feature Identification via the Empirical NTK*, arXiv 2510.00468):

* ``tms``: Toy Models of Superposition at (m, S) = (10, 0.3), (10, 0.9), (40, 0.9); the
  flattened eNTK on the 500 training points with output metric I^β, β ∈ {0, 0.3, 1}: the cliff
  after n = 50 eigenvalues, the second cliff at the number of reconstructed features, and the
  eigenvector × feature heatmaps.
* ``modadd``: the modular-addition MLP (p = 29) at the end of training: the traced eNTK's
  cliffs after 1, 57 and 113 eigenvalues, the overlaps of the two cliff blocks with the
  Fourier families of a, b, a+b, a−b, the two-stage graph-smoothness rotation that separates
  the families inside each block, and the layerwise kernels of W₁ and W₂.
* ``grokking``: at every checkpoint, the overlap of eigenvectors 58–113 with the a+b family,
  its derivative and the epoch where it rises fastest, beside the accuracy curves.
* ``transformer``: the 1-layer modular-addition transformer (p = 29): its key frequencies and
  the overlap of each layer kernel's top eigenvectors with the Fourier modes at those
  frequencies, at the end and over training (`.transformer`).
* ``lm``: a pretrained language model (the packaged all-MiniLM-L6-v2 by default, or
  ``--model``): one layer's eNTK top eigenvectors against PCA of its block's activations as
  part-of-speech detectors (`.lm`; needs the ``lm`` extra, and ``all`` runs it
  only when that is installed).

Everything lands in ``--out``: ``report.json`` (every number, named), one PNG per figure, and
``report.md`` (the figures and our numbers next to the paper's). Runs are trained into
``--runs`` (default ``OUT/runs``) and reused when finished (resumed when interrupted); spectra
and per-checkpoint results are cached under ``OUT/cache``, so an interrupted reproduce rerun
with the same ``--out`` continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._io import atomic_write_json, atomic_write_text
from ..._version import __version__
from ...errors import InvalidArgumentError
from ..training import torch_threads
from .base import Log, Section
from .grokking import run_grokking
from .modadd import run_modadd
from .plan import SECTIONS, Plan
from .report import markdown, plain
from .tms import run_tms

__all__ = ["SECTIONS", "Plan", "reproduce"]


def run_transformer(plan: Plan, runs: Path, cache: Path, log: Log) -> Section:
    """The modular-addition transformer (`.transformer`)."""
    from .transformer import run_transformer as run

    return run(plan.transformer, runs, cache, log)


def run_lm(plan: Plan, runs: Path, cache: Path, log: Log, client: Any = None) -> Section:
    """The pretrained language model (`.lm`); its eigen-solve on ``client``'s workers when
    one is given."""
    from .lm import run_lm as run

    return run(plan.lm, cache, log, client=client)


_RUNNERS: dict[str, Callable[..., Section]] = {
    "tms": run_tms,
    "modadd": run_modadd,
    "grokking": run_grokking,
    "transformer": run_transformer,
    "lm": run_lm,
}
#: Sections that use every core (a large model); the others run torch on one thread.
_ALL_THREADS = ("lm",)


# --- the report -----------------------------------------------------------------------------------


def reproduce(
    sections: list[str],
    out: str | Path,
    *,
    runs: str | Path | None = None,
    quick: bool = False,
    progress: bool = True,
    plan: Plan | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Run ``sections`` (of `SECTIONS`) and write report.json, report.md and the PNGs.

    ``quick``: reduced sizes (`Plan.reduced`); ``plan`` overrides both (other seeds or
    sizes); ``client``: a dask.distributed Client whose workers run the lm section's
    eigen-solve (`entk_fast.entk_topk` with ``client=``). Returns the report (what
    ``report.json`` holds).
    """
    from ..figures import MATPLOTLIB_MISSING, matplotlib_available, save_figure

    if not matplotlib_available():
        raise InvalidArgumentError(
            f"reproduce writes figures and needs matplotlib: {MATPLOTLIB_MISSING}"
        )
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise InvalidArgumentError(
            f"sections: expected some of {', '.join(SECTIONS)} (or 'all'), got {sections}"
        )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgumentError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs" if runs is None else Path(runs)
    cache = out_dir / "cache"
    log = Log(progress)
    plan = plan or (Plan.reduced() if quick else Plan.paper())
    report: dict[str, Any] = {
        "entk_fast": __version__,
        "quick": plan.quick,
        "paper": "J. Lin, Feature Identification via the Empirical NTK, arXiv 2510.00468",
        "sections": {},
        "figures": {},
        "checks": {},
        "seconds": {},
    }
    total = time.perf_counter()
    for name in sections:
        log(f"[{name}]")
        start = time.perf_counter()
        # One torch thread: the models are small, and torch's spinning intra-op threads slow
        # everything down many-fold when the machine is shared (Rust keeps its own pool).
        if name == "lm":
            section = _RUNNERS[name](plan, runs_dir, cache, log, client=client)
        elif name in _ALL_THREADS:
            section = _RUNNERS[name](plan, runs_dir, cache, log)
        else:
            with torch_threads(1):
                section = _RUNNERS[name](plan, runs_dir, cache, log)
        report["sections"][name] = plain(section.numbers)
        report["checks"][name] = section.checks
        report["seconds"][name] = {"total": time.perf_counter() - start, **section.seconds}
        for figure, fig in section.figures.items():
            save_figure(fig, out_dir / f"{figure}.png")
            report["figures"][figure] = f"{figure}.png"
        log(f"  {name} done in {report['seconds'][name]['total']:.1f} s")
    report["seconds"]["all"] = time.perf_counter() - total
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", markdown(report))
    return report
