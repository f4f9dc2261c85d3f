"""The cross kernel K(X, X2) against the brute-force reference, and results saved and loaded."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ntk_reference import make_case, metric_root, reference_jacobian, relative_error

from entk_fast import EmpiricalNTK, NTKSpectrum, empirical_ntk, entk_spectrum
from entk_fast.errors import InvalidArgumentError

REDUCTIONS = ["flattened", "trace", "mean_pairs"]
TOL = 1e-10


def reference_cross(
    jac: np.ndarray, jac2: np.ndarray, reduction: str, metric: np.ndarray | None
) -> np.ndarray:
    """K(X, X2) from J(X) (N, C, P) and J(X2) (N2, C, P), reduced as the engine reduces."""
    n, c, p = jac.shape
    n2 = jac2.shape[0]
    root = metric_root(metric, c)
    a = np.einsum("ab,nbp->nap", root, jac)
    b = np.einsum("ab,nbp->nap", root, jac2)
    if reduction == "flattened":
        return a.reshape(n * c, p) @ b.reshape(n2 * c, p).T
    if reduction == "trace":
        return np.einsum("ncp,mcp->nm", a, b) / c
    return (a.sum(axis=1) / c) @ (b.sum(axis=1) / c).T


def _second_inputs(name: str) -> tuple[torch.Tensor, ...]:
    return make_case(name, n=3, seed=7)[1]


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mlp", "tms", "tokens", "two_inputs", "attention"])
def test_cross_kernel_matches_reference(name: str, reduction: str, structured: bool) -> None:
    model, x = make_case(name, n=5)
    x2 = _second_inputs(name)
    jac, jac2 = reference_jacobian(model, x), reference_jacobian(model, x2)
    c = jac.shape[1]
    metric = np.linspace(0.3, 1.7, c)
    result = empirical_ntk(
        model,
        x,
        x2,
        reduction=reduction,
        output_metric=metric,
        layerwise=True,
        structured=structured,
        progress=False,
    )
    expected = reference_cross(jac, jac2, reduction, metric)
    per = c if reduction == "flattened" else 1
    assert result.kernel.shape == (5 * per, 3 * per) == expected.shape
    assert result.is_cross and result.n_samples == 5 and result.n_samples2 == 3
    assert relative_error(result.kernel, expected) < TOL
    total = sum(result.layer_kernels.values())
    assert relative_error(total, result.kernel) < 1e-12
    if structured and name in ("mlp", "tokens"):
        assert "structured" in result.paths.values()
    if not structured:
        assert set(result.paths.values()) == {"general"}


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_kernel_of_x_with_itself_is_the_kernel(reduction: str) -> None:
    model, x = make_case("mlp", n=6)
    square = empirical_ntk(model, x, reduction=reduction, progress=False)
    cross = empirical_ntk(model, x, x, reduction=reduction, progress=False)
    assert relative_error(cross.kernel, square.kernel) < 1e-13


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_tiled_cross_kernel_matches_reference(reduction: str, structured: bool) -> None:
    """A budget too small for the whole Jacobian: the cross kernel comes in tile pairs."""
    model, x = make_case("mlp", n=9)
    x2 = make_case("mlp", n=7, seed=3)[1]
    expected = reference_cross(
        reference_jacobian(model, x), reference_jacobian(model, x2), reduction, None
    )
    result = empirical_ntk(
        model, x, x2, reduction=reduction, structured=structured, max_memory=6000, progress=False
    )
    assert relative_error(result.kernel, expected) < TOL


def test_cross_kernel_rejects_mismatched_inputs() -> None:
    model, x = make_case("mlp", n=4)
    with pytest.raises(InvalidArgumentError, match=r"x2 must match inputs.*\(N2, 4\)"):
        empirical_ntk(model, x, torch.zeros(3, 5, dtype=torch.float64), progress=False)
    with pytest.raises(InvalidArgumentError, match="x2 is empty"):
        empirical_ntk(model, x, torch.zeros(0, 4, dtype=torch.float64), progress=False)


def test_cross_kernel_has_no_spectrum() -> None:
    model, x = make_case("mlp", n=4)
    cross = empirical_ntk(model, x, x[0][:2], progress=False)
    with pytest.raises(InvalidArgumentError, match="cross kernel"):
        cross.spectrum()


# --- save / load --------------------------------------------------------------------------------


def test_kernel_round_trips_bit_exactly(tmp_path: Path) -> None:
    model, x = make_case("mlp", n=5)
    ntk = empirical_ntk(model, x, output_metric=np.eye(3) * 2.0, layerwise=True, progress=False)
    path = tmp_path / "k.npz"
    ntk.save(path)
    back = EmpiricalNTK.load(path)
    np.testing.assert_array_equal(back.kernel, ntk.kernel)
    assert back.kernel.dtype == ntk.kernel.dtype
    assert list(back.layer_kernels) == list(ntk.layer_kernels)
    for key, value in ntk.layer_kernels.items():
        np.testing.assert_array_equal(back.layer_kernels[key], value)
    assert back.output_metric is not None and ntk.output_metric is not None
    np.testing.assert_array_equal(back.output_metric, ntk.output_metric)
    assert (back.n_samples, back.n_outputs, back.reduction) == (5, 3, "flattened")
    assert back.parameter_groups == ntk.parameter_groups
    assert back.paths == ntk.paths and back.n_parameters == ntk.n_parameters
    np.testing.assert_array_equal(
        back.unflatten(back.kernel[:, 0]), ntk.unflatten(ntk.kernel[:, 0])
    )


def test_cross_kernel_round_trips(tmp_path: Path) -> None:
    model, x = make_case("tokens", n=5)
    ntk = empirical_ntk(model, x, _second_inputs("tokens"), reduction="trace", progress=False)
    ntk.save(tmp_path / "c.npz")
    back = EmpiricalNTK.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(back.kernel, ntk.kernel)
    assert back.n_samples2 == 3 and back.output_metric is None


def test_spectrum_round_trips_bit_exactly(tmp_path: Path) -> None:
    model, x = make_case("mlp", n=6)
    spec = entk_spectrum(model, x, k=5, method="dense", progress=False)
    spec.save(tmp_path / "s.npz")
    back = NTKSpectrum.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.eigenvalues, spec.eigenvalues)
    np.testing.assert_array_equal(back.eigenvectors, spec.eigenvectors)
    assert back.method == spec.method and back.ridge == spec.ridge
    assert back.gaps() == spec.gaps()
    assert back.info["solver"] == spec.info["solver"]


def test_load_refuses_other_kinds_versions_and_junk(tmp_path: Path) -> None:
    model, x = make_case("mlp", n=4)
    ntk = empirical_ntk(model, x, progress=False)
    ntk.save(tmp_path / "k.npz")
    with pytest.raises(InvalidArgumentError, match="entk-fast-ntk.*not a 'entk-fast-spectrum'"):
        NTKSpectrum.load(tmp_path / "k.npz")
    # a newer format version
    with np.load(tmp_path / "k.npz") as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__entk_fast_meta__"]))
    meta["format_version"] = 99
    arrays["__entk_fast_meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "new.npz", **arrays)
    with pytest.raises(InvalidArgumentError, match="format version 99"):
        EmpiricalNTK.load(tmp_path / "new.npz")
    np.savez(tmp_path / "plain.npz", kernel=np.eye(2))
    with pytest.raises(InvalidArgumentError, match="not a result saved by entk-fast"):
        EmpiricalNTK.load(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgumentError, match="not a result saved by entk-fast"):
        EmpiricalNTK.load(tmp_path / "junk.npz")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        EmpiricalNTK.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(tmp_path / "k.npz")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_results_have_a_compact_repr() -> None:
    model, x = make_case("mlp", n=5)
    ntk = empirical_ntk(model, x, layerwise=True, progress=False)
    text = repr(ntk)
    assert "\n" not in text and len(text) < 300
    assert "15 × 15 float64" in text and "flattened" in text and "layers.0" in text
    assert "<table>" in ntk._repr_html_()
    spec = ntk.spectrum()
    assert "15 of a 15-row kernel" in repr(spec) and "dense" in repr(spec)
    assert "largest cliffs" in spec._repr_html_()


@pytest.mark.parametrize("metric", [np.full(3, 1e-310), np.eye(3) * 1e-310])
def test_subnormal_output_metric_scales_the_kernel_exactly(metric: np.ndarray) -> None:
    model, x = make_case("mlp", n=4)
    plain = empirical_ntk(model, x, progress=False).kernel
    scaled = empirical_ntk(model, x, output_metric=metric, progress=False).kernel
    assert np.all(np.isfinite(scaled)) and np.abs(scaled).max() > 0
    np.testing.assert_allclose(scaled / 1e-310, plain, rtol=1e-9, atol=1e-9 * np.abs(plain).max())
