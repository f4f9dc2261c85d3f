"""Plots of eNTK spectra and eigenvectors, for notebooks and scripts (needs matplotlib: the
``paper`` extra, or ``pip install matplotlib``).

Every function draws on ``ax`` when given (a matplotlib ``Axes`` of your own figure) and
otherwise on a new pyplot figure, so ``plt.show()`` and ``plt.savefig`` work as usual; each
returns the ``Figure`` it drew on. Inputs are plain arrays (numpy, or anything
``numpy.asarray`` takes), e.g. `entk_fast.NTKSpectrum.eigenvalues` and
``.eigenvectors``. Malformed arrays raise `InvalidArgumentError`;
without matplotlib every function raises ``ImportError``.

Examples:
    >>> import matplotlib.pyplot as plt
    >>> import torch
    >>> from torch import nn
    >>> import entk_fast as ef
    >>> from entk_fast import plotting
    >>> model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> spec = ef.entk_spectrum(model, torch.randn(6, 3))
    >>> fig = plotting.plot_spectrum(spec.eigenvalues, cliffs=[1])
    >>> plt.close(fig)  # or plt.show() / fig.savefig("spectrum.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_eigenvector", "plot_heatmap", "plot_layer_spectra", "plot_spectrum"]


def _axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new pyplot figure with one Axes."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(
            "entk_fast.plotting needs matplotlib: pip install matplotlib "
            "(or install entk-fast with the 'paper' extra)"
        ) from None
    if ax is not None:
        figure: Any = ax.figure
        root = getattr(figure, "figure", None)  # a SubFigure's root Figure
        return (figure if root is None else root), ax
    import matplotlib.pyplot as plt

    figure, new_ax = plt.subplots(figsize=(width, height), layout="constrained")
    return figure, new_ax


def _vector(name: str, values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise InvalidArgumentError(f"{name}: expected a non-empty 1-D array, got shape {v.shape}")
    return v


def plot_spectrum(
    values: Any,
    *,
    cliffs: Sequence[int] = (),
    top: int | None = None,
    title: str = "eNTK spectrum",
    label: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Eigenvalues λ_k (shape ``(k,)``, descending) against k = 1, 2, … on a log scale.

    ``cliffs``: indices k to mark between λ_k and λ_{k+1} (a spectral cliff after k
    eigenvalues, as `entk_fast.analysis.spectral_cliffs` reports them); ``top``: plot
    only the first ``top``. Non-positive eigenvalues (round-off) are drawn at the smallest
    positive float. The paper's spectrum figures (J. Lin, arXiv 2510.00468).

    Args:
        values: (k,) eigenvalues, descending.
        cliffs: cliff indices k to mark (a dashed line between λ_k and λ_{k+1}).
        top: plot only the first ``top`` eigenvalues (default all).
        title: the Axes' title.
        label: the series' legend label (no legend when None).
        ax: draw on this Axes (default: a new figure).

    Returns:
        The matplotlib ``Figure`` drawn on.

    Raises:
        InvalidArgumentError: ``values`` is not a non-empty 1-D array.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> from entk_fast.plotting import plot_spectrum
        >>> fig = plot_spectrum([5.0, 4.8, 0.3, 0.01], cliffs=[2])
        >>> fig.axes[0].get_yscale()
        'log'
        >>> plt.close(fig)
    """
    v = _vector("values", values)[: top or None]
    figure, ax = _axes(ax, 6.5, 4)
    idx = np.arange(1, v.size + 1)
    ax.semilogy(idx, np.maximum(v, np.finfo(np.float64).tiny), ".", ms=3, label=label)
    for k in cliffs:
        if k < v.size:
            ax.axvline(k + 0.5, color="C3", lw=0.8, ls="--")
            ax.annotate(f"{k}", (k + 0.5, ax.get_ylim()[1]), color="C3", fontsize=8, va="top")
    ax.set_xlabel("index k")
    ax.set_ylabel(r"$\lambda_k$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if label is not None:
        ax.legend()
    return figure


def plot_layer_spectra(
    spectra: Mapping[str, Any],
    *,
    top: int = 200,
    title: str = "layerwise eNTK spectra",
    ax: Axes | None = None,
) -> Figure:
    """The top eigenvalues of each named kernel (``{name: values}``, e.g. one per layer from
    ``empirical_ntk(..., layerwise=True)``), one series each, log scale.

    Args:
        spectra: name -> (k,) eigenvalues, descending (k may differ per name).
        top: plot the first ``top`` of each.
        title: the Axes' title.
        ax: draw on this Axes (default: a new figure).

    Returns:
        The matplotlib ``Figure`` drawn on, with a legend of the names.

    Raises:
        InvalidArgumentError: ``spectra`` is empty or one of its values is not a non-empty
            1-D array.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> from entk_fast.plotting import plot_layer_spectra
        >>> fig = plot_layer_spectra({"fc1": [3.0, 1.0, 0.2], "fc2": [2.0, 0.5]})
        >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
        ['fc1', 'fc2']
        >>> plt.close(fig)
    """
    if not spectra:
        raise InvalidArgumentError("spectra: expected at least one {name: eigenvalues} entry")
    figure, ax = _axes(ax, 6.5, 4)
    for name, values in spectra.items():
        v = _vector(f"spectra[{name!r}]", values)[:top]
        ax.semilogy(np.arange(1, v.size + 1), np.maximum(v, 1e-300), ".", ms=3, label=name)
    ax.set_xlabel("index k")
    ax.set_ylabel(r"$\lambda_k$")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return figure


def plot_heatmap(
    matrix: Any,
    *,
    xlabel: str = "eigenvector j",
    ylabel: str = "feature a",
    title: str = "eigenvector × feature",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Figure:
    """A 2-D array (rows × columns) as an image with a colour bar, e.g. the TMS
    feature × eigenvector overlaps of `entk_fast.analysis.feature_heatmap` (J. Lin,
    arXiv 2510.00468, the TMS heatmaps).

    Args:
        matrix: (rows, columns) array; row 0 is drawn at the top.
        xlabel: the x axis' label.
        ylabel: the y axis' label.
        title: the Axes' title.
        vmin: the colour scale's lower limit (None: the data's minimum).
        vmax: the colour scale's upper limit (None: the data's maximum).
        cmap: a matplotlib colour map name.
        ax: draw on this Axes (default: a new figure).

    Returns:
        The matplotlib ``Figure`` drawn on (the image's Axes and its colour bar's).

    Raises:
        InvalidArgumentError: ``matrix`` is not a non-empty 2-D array.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> import numpy as np
        >>> from entk_fast.plotting import plot_heatmap
        >>> fig = plot_heatmap(np.eye(3))
        >>> len(fig.axes)  # the image and its colour bar
        2
        >>> plt.close(fig)
    """
    h = np.asarray(matrix, dtype=np.float64)
    if h.ndim != 2 or h.size == 0:
        raise InvalidArgumentError(f"matrix: expected a non-empty 2-D array, got shape {h.shape}")
    figure, ax = _axes(ax, 6, 5)
    image = ax.imshow(h, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure


def plot_eigenvector(
    vector: Any,
    shape: tuple[int, int] | None = None,
    *,
    title: str = "eigenvector",
    ax: Axes | None = None,
) -> Figure:
    """One eigenvector of a kernel: a line over the samples for a traced (N,) kernel, or, with
    ``shape=(N, C)``, an image of the flattened kernel's eigenvector reshaped to samples ×
    outputs (the paper's reading of an eigenvector as one feature's value on each input;
    J. Lin, arXiv 2510.00468).

    Args:
        vector: (N,) or (N·C,) one eigenvector, e.g. ``spec.eigenvectors[:, 0]``.
        shape: None (a line over the samples), or (N, C) for a flattened kernel's
            eigenvector (row n·C + c), drawn as an N × C image on a symmetric colour scale.
        title: the Axes' title.
        ax: draw on this Axes (default: a new figure).

    Returns:
        The matplotlib ``Figure`` drawn on.

    Raises:
        InvalidArgumentError: ``vector`` is not a non-empty 1-D array, or ``shape`` is not
            (N, C) with N·C its length.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> import numpy as np
        >>> from entk_fast.plotting import plot_eigenvector
        >>> v = np.linspace(-1.0, 1.0, 8)  # an eigenvector of an (N·C)² kernel, N = 4, C = 2
        >>> fig = plot_eigenvector(v, shape=(4, 2))
        >>> fig.axes[0].get_images()[0].get_array().shape
        (4, 2)
        >>> plt.close(fig)
    """
    v = _vector("vector", vector)
    if shape is None:
        figure, ax = _axes(ax, 6.5, 3)
        ax.plot(np.arange(v.size), v, lw=0.8)
        ax.set_xlabel("sample n")
        ax.set_ylabel("component")
        ax.grid(alpha=0.3)
        ax.set_title(title)
        return figure
    if len(shape) != 2 or shape[0] * shape[1] != v.size:
        raise InvalidArgumentError(
            f"shape: expected (N, C) with N·C = {v.size} (the vector's length), got {shape}"
        )
    bound = float(np.abs(v).max()) or 1.0
    return plot_heatmap(
        v.reshape(shape),
        xlabel="output c",
        ylabel="sample n",
        title=title,
        vmin=-bound,
        vmax=bound,
        cmap="RdBu_r",
        ax=ax,
    )
