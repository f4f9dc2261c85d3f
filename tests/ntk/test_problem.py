"""ntk/problem.py: the reductions, the output map and the metric, against brute force and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import make_case, reference_jacobian, reference_kernel, relative_error

from entk_fast import empirical_ntk
from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.ntk.problem import arrange, normalise_metric
from entk_fast.reductions import REDUCTIONS


def _metric(kind: str, c: int) -> np.ndarray | None:
    rng = np.random.default_rng(11)
    if kind == "none":
        return None
    if kind == "vector":
        w = rng.uniform(0.2, 2.0, c)
        w[1] = 0.0  # a zero weight is PSD: allowed
        return w
    a = rng.standard_normal((c, c))
    return a @ a.T + 0.3 * np.eye(c)


@pytest.mark.parametrize("metric_kind", ["none", "vector", "matrix"])
@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_problem_reductions_match_brute_force(reduction: str, metric_kind: str) -> None:
    model, x = make_case("mlp", n=4)
    jac = reference_jacobian(model, x)
    metric = _metric(metric_kind, jac.shape[1])
    got = empirical_ntk(model, x, reduction=reduction, output_metric=metric, progress=False)
    assert relative_error(got.kernel, reference_kernel(jac, reduction, metric)) < 1e-10
    if metric is None:
        assert got.output_metric is None
    else:  # the result reports S itself (a matrix), not its square root
        full = np.diag(metric) if metric.ndim == 1 else metric
        np.testing.assert_allclose(got.output_metric, full, rtol=0, atol=1e-15)


def test_problem_reduction_objects_closed_form() -> None:
    trace, flat, mean = REDUCTIONS["trace"], REDUCTIONS["flattened"], REDUCTIONS["mean_pairs"]
    assert (trace.scale(4), flat.scale(4), mean.scale(4)) == (0.25, 1.0, 1.0)
    assert (trace.kernel_rows_per_sample(3), flat.kernel_rows_per_sample(3)) == (1, 3)
    assert (trace.dual_columns(3, 10), flat.dual_columns(3, 10)) == (30, 10)
    assert (flat.per_output, trace.per_output, mean.per_output) == (True, False, False)
    block = torch.arange(2 * 3 * 5, dtype=torch.float64).reshape(2, 3, 5)
    assert torch.equal(arrange(trace, block), block.reshape(2, 15))
    assert torch.equal(arrange(flat, block), block.reshape(6, 5))
    assert (flat.kernel_order(4, 3), trace.kernel_order(4, 3), mean.kernel_order(4, 3)) == (
        12,
        4,
        4,
    )


def test_problem_metric_root_squares_to_the_metric() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 2))
    s = a @ a.T  # rank 2: the root keeps the null space
    sym, root, diagonal = normalise_metric(s, 4)
    assert not diagonal
    np.testing.assert_allclose(sym, s, rtol=0, atol=1e-15)
    np.testing.assert_allclose(root @ root, s, rtol=0, atol=1e-12)
    np.testing.assert_allclose(root, root.T, rtol=0, atol=1e-15)
    # Round-off eigenvalues are cut relative to the largest: at scale 1e8 the root must still
    # vanish on S's null space (keeping them would put √(1e-8)-sized noise there).
    _, big_root, _ = normalise_metric(1e8 * s, 4)
    null = np.linalg.svd(a.T)[2][2:].T  # (4, 2), orthogonal to a's columns
    assert np.abs(big_root @ null).max() < 1e-6
    w = np.array([0.0, 0.25, 4.0])
    full, half, diagonal = normalise_metric(w, 3)
    assert diagonal
    np.testing.assert_array_equal(full, np.diag(w))
    np.testing.assert_array_equal(half, [0.0, 0.5, 2.0])


def test_problem_metric_tolerances_scale_with_dtype_and_size() -> None:
    # float32: asymmetry is allowed up to 8·eps32·C·max|S| (here 1.9e-6), no further.
    for d, ok in ((1e-6, True), (3e-6, False)):
        s = np.array([[1.0, 0.5], [0.5 + d, 1.0]], dtype=np.float32)
        if ok:
            sym, _, _ = normalise_metric(s, 2)
            np.testing.assert_allclose(sym, sym.T, rtol=0, atol=0)
        else:
            with pytest.raises(InvalidArgumentError, match="symmetric"):
                normalise_metric(s, 2)
    # float64: 1e-10·C·max|S| with C = 3 (3e-10).
    for d, ok in ((2e-10, True), (4e-10, False)):
        s = np.eye(3)
        s[0, 1] = 0.25
        s[1, 0] = 0.25 + d
        if ok:
            normalise_metric(s, 3)
        else:
            with pytest.raises(InvalidArgumentError, match="symmetric"):
                normalise_metric(s, 3)


def test_problem_keyword_inputs_and_partial_nan() -> None:
    model, (x,) = make_case("mlp", n=4)

    class Keyword(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    wrapped = Keyword()
    by_key = empirical_ntk(wrapped, {"x": x}, progress=False).kernel
    np.testing.assert_array_equal(by_key, empirical_ntk(model, x, progress=False).kernel)
    with pytest.raises(InvalidTypeError, match="keyword names must be strings"):
        empirical_ntk(wrapped, {1: x}, progress=False)
    bad = x.clone()
    bad[2, 1] = float("nan")  # one feature of one sample
    with pytest.raises(InvalidArgumentError, match="first at sample 2"):
        empirical_ntk(model, bad, progress=False)
