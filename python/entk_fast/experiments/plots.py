"""Training-curve figures (PNG), drawn off-screen with matplotlib's Agg canvas.

No pyplot: nothing here touches matplotlib's global backend or opens a window.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from .registry import task_of

__all__ = ["plot_training_curve"]


def plot_training_curve(
    history: Mapping[str, Sequence[float] | Any],
    kind: str,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write the training curves of a registered task's history to ``path`` (PNG).

    Two panels against step (epoch for the modular-addition MLP), as the task's registry entry
    says: TMS shows the loss (log scale) and the number of reconstructed features; modular
    addition the train/test loss (log scale) and accuracy.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    spec = task_of(kind)
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    steps = list(history["step"])
    for ax, panel in zip(fig.subplots(1, 2), spec.panels, strict=True):
        for i, column in enumerate(panel.columns):
            values = [100.0 * v for v in history[column]] if panel.percent else history[column]
            label = (
                column.removesuffix("_loss").removesuffix("_acc")
                if len(panel.columns) > 1
                else "train"
            )
            ax.plot(steps, values, color=f"C{i if len(panel.columns) > 1 else 0}", label=label)
        if panel.log:
            ax.set_yscale("log")
        if panel.percent:
            ax.set_ylim(-2, 102)
        if panel.integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(panel.columns) > 1 or panel.log:
            ax.legend()
        ax.set_ylabel(panel.ylabel)
        ax.set_xlabel(spec.step_unit.removesuffix("s"))
        ax.grid(alpha=0.3)
    fig.suptitle(title or spec.title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target
