"""The grokking section: the overlap of the second cliff block with the a+b family at every
checkpoint, beside the accuracy curves (arXiv 2510.00468)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ... import linalg
from ..._io import atomic_write_json
from ...analysis import (
    alignment_curve,
    fourier_family,
)
from ..tasks.modadd import first_step_above
from .base import Log, Section, trained_run
from .modadd import modadd_blocks
from .plan import Plan, modadd_run_name

__all__ = ["run_grokking"]


def run_grokking(plan: Plan, runs: Path, cache: Path, log: Log) -> Section:
    """The overlap of eigenvectors 2p − 1 .. 4p − 3 with the a+b family at every checkpoint."""
    from ...analysis import principal_angles_degrees
    from ...ntk import empirical_ntk
    from ..figures import alignment_figure

    section = Section()
    config = plan.modadd
    p = config.p
    dim = p - 1
    run = trained_run(config, runs / modadd_run_name(config), log)
    x = config.dataset().inputs
    blocks = modadd_blocks(p)
    (a1, b1), (a2, b2) = blocks[1], blocks[2]
    cache_file = cache / f"{modadd_run_name(config)}-grokking.json"
    done: dict[str, Any] = {}
    if cache_file.exists():
        try:
            done = json.loads(cache_file.read_text(encoding="utf-8"))
        except ValueError:
            done = {}
    start = time.perf_counter()
    steps = run.checkpoint_steps
    family = fourier_family(p, "a+b")
    for i, step in enumerate(steps):
        if str(step) in done:
            continue
        ntk = empirical_ntk(
            run.load_checkpoint(step), x, reduction="trace", dtype="float64", progress=False
        )
        values, vectors = linalg.eigh(ntk.kernel)
        second = vectors[:, a2 - 1 : b2]
        done[str(step)] = {
            "sum_overlap": linalg.subspace_overlap(second, family),
            "sum_angles_deg": principal_angles_degrees(second, family),
            "a_overlap_first": linalg.subspace_overlap(
                vectors[:, a1 - 1 : b1], fourier_family(p, "a")
            ),
        }
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, done)
        if (i + 1) % 10 == 0:
            log(f"  checkpoint {i + 1}/{len(steps)} (epoch {step})")
    section.seconds["sweep"] = time.perf_counter() - start
    ordered = [done[str(step)] for step in steps]
    curve = alignment_curve(steps, [row["sum_overlap"] for row in ordered], dim)
    history = run.history
    above_half = first_step_above(history, "test_acc", 0.5)
    above_95 = first_step_above(history, "test_acc", 0.95)
    section.numbers.update(
        {
            "p": p,
            "n_checkpoints": len(steps),
            "curve": curve.as_dict(),
            "a_overlap_first_cliff": [row["a_overlap_first"] for row in ordered],
            "sum_angles_deg": {
                str(s): row["sum_angles_deg"] for s, row in zip(steps, ordered, strict=True)
            },
            "onset": curve.onset,
            "test_acc_above_50": above_half,
            "test_acc_above_95": above_95,
        }
    )
    log(
        f"  grokking: onset (peak derivative) at epoch {curve.onset}; test accuracy > 50% at "
        f"epoch {above_half}, > 95% at {above_95} ({len(steps)} checkpoints)"
    )
    section.checks["onset within 30 epochs of test accuracy > 50%"] = (
        above_half is not None and abs(curve.onset - above_half) <= 30
    )
    section.checks["onset before test accuracy reaches 95%"] = (
        above_95 is not None and curve.onset < above_95
    )
    section.figures["grokking_alignment"] = alignment_figure(
        curve.steps,
        curve.overlap_percent,
        curve.derivative,
        history,
        onset=curve.onset,
        label=f"eigvecs {a2}–{b2} vs a+b",
    )
    return section
