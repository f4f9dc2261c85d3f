"""Figures of the paper's experiments: each function returns a matplotlib ``Figure`` (shown
inline in a notebook) and `save_figure` writes one as PNG, atomically. The generic plots
are `entk_fast.plotting`'s, drawn here on figures of our own.

No pyplot: nothing here touches matplotlib's global backend or opens a window (figures are
drawn on the Agg canvas).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write_bytes
from ..plotting import plot_heatmap, plot_layer_spectra, plot_spectrum
from .tasks.registry import task_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MATPLOTLIB_MISSING",
    "alignment_figure",
    "feature_heatmap_figure",
    "fourier_heatmap_figure",
    "frequency_norms_figure",
    "layer_overlaps_figure",
    "layer_spectra_figure",
    "matplotlib_available",
    "plot_training_curve",
    "save_figure",
    "spectrum_figure",
]


MATPLOTLIB_MISSING = "pip install matplotlib, or install entk-fast with the 'paper' extra"
"""How to get matplotlib, for the messages of what needs it."""


def matplotlib_available() -> bool:
    """Whether matplotlib imports (the figures need it; it is the ``paper`` extra).

    Examples:
        >>> from entk_fast.paper.figures import matplotlib_available
        >>> isinstance(matplotlib_available(), bool)
        True
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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
    from matplotlib.ticker import MaxNLocator

    spec = task_of(kind)
    fig = _figure(10, 4)
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
    return save_figure(fig, path, dpi=dpi)


@functools.cache
def _figure_class() -> type[Figure]:
    from matplotlib.figure import Figure

    class InlineFigure(Figure):
        """A Figure that a notebook shows inline as PNG without pyplot (``_repr_png_``)."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=100)
            return buf.getvalue()

    return InlineFigure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = _figure_class()(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target


def spectrum_figure(
    values: Any, cliffs: Sequence[int] = (), *, title: str = "eNTK spectrum", top: int | None = None
) -> Figure:
    """Eigenvalues (descending, log scale) against index, each cliff k marked between k, k+1."""
    fig = _figure(6.5, 4)
    return plot_spectrum(values, cliffs=cliffs, title=title, top=top, ax=fig.subplots())


def feature_heatmap_figure(heatmap: Any, *, title: str = "eigenvector × feature") -> Figure:
    """A TMS heatmap H (features × eigenvectors), values in [0, 1]."""
    fig = _figure(6, 5)
    return plot_heatmap(heatmap, title=title, ax=fig.subplots())


def fourier_heatmap_figure(
    panels: Mapping[str, Any], *, title: str = "phase-insensitive correlation"
) -> Figure:
    """One heatmap (frequency × atom) per named panel, e.g. "a, before" / "a, after"."""
    fig = _figure(3.2 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, values) in zip(axes, panels.items(), strict=True):
        h = np.asarray(values, dtype=np.float64)
        image = ax.imshow(
            h,
            aspect="auto",
            cmap="magma",
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(0.5, h.shape[1] + 0.5, h.shape[0] + 0.5, 0.5),
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("atom")
        ax.set_ylabel("frequency k")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title)
    return fig


def layer_spectra_figure(
    spectra: Mapping[str, Any], *, top: int = 200, title: str = "layerwise eNTK spectra"
) -> Figure:
    """The top eigenvalues of each layer kernel (and the full kernel), log scale."""
    fig = _figure(6.5, 4)
    return plot_layer_spectra(spectra, top=top, title=title, ax=fig.subplots())


def alignment_figure(
    steps: Any,
    overlap_percent: Any,
    derivative: Any,
    history: Mapping[str, Any],
    *,
    onset: int | None = None,
    label: str = "overlap",
) -> Figure:
    """Overlap (%) and its derivative over training, beside train / test accuracy."""
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    left.plot(steps, overlap_percent, "o-", ms=3, label=label)
    left.set_ylabel("overlap (%)")
    twin = left.twinx()
    twin.plot(steps, derivative, color="C1", lw=1, label="derivative")
    twin.set_ylabel("d overlap / d epoch (% per epoch)", color="C1")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if onset is not None:
            ax.axvline(onset, color="C3", ls="--", lw=0.8)
    left.legend(loc="upper left")
    for split, color in (("train", "C0"), ("test", "C1")):
        right.plot(
            history["step"], 100 * np.asarray(history[f"{split}_acc"]), color=color, label=split
        )
    right.set_ylabel("accuracy (%)")
    right.legend()
    fig.suptitle("eNTK alignment over training" + ("" if onset is None else f" (onset {onset})"))
    return fig


def frequency_norms_figure(
    norms: Any, keys: Sequence[int] = (), *, title: str = "Fourier norms of the embedding"
) -> Figure:
    """Bars of the norm of each frequency k = 1..K (``norms[k - 1]``), the ``keys`` in red."""
    v = np.asarray(norms, dtype=np.float64)
    fig = _figure(6.5, 3.5)
    ax = fig.subplots()
    freqs = np.arange(1, v.size + 1)
    colors = ["C3" if k in set(keys) else "C0" for k in freqs]
    ax.bar(freqs, v, color=colors)
    ax.set_xticks(freqs)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("frequency k (key frequencies in red)")
    ax.set_ylabel("norm")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return fig


def layer_overlaps_figure(
    overlaps: Mapping[str, Mapping[str, float]],
    maximum: float,
    *,
    title: str = "layer kernels: top eigenvectors vs Fourier families",
) -> Figure:
    """Grouped bars: for each layer (x axis), its overlap with each family (one colour each),
    out of ``maximum`` (a dashed line)."""
    layers = list(overlaps)
    families = list(next(iter(overlaps.values()))) if layers else []
    fig = _figure(max(6.5, 0.8 * len(layers) + 2), 4)
    ax = fig.subplots()
    width = 0.8 / max(len(families), 1)
    x = np.arange(len(layers))
    for i, family in enumerate(families):
        values = [overlaps[layer][family] for layer in layers]
        ax.bar(x + (i - (len(families) - 1) / 2) * width, values, width, label=family)
    ax.axhline(maximum, color="k", ls="--", lw=0.8)
    ax.set_xticks(x, layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"overlap (of {maximum:g})")
    ax.set_ylim(0, maximum * 1.08)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    return fig
