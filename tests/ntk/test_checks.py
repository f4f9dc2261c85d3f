"""ntk/checks.py: the batched-vs-lone comparison and the NaN checks, at their edges."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entk_fast.ntk.checks import all_finite, close, close_per_sample, first_nonfinite, sample_namer


def test_checks_close_tolerance_and_nonfinite() -> None:
    # allclose with rtol and atol = rtol·max|x|: the largest entry may move by 2·rtol of itself.
    a64 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    assert close(a64, a64 * (1 + 1.5e-9))
    assert not close(a64, a64 * (1 + 3e-9))
    a32 = a64.float()
    assert close(a32, a32 * (1 + 1.5e-4))
    assert not close(a32, a32 * (1 + 3e-4))
    assert close(a64, a64 * (1 + 1.5e-6), rtol=1e-6)
    assert not close(a64, a64 * (1 + 3e-6), rtol=1e-6)
    assert not close(a64, a64.float())  # dtype differs
    assert not close(a64, a64[:2])  # shape differs
    ints = torch.tensor([1, 2, 3])
    assert close(ints, ints.clone()) and not close(ints, ints + 1)
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([1.0, nan, inf], dtype=torch.float64)
    assert close(x, x.clone())
    assert not close(x, torch.tensor([1.0, inf, nan], dtype=torch.float64))
    assert not close(x, torch.tensor([1.0, nan, -inf], dtype=torch.float64))
    assert not close(x, torch.tensor([1.1, nan, inf], dtype=torch.float64))
    empty = torch.zeros(0, dtype=torch.float64)
    assert close(empty, empty)
    one = torch.ones(1, dtype=torch.float64)
    assert close(one, one.clone()) and not close(one, 2 * one)
    huge = torch.tensor([1e300, 2.0], dtype=torch.float64)  # a scale beyond float32's range
    assert close(huge, huge.clone()) and not close(huge, huge * 1.01)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=12),
    st.lists(st.floats(-3e-4, 3e-4), min_size=12, max_size=12),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_checks_close_is_allclose_with_atol_at_the_scale(
    values: list[float], noise: list[float], dtype: torch.dtype
) -> None:
    """The fast comparison (one max difference, the elementwise test only in the band where
    it decides) gives exactly ``allclose(rtol, atol = rtol · max(|a|, |b|))``."""
    a = torch.tensor(values, dtype=dtype)
    rtol = 1e-4
    scale = float(a.abs().max()) or 1.0
    b = a + torch.tensor(noise[: len(values)], dtype=dtype) * scale
    big = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    assert close(a, b, rtol=rtol) == bool(torch.allclose(a, b, rtol=rtol, atol=rtol * big))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6),
    st.lists(st.floats(-3e-4, 3e-4), min_size=6, max_size=6),
    st.floats(1e-6, 1.0),
)
def test_checks_close_per_sample_is_close_slice_by_slice(
    values: list[float], noise: list[float], shrink: float
) -> None:
    """Each sample is held to its own scale: a small sample's error is not hidden by a large
    one (whole-batch ``close`` would accept it)."""
    a = torch.tensor(values, dtype=torch.float64).reshape(3, 2)
    a[1] *= shrink  # one sample much smaller than the others
    b = a + torch.tensor(noise, dtype=torch.float64).reshape(3, 2) * a.abs().amax()
    want = all(close(p, q, rtol=1e-4) for p, q in zip(a, b, strict=True))
    assert close_per_sample(a, b, rtol=1e-4) == want


def test_checks_close_per_sample_edges() -> None:
    big = torch.tensor([[1000.0, 2.0], [1e-3, 2e-3]], dtype=torch.float64)
    off = big.clone()
    off[1, 0] *= 1.01  # 1% off on the small sample: far below the large one's round-off
    assert close(big, off, rtol=1e-4) and not close_per_sample(big, off, rtol=1e-4)
    nan = big.clone()
    nan[0, 1] = float("nan")
    assert close_per_sample(nan, nan.clone()) and not close_per_sample(nan, big)
    ints = torch.tensor([[1, 2], [3, 4]])
    assert close_per_sample(ints, ints.clone()) and not close_per_sample(ints, ints + 1)
    assert not close_per_sample(big, big[:1])
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert close_per_sample(empty, empty)


def test_checks_finite_helpers_and_names() -> None:
    x = torch.zeros(3, 4, dtype=torch.float64)
    assert all_finite(x) and first_nonfinite(x) is None
    x[2, 1] = float("nan")
    x[1, 3] = float("inf")
    assert not all_finite(x)
    assert first_nonfinite(x) == 1
    assert first_nonfinite(x, dim=1) == 1
    assert all_finite(torch.tensor([1, 2])) and all_finite(torch.zeros(0))
    name = sample_namer(5, 2)
    assert [name(i) for i in (0, 2, 3, 4)] == ["sample 0", "sample 2", "x2 sample 0", "x2 sample 1"]
    assert sample_namer(4)(3) == "sample 3"
