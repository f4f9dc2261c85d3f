"""Reliability of the eNTK engine: bad samples are named, parameter-free outputs give the exact zero
kernel, and every spectrum path agrees with the brute-force reference (tests/ntk_reference.py).

Each test asserts a right answer against an independent reference or the package's own
exception with a message that names the sample or the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import MLP, TokenMLP, TwoInputs, reference_jacobian, reference_kernel
from torch import nn

import entk_fast as ef
from entk_fast._validate import check_kernel_nonzero, check_solver_options, parse_memory
from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.ntk.checks import close, first_nonfinite, require_finite

N = 40
BAD = 20  # outside the probe samples (0, 1, 2, 9, 16, 24, 31, 39)

# --- item 1: NaN / inf in the Jacobian of a sample outside the probe --------------------------


class SqrtOutput(nn.Module):
    """fc(sqrt(999 - x)): the output (and Jacobian) is NaN where x > 999."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sqrt(999 - x))


class SqrtCotangent(nn.Module):
    """fc2(sqrt(fc1(x))) with fc1 the identity: where x = 0 the output is finite but fc1's
    output cotangent (and so the Jacobian) is infinite (the structured path's cotangents)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, 1)
        self.fc2 = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc1.weight.fill_(1.0)
            self.fc1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.sqrt(self.fc1(x)))


class SqrtParameter(nn.Module):
    """fc(x) + sqrt(a (x − 5)²): where x = 5 the output is finite and ∂/∂a = 0/0 (a
    general-path parameter next to a structured layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)
        self.a = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.sqrt(self.a * (x - 5) ** 2)


BAD_VALUE = {SqrtOutput: 1000.0, SqrtCotangent: 0.0, SqrtParameter: 5.0}


def bad_case(cls: type[nn.Module], n: int = N, at: int = BAD) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = cls().double().eval()
    x = torch.rand(n, 1, dtype=torch.float64) + 0.5
    x[at] = BAD_VALUE[cls]
    return model, x


PATHS = {
    "default": lambda m, x: ef.empirical_ntk(m, x, progress=False),
    "general": lambda m, x: ef.empirical_ntk(m, x, structured=False, progress=False),
    "trace": lambda m, x: ef.empirical_ntk(m, x, reduction="trace", progress=False),
    "mean_pairs": lambda m, x: ef.empirical_ntk(m, x, reduction="mean_pairs", progress=False),
    "layerwise": lambda m, x: ef.empirical_ntk(m, x, layerwise=True, progress=False),
    "tiled": lambda m, x: ef.empirical_ntk(m, x, max_memory="30kB", progress=False),
    "topk": lambda m, x: ef.entk_topk(m, x, 2, progress=False),
    "topk_trace": lambda m, x: ef.entk_topk(m, x, 2, reduction="trace", progress=False),
    "dual": lambda m, x: ef.entk_spectrum(m, x, 2, method="dual", progress=False),
}


@pytest.mark.parametrize("cls", list(BAD_VALUE), ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", list(PATHS))
def test_non_finite_jacobian_names_the_sample(cls: type[nn.Module], path: str) -> None:
    model, x = bad_case(cls)
    with pytest.raises(InvalidArgumentError, match=rf"NaN or infinite at sample {BAD}\b") as info:
        PATHS[path](model, x)
    message = str(info.value)
    assert "J:" not in message and "index (" not in message


@pytest.mark.parametrize("cls", list(BAD_VALUE), ids=lambda c: c.__name__)
def test_non_finite_jacobian_in_x2_names_the_x2_sample(cls: type[nn.Module]) -> None:
    model, x2 = bad_case(cls, n=12, at=7)
    x = torch.rand(10, 1, dtype=torch.float64) + 0.5
    for structured in (True, False):
        with pytest.raises(InvalidArgumentError, match=r"NaN or infinite at x2 sample 7\b"):
            ef.empirical_ntk(model, x, x2, structured=structured, progress=False)


def test_the_same_model_without_the_bad_sample_matches_the_reference() -> None:
    """The check does not refuse finite Jacobians: drop sample 20 and the kernel is right."""
    for cls in BAD_VALUE:
        model, x = bad_case(cls)
        good = torch.cat([x[:BAD], x[BAD + 1 :]])
        ref = reference_kernel(reference_jacobian(model, (good,)), "flattened")
        for structured in (True, False):
            ntk = ef.empirical_ntk(model, good, structured=structured, progress=False)
            np.testing.assert_allclose(ntk.kernel, ref, rtol=1e-10, atol=1e-10 * abs(ref).max())


def test_nan_on_a_probe_sample_is_named_too() -> None:
    model, x = bad_case(SqrtOutput, at=9)  # 9 is a probe sample
    with pytest.raises(InvalidArgumentError, match=r"output is NaN or infinite at sample 9\b"):
        ef.empirical_ntk(model, x, progress=False)


def test_close_is_robust_to_nan_and_inf() -> None:
    a = torch.tensor([1.0, float("nan"), float("inf"), 2.0], dtype=torch.float64)
    assert close(a, a.clone())
    assert close(a, a + torch.tensor([1e-12, 0, 0, 0], dtype=torch.float64))
    assert not close(a, a + torch.tensor([1e-3, 0, 0, 0], dtype=torch.float64))
    b = a.clone()
    b[1] = 0.0
    assert not close(a, b)  # NaN against a number
    c = a.clone()
    c[2] = -float("inf")
    assert not close(a, c)  # +inf against -inf
    assert not close(a, torch.tensor([float("nan")] * 4, dtype=torch.float64))


def test_one_finite_check_names_the_first_bad_slice() -> None:
    values = torch.zeros(3, 5, 4)
    assert first_nonfinite(values) is None
    values[2, 1, 0] = float("inf")
    values[1, 4, 3] = float("nan")
    assert first_nonfinite(values) == 1
    assert first_nonfinite(values, dim=1) == 1
    assert first_nonfinite(values, dim=2) == 0
    assert first_nonfinite(torch.zeros(3, dtype=torch.long)) is None
    with pytest.raises(InvalidArgumentError, match=r"layer 'enc'.*at sample 11\b"):
        require_finite(values, "cotangent", lambda i: f"sample {10 + i}", layer="enc")


# --- item 2: an output that does not depend on the parameters ---------------------------------


class DetachedOutput(nn.Module):
    """A Linear runs (the structured path finds it) but its output is detached."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).detach() * 2


class InputOnly(nn.Module):
    """The output is a function of the input alone; the parameter never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x[:, :2])


class HalfUsed(nn.Module):
    """One Linear is used, another (with parameters) never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.used(x))


ZERO_PATHS = {
    "default": {},
    "general": {"structured": False},
    "trace": {"reduction": "trace"},
    "mean_pairs": {"reduction": "mean_pairs"},
    "layerwise": {"layerwise": True},
    "tiled": {"max_memory": "20kB"},
}


@pytest.mark.parametrize("cls", [DetachedOutput, InputOnly], ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", list(ZERO_PATHS))
def test_output_without_parameters_gives_the_exact_zero_kernel(
    cls: type[nn.Module], path: str
) -> None:
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(30, 3, dtype=torch.float64)
    ntk = ef.empirical_ntk(model, x, progress=False, **ZERO_PATHS[path])
    size = 30 if path in ("trace", "mean_pairs") else 60
    assert ntk.kernel.shape == (size, size)
    assert not ntk.kernel.any()
    for part in ntk.layer_kernels.values():
        assert part.shape == (size, size) and not part.any()
    cross = ef.empirical_ntk(model, x[:5], x[5:9], progress=False, **ZERO_PATHS[path])
    assert not cross.kernel.any()


def test_detached_output_takes_the_structured_path_and_is_zero() -> None:
    model = DetachedOutput().double()
    ntk = ef.empirical_ntk(model, torch.randn(12, 3, dtype=torch.float64), progress=False)
    assert set(ntk.paths.values()) == {"structured"}
    assert not ntk.kernel.any()


def test_unused_parameter_contributes_zero_and_the_rest_is_exact() -> None:
    torch.manual_seed(1)
    model = HalfUsed().double()
    x = torch.randn(25, 3, dtype=torch.float64)
    ref = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    assert abs(ref).max() > 0.1
    for structured in (True, False):
        ntk = ef.empirical_ntk(model, x, layerwise=True, structured=structured, progress=False)
        np.testing.assert_allclose(ntk.kernel, ref, rtol=1e-12, atol=1e-12 * abs(ref).max())
        assert not ntk.layer_kernels["unused"].any()


# --- item 3: a forward that fails on a sample outside the probe -------------------------------


def out_of_range_tokens(n: int = N, at: int = BAD) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TokenMLP(vocab=7).double().eval()
    tokens = torch.randint(0, 7, (n,))
    tokens[at] = 15
    return model, tokens


@pytest.mark.parametrize("path", ["default", "general", "trace", "tiled", "topk", "dual"])
def test_forward_failing_on_one_sample_names_it(path: str) -> None:
    model, tokens = out_of_range_tokens()
    with pytest.raises(
        InvalidArgumentError, match=rf"forward failed on sample {BAD}\b.*IndexError"
    ):
        PATHS[path](model, tokens)


def test_forward_failing_on_an_x2_sample_names_it() -> None:
    model, tokens = out_of_range_tokens(n=9, at=4)
    with pytest.raises(InvalidArgumentError, match=r"forward failed on x2 sample 4\b"):
        ef.empirical_ntk(model, torch.tensor([0, 1, 2]), tokens, progress=False)


# --- item 4: max_memory -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), np.float64("inf"), float("nan"), -1, 0, "inf"])
def test_max_memory_that_is_not_a_size_is_refused(bad: object) -> None:
    model, x = MLP().double(), torch.randn(4, 4, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="max_memory"):
        ef.empirical_ntk(model, x, max_memory=bad, progress=False)


def test_max_memory_accepts_numpy_integers() -> None:
    assert parse_memory(np.int64(2_000_000)) == 2_000_000
    assert parse_memory(np.uint32(4096)) == 4096
    torch.manual_seed(0)
    model, x = MLP().double(), torch.randn(6, 4, dtype=torch.float64)
    ref = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    ntk = ef.empirical_ntk(model, x, max_memory=np.int64(50_000_000), progress=False)
    np.testing.assert_allclose(ntk.kernel, ref, rtol=1e-12, atol=1e-12 * abs(ref).max())


# --- item 6a: the dual and matrix-free spectra against the brute-force reference --------------


def small_mlp(n: int = 50) -> tuple[nn.Module, torch.Tensor]:
    """P = 17 parameters, C = 2 outputs: the dual Gram is smaller than every reduced kernel."""
    torch.manual_seed(3)
    model = MLP(d_in=2, widths=(3,), d_out=2).double().eval()
    return model, torch.randn(n, 2, dtype=torch.float64)


def assert_top_eigenpairs(
    ref: np.ndarray, values: np.ndarray, vectors: np.ndarray, tol: float, span: int = 4
) -> None:
    """values / vectors are the top eigenpairs of the reference kernel: eigenvalues equal to
    numpy's, orthonormal vectors with a small residual, whose first ``span`` span numpy's top
    ``span``-dimensional eigenspace."""
    w_ref, v_ref = np.linalg.eigh(ref)
    w_ref, v_ref = w_ref[::-1], v_ref[:, ::-1]
    k = len(values)
    top = w_ref[0]
    assert k >= 3
    np.testing.assert_allclose(values, w_ref[:k], rtol=0, atol=tol * top)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), rtol=0, atol=100 * tol)
    residual = ref @ vectors - vectors * values
    assert np.abs(residual).max() <= tol * top
    # Subspace: the top-span eigenspace is well separated here (asserted), so it is unique.
    assert (w_ref[span - 1] - w_ref[span]) > 1e-3 * top
    cosines = np.linalg.svd(v_ref[:, :span].T @ vectors[:, :span], compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, rtol=0, atol=1e3 * tol)


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
@pytest.mark.parametrize("metric", [None, "weights"])
def test_dual_spectrum_matches_the_reference(reduction: str, metric: str | None) -> None:
    model, x = small_mlp()
    w = None if metric is None else np.array([0.3, 1.7])
    ref = reference_kernel(reference_jacobian(model, (x,)), reduction, w)
    spec = ef.entk_spectrum(
        model, x, 4, reduction=reduction, output_metric=w, method="dual", progress=False
    )
    assert spec.method == "dual"
    assert_top_eigenpairs(ref, spec.eigenvalues, spec.eigenvectors, 1e-10)


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_auto_takes_the_dual_path_and_matches_the_reference(reduction: str) -> None:
    model, x = small_mlp()
    ref = reference_kernel(reference_jacobian(model, (x,)), reduction)
    spec = ef.entk_spectrum(model, x, reduction=reduction, progress=False)
    assert spec.method == "dual"
    rank = spec.info["rank"]
    assert rank == np.linalg.matrix_rank(ref, tol=1e-9 * abs(ref).max())
    assert_top_eigenpairs(ref, spec.eigenvalues, spec.eigenvectors, 1e-10)


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
def test_matrix_free_spectrum_matches_the_reference(reduction: str) -> None:
    model, x = small_mlp(30)
    ref = reference_kernel(reference_jacobian(model, (x,)), reduction)
    spec = ef.entk_topk(model, x, 4, reduction=reduction, progress=False)
    assert spec.method == "matrix_free"
    assert_top_eigenpairs(ref, spec.eigenvalues, spec.eigenvectors, 1e-8)
    again = ef.entk_spectrum(model, x, 4, reduction=reduction, method="matrix_free", progress=False)
    assert_top_eigenpairs(ref, again.eigenvalues, again.eigenvectors, 1e-8)


# --- item 6b: the ridge works on a copy ---------------------------------------------------------


def test_spectrum_with_ridge_leaves_the_kernel_alone() -> None:
    torch.manual_seed(0)
    model, x = MLP().double(), torch.randn(7, 4, dtype=torch.float64)
    ntk = ef.empirical_ntk(model, x, progress=False)
    before = ntk.kernel.copy()
    spec = ntk.spectrum(ridge=0.25)
    np.testing.assert_array_equal(ntk.kernel, before)
    shift = 0.25 * np.trace(before) / before.shape[0]
    assert spec.ridge == pytest.approx(shift, rel=1e-14)
    expected = np.linalg.eigvalsh(before)[::-1] + shift
    np.testing.assert_allclose(spec.eigenvalues, expected, rtol=0, atol=1e-12 * expected[0])


# --- item 6c: numpy inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_numpy_inputs_equal_torch_inputs(reduction: str) -> None:
    torch.manual_seed(0)
    cases = [
        (MLP().double(), (torch.randn(6, 4, dtype=torch.float64),)),
        (TokenMLP().double(), (torch.randint(0, 7, (6,)),)),
        (TwoInputs().double(), (torch.randn(6, 3).double(), torch.randn(6, 2).double())),
    ]
    for model, inputs in cases:
        ref = reference_kernel(reference_jacobian(model, inputs), reduction)
        arrays = tuple(t.numpy() for t in inputs)
        as_torch = ef.empirical_ntk(model, inputs, reduction=reduction, progress=False)
        as_numpy = ef.empirical_ntk(model, arrays, reduction=reduction, progress=False)
        np.testing.assert_array_equal(as_numpy.kernel, as_torch.kernel)
        np.testing.assert_allclose(as_numpy.kernel, ref, rtol=1e-12, atol=1e-12 * abs(ref).max())
    single = np.random.default_rng(0).standard_normal((5, 4))  # one array, not a tuple
    model = MLP().double()
    np.testing.assert_array_equal(
        ef.empirical_ntk(model, single, progress=False).kernel,
        ef.empirical_ntk(model, torch.from_numpy(single), progress=False).kernel,
    )


# --- item 6e: float32 accuracy at a realistic size ---------------------------------------------


F32_BOUND = 2e-6
"""max |K_f32 − K_ref| / max |K_ref| allowed at N = 200, about 16 float32 epsilons (measured:
1e-7 to 4e-7 on both paths); a kernel accumulated or stored in a lower precision, or a float32
Gram of a float64-sized sum, exceeds it."""


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
@pytest.mark.parametrize("structured", [True, False])
def test_float32_kernel_accuracy_at_n_200(reduction: str, structured: bool) -> None:
    torch.manual_seed(0)
    model = MLP(d_in=8, widths=(16, 16), d_out=3).eval()
    x = torch.randn(200, 8)
    ref = reference_kernel(reference_jacobian(model.double(), (x.double(),)), reduction)
    model = model.float()
    ntk = ef.empirical_ntk(model, x, reduction=reduction, structured=structured, progress=False)
    assert ntk.kernel.dtype == np.float32
    assert set(ntk.paths.values()) == {"structured" if structured else "general"}
    error = np.abs(ntk.kernel.astype(np.float64) - ref).max() / np.abs(ref).max()
    assert error < F32_BOUND
    assert error > 0  # float32 round-off is there: the comparison is not float64 by accident


# --- spectrum.py wiring (helpers here; the calls belong in spectrum.py) -------------------------


def test_solver_option_checks() -> None:
    assert check_solver_options() == (None, None, None, 0)
    assert check_solver_options(tol=np.float64(1e-6), maxiter=np.int64(5), block=7, seed=3) == (
        1e-6,
        5,
        7,
        3,
    )
    for kwargs, error, name in [
        ({"tol": "a"}, InvalidTypeError, "tol"),
        ({"tol": float("nan")}, InvalidArgumentError, "tol"),
        ({"tol": -1.0}, InvalidArgumentError, "tol"),
        ({"tol": 0.0}, InvalidArgumentError, "tol"),
        ({"maxiter": 0}, InvalidArgumentError, "maxiter"),
        ({"maxiter": 2.5}, InvalidTypeError, "maxiter"),
        ({"block": "a"}, InvalidTypeError, "block"),
        ({"block": 0}, InvalidArgumentError, "block"),
        ({"seed": -1}, InvalidArgumentError, "seed"),
        ({"seed": 2**64}, InvalidArgumentError, "seed"),
        ({"seed": "x"}, InvalidTypeError, "seed"),
    ]:
        with pytest.raises(error, match=name):
            check_solver_options(**kwargs)  # type: ignore[arg-type]


def test_zero_kernel_check() -> None:
    check_kernel_nonzero(1e-300)
    with pytest.raises(InvalidArgumentError, match="identically zero"):
        check_kernel_nonzero(0.0)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"tol": "a"}, InvalidTypeError, "tol"),
        ({"tol": float("nan")}, InvalidArgumentError, "tol"),
        ({"tol": -1.0}, InvalidArgumentError, "tol"),
        ({"seed": -1}, InvalidArgumentError, "seed"),
        ({"seed": "x"}, InvalidTypeError, "seed"),
        ({"block": "a"}, InvalidTypeError, "block"),
        ({"block": 7.5}, InvalidTypeError, "block"),
        ({"maxiter": 0}, InvalidArgumentError, "maxiter"),
        ({"maxiter": "x"}, InvalidTypeError, "maxiter"),
    ],
)
def test_entk_topk_options_are_checked(kwargs: dict, error: type, name: str) -> None:
    model, x = small_mlp(20)
    with pytest.raises(error, match=name):
        ef.entk_topk(model, x, 2, progress=False, **kwargs)


def test_entk_spectrum_seed_is_checked() -> None:
    model, x = small_mlp(20)
    with pytest.raises(InvalidArgumentError, match="seed"):
        ef.entk_spectrum(model, x, 2, method="matrix_free", seed=-1, progress=False)


@pytest.mark.parametrize("method", ["matrix_free", "dual"])
def test_spectrum_of_a_zero_kernel_is_a_clear_error(method: str) -> None:
    model = DetachedOutput().double()
    x = torch.randn(30, 3, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="identically zero"):
        ef.entk_spectrum(model, x, 2, method=method, progress=False)
    if method == "matrix_free":
        with pytest.raises(InvalidArgumentError, match="identically zero"):
            ef.entk_topk(model, x, 2, progress=False)


def test_dense_spectrum_of_a_zero_kernel_is_the_same_clear_error() -> None:
    model = DetachedOutput().double()
    with pytest.raises(InvalidArgumentError, match="identically zero"):
        ef.entk_spectrum(model, torch.randn(5, 3, dtype=torch.float64), method="dense")
