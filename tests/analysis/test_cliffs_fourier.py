"""Spectral cliffs and Fourier families against closed forms. Torch-free."""

from __future__ import annotations

import numpy as np
import pytest

from entk_fast import InvalidArgumentError, linalg
from entk_fast.analysis.cliffs import RIDGE_EPSILON, spectral_cliffs
from entk_fast.analysis.fourier import FAMILIES, family_values, fourier_family


def test_cliffs_rank_ratios_largest_first():
    values = np.array([10.0, 9.0, 3.0, 2.9, 0.029, 0.0])
    cliffs = spectral_cliffs(values, top=2, mean_diagonal=1.0)
    # λ5 / λ6 with λ6 floored at ε·mean(diag K) dominates, then λ4 / λ5 = 100.
    assert [c.index for c in cliffs] == [5, 4]
    assert cliffs[0].ratio == pytest.approx(0.029 / RIDGE_EPSILON)
    assert cliffs[1].ratio == pytest.approx(100.0)
    assert cliffs[1].before == 2.9 and cliffs[1].after == 0.029


def test_cliffs_default_floor_is_mean_of_spectrum():
    values = np.array([4.0, 4.0, 0.0, 0.0])
    (cliff,) = spectral_cliffs(values, top=1)
    assert cliff.index == 2 and cliff.ratio == pytest.approx(4.0 / (RIDGE_EPSILON * 2.0))


@pytest.mark.parametrize(
    "values,top,message",
    [
        ([1.0], 1, "at least 2 eigenvalues"),
        ([[1.0, 0.5]], 1, "1-D spectrum"),
        ([1.0, np.nan], 1, "finite"),
        ([1.0, 2.0], 1, "descending"),
        ([2.0, 1.0], 0, r"top: expected an integer ≥ 1"),
    ],
)
def test_cliffs_bad_input(values, top, message):
    with pytest.raises(InvalidArgumentError, match=message):
        spectral_cliffs(values, top=top)


@pytest.mark.parametrize("p", [3, 7, 29])
@pytest.mark.parametrize("which", FAMILIES)
def test_fourier_family_is_orthonormal_centred_and_spans_the_closed_form(p, which):
    f = fourier_family(p, which)
    assert f.shape == (p * p, p - 1)
    assert np.allclose(f.T @ f, np.eye(p - 1), atol=1e-12)
    assert np.allclose(f.sum(axis=0), 0, atol=1e-10)
    v = family_values(p, which)
    k = np.arange(1, (p - 1) // 2 + 1)
    raw = np.hstack(
        [np.cos(2 * np.pi * np.outer(v, k) / p), np.sin(2 * np.pi * np.outer(v, k) / p)]
    )
    assert linalg.subspace_overlap(f, raw) == pytest.approx(p - 1, abs=1e-9)
    # frequency-k columns come as the pair (2k-2, 2k-1)
    first = np.cos(2 * np.pi * v / p)
    assert abs(first @ f[:, 0]) / np.linalg.norm(first) == pytest.approx(1.0, abs=1e-12)


def test_fourier_families_are_mutually_orthogonal():
    p = 11
    fams = {w: fourier_family(p, w) for w in FAMILIES}
    for x in FAMILIES:
        for y in FAMILIES:
            if x < y:
                assert np.abs(fams[x].T @ fams[y]).max() < 1e-12


def test_family_values_layout_row_is_a_times_p_plus_b():
    p = 5
    a, b = 3, 4
    i = a * p + b
    assert family_values(p, "a")[i] == 3 and family_values(p, "b")[i] == 4
    assert family_values(p, "a+b")[i] == 2 and family_values(p, "a-b")[i] == 4


@pytest.mark.parametrize("p,which", [(4, "a"), (1, "a"), (7, "ab"), (True, "a")])
def test_fourier_bad_input(p, which):
    with pytest.raises(InvalidArgumentError):
        fourier_family(p, which)


def test_cliff_blocks_refuses_a_fractional_cut() -> None:
    from entk_fast.analysis import cliff_blocks
    from entk_fast.errors import InvalidTypeError

    with pytest.raises(InvalidTypeError, match="cut must be an integer"):
        cliff_blocks([2.7], 10)
