"""entk_fast.plotting: each plot draws on the caller's Axes or on a new pyplot figure, returns
that Figure, and refuses arrays of the wrong shape by name."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from entk_fast import InvalidArgumentError, plotting  # noqa: E402


def test_spectrum_draws_on_the_given_axes_and_returns_its_figure() -> None:
    fig, ax = plt.subplots()
    values = np.array([10.0, 5.0, 1e-3, 1e-4, -1e-12])
    out = plotting.plot_spectrum(values, cliffs=[2], ax=ax)
    assert out is fig
    (line,) = ax.get_lines()[:1]
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4, 5])
    y = np.asarray(line.get_ydata())
    np.testing.assert_allclose(y[:4], values[:4])
    assert y[4] == np.finfo(np.float64).tiny  # a round-off negative is drawn, not dropped
    assert [v.get_xdata()[0] for v in ax.get_lines()[1:]] == [2.5]  # the cliff after 2
    plt.close(fig)


def test_without_axes_a_pyplot_figure_is_made() -> None:
    before = set(plt.get_fignums())
    fig = plotting.plot_layer_spectra({"W1": [3.0, 2.0], "W2": [1.0]}, top=1)
    assert set(plt.get_fignums()) - before == {fig.number}
    assert [len(line.get_xdata()) for line in fig.axes[0].get_lines()] == [1, 1]
    plt.close(fig)


def test_eigenvector_reshaped_to_samples_by_outputs() -> None:
    fig, ax = plt.subplots()
    v = np.arange(6.0) - 2.5
    plotting.plot_eigenvector(v, shape=(3, 2), ax=ax)
    image = ax.get_images()[0]
    np.testing.assert_array_equal(image.get_array(), v.reshape(3, 2))
    assert image.get_clim() == (-2.5, 2.5)  # symmetric colour scale around 0
    plt.close(fig)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: plotting.plot_spectrum(np.ones((2, 2))), "values"),
        (lambda: plotting.plot_heatmap(np.ones(3)), "matrix"),
        (lambda: plotting.plot_eigenvector(np.ones(6), shape=(4, 2)), "shape"),
        (lambda: plotting.plot_layer_spectra({}), "spectra"),
    ],
)
def test_bad_input_names_the_argument(call, argument: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError, match=argument):
        call()
    plt.close("all")
