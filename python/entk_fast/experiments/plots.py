"""Training-curve figures (PNG), drawn off-screen with matplotlib's Agg canvas.

No pyplot: nothing here touches matplotlib's global backend or opens a window.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError
from .runs import atomic_write_bytes

__all__ = ["plot_training_curve"]


def plot_training_curve(
    history: Mapping[str, Sequence[float] | Any],
    kind: str,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write the training curves of a ``"tms"`` or ``"modadd"`` history to ``path`` (PNG).

    TMS: loss (log scale) and number of reconstructed features against step.
    Modular addition: train/test loss (log scale) and train/test accuracy against epoch.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if kind not in ("tms", "modadd"):
        raise InvalidArgumentError(f"kind must be 'tms' or 'modadd', got {kind!r}")
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_right = fig.subplots(1, 2)
    steps = list(history["step"])
    if kind == "tms":
        ax_loss.plot(steps, history["loss"], label="train")
        ax_right.plot(steps, history["n_reconstructed"], color="C2")
        ax_right.set_ylabel(r"features with $(W^\top W)_{ii} \geq 0.75$")
        ax_right.yaxis.set_major_locator(MaxNLocator(integer=True))
        xlabel = "step"
    else:
        for split, color in (("train", "C0"), ("test", "C1")):
            ax_loss.plot(steps, history[f"{split}_loss"], color=color, label=split)
            acc = [100.0 * a for a in history[f"{split}_acc"]]
            ax_right.plot(steps, acc, color=color, label=split)
        ax_right.set_ylabel("accuracy (%)")
        ax_right.set_ylim(-2, 102)
        ax_right.legend()
        xlabel = "epoch"
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for ax in (ax_loss, ax_right):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title or ("TMS training" if kind == "tms" else "Modular addition training"))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target
