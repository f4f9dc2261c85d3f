"""eigh_topk_operator: matrix-free top-k through a Python callable, against dense references."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import entk_fast as ef
from entk_fast import linalg


def with_spectrum(values: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(values), len(values))))
    k = (q * values) @ q.T
    return (k + k.T) / 2


class Counting:
    """K @ V for a dense K, recording the blocks it was given."""

    def __init__(self, k: np.ndarray):
        self.k = k
        self.columns = 0
        self.widths: set[int] = set()
        self.threads: set[int] = set()

    def __call__(self, v: np.ndarray) -> np.ndarray:
        assert v.shape[0] == self.k.shape[0] and v.dtype == self.k.dtype
        self.columns += v.shape[1]
        self.widths.add(v.shape[1])
        self.threads.add(threading.get_ident())
        return self.k @ v


@pytest.mark.parametrize("k,block", [(5, 4), (14, 4), (14, 16), (3, 1)])
def test_every_copy_of_a_repeated_eigenvalue_is_found(k, block):
    # Multiplicity 12 at the top: more than the block size (4, 1) and than k (5, 3).
    n = 400
    rng = np.random.default_rng(1)
    spectrum = np.concatenate([np.full(12, 20.0), [9.0, 9.0], rng.uniform(0, 5, n - 14)])
    kern = with_spectrum(spectrum, 2)
    op = Counting(kern)
    values, vectors, info = linalg.eigh_topk_operator(op, n, k, block=block)
    want = np.sort(spectrum)[::-1][:k]
    assert values.shape == (k,) and vectors.shape == (n, k)
    assert np.allclose(values, want, rtol=1e-8, atol=0)
    # Subspaces: the returned vectors lie in the right eigenspaces, whole ones when k covers them.
    ref_values, ref_vectors = np.linalg.eigh(kern)
    ref_vectors = ref_vectors[:, ::-1]
    top12 = ref_vectors[:, :12]
    inside = min(k, 12)
    assert linalg.subspace_overlap(vectors[:, :inside], top12) == pytest.approx(inside, abs=1e-6)
    if k >= 14:
        assert linalg.subspace_overlap(vectors, ref_vectors[:, :14]) == pytest.approx(14, abs=1e-6)
    assert np.allclose(vectors.T @ vectors, np.eye(k), atol=1e-10)
    # The info is honest: products counted, residuals as documented, converged.
    assert info["method"] == "krylov" and info["converged"] and info["block"] == block
    assert info["n_matvec"] == op.columns and max(op.widths) == block
    residual = np.linalg.norm(kern @ vectors - vectors * values, axis=0) / abs(values[0])
    assert np.max(residual) <= info["tol"] * 1.01
    assert info["residuals"].shape == (k,) and info["max_residual"] == pytest.approx(
        np.max(residual), rel=0.05, abs=1e-14
    )
    # matmat ran on this thread (with the GIL), not on a pool thread.
    assert op.threads == {threading.get_ident()}


def test_linear_model_ntk_kron_identity_multiplicity_c():
    # A linear model's flattened eNTK is (X Xᵀ + 1) ⊗ I_C: every eigenvalue has multiplicity C.
    rng = np.random.default_rng(3)
    n, c, k = 120, 6, 9
    x = rng.standard_normal((n, 10))
    kern = np.kron(x @ x.T + 1.0, np.eye(c))
    ref = np.linalg.eigvalsh(kern)[::-1]
    values, vectors, info = linalg.eigh_topk_operator(lambda v: kern @ v, n * c, k)
    assert np.allclose(values, ref[:k], rtol=1e-8, atol=0)
    full = np.linalg.eigh(kern)[1][:, ::-1]
    assert linalg.subspace_overlap(vectors[:, :c], full[:, :c]) == pytest.approx(c, abs=1e-6)


def test_cos_sin_pairs_match_the_dense_top_k():
    n, p = 360, 30
    t = np.arange(n) * 2 * np.pi / n
    feats = [np.cos(f * t) for f in range(1, p + 1)] + [np.sin(f * t) for f in range(1, p + 1)]
    weights = np.repeat(np.geomspace(10, 1, p), 1)
    j = np.stack(feats, axis=1) * np.concatenate([weights, weights])
    kern = j @ j.T
    k = 8
    values, vectors, _ = linalg.eigh_topk_operator(lambda v: kern @ v, n, k, block=3)
    dense_values, dense_vectors = linalg.eigh_topk(kern, k)
    assert np.allclose(values, dense_values, rtol=1e-8, atol=0)
    assert linalg.subspace_overlap(vectors, dense_vectors) >= k - 1e-6


def test_float32_operator_and_torch_results():
    torch = pytest.importorskip("torch")
    n = 300
    kern = with_spectrum(np.geomspace(1, 1e-3, n), 4).astype(np.float32)
    kt = torch.from_numpy(kern)
    values, vectors, info = linalg.eigh_topk_operator(
        lambda v: kt @ torch.from_numpy(v), n, 4, dtype=np.float32
    )
    assert values.dtype == np.float32 and vectors.dtype == np.float32
    want = np.linalg.eigvalsh(kern.astype(np.float64))[::-1][:4]
    assert np.allclose(values, want, rtol=0, atol=info["tol"] * want[0])


def test_not_converging_warns_and_returns_the_best_pairs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 600))
    kern = x @ x.T / 600
    with pytest.warns(RuntimeWarning, match="eigh_topk_operator did not converge"):
        values, _, info = linalg.eigh_topk_operator(lambda v: kern @ v, 600, 5, maxiter=1)
    assert not info["converged"] and info["cycles"] == 1 and values.shape == (5,)
    assert info["max_residual"] > info["tol"]


def bad_shape(v):
    return v[:-1]


@pytest.mark.parametrize(
    "matmat,exc,message",
    [
        (bad_shape, ef.InvalidArgumentError, r"matmat: expected K @ V of shape \(50, \d+\)"),
        (
            lambda v: v.astype(np.float32),
            ef.InvalidTypeError,
            "matmat: expected K @ V of dtype float64",
        ),
        (lambda v: v * np.nan, ef.InvalidArgumentError, "matmat: expected only finite values"),
        (
            lambda v: np.triu(np.ones((50, 50))) @ v,
            ef.InvalidArgumentError,
            "matmat: expected a symmetric operator",
        ),
        (lambda v: "x", ef.InvalidTypeError, "matmat: expected K @ V of dtype float64"),
    ],
)
def test_bad_operators_are_named(matmat, exc, message):
    with pytest.raises(exc, match=message):
        linalg.eigh_topk_operator(matmat, 50, 3, block=4)


def test_exception_in_matmat_propagates_unchanged():
    class Boom(Exception):
        pass

    def matmat(v):
        raise Boom("from the operator")

    with pytest.raises(Boom, match="from the operator"):
        linalg.eigh_topk_operator(matmat, 50, 3)


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({"n": 0}, ef.InvalidArgumentError, "n: expected a positive operator order"),
        ({"k": 51}, ef.InvalidArgumentError, r"k: expected an integer in \[1, 50\]"),
        ({"block": 0}, ef.InvalidArgumentError, r"block: expected an integer in \[1, 50\]"),
        ({"tol": 0.0}, ef.InvalidArgumentError, r"tol: expected a number in"),
        ({"maxiter": 0}, ef.InvalidArgumentError, "maxiter: expected a positive number"),
        ({"dtype": np.int64}, ef.InvalidTypeError, "dtype: expected np.float32 or np.float64"),
        ({"matmat": 3}, ef.InvalidTypeError, "matmat: expected a callable"),
        ({"seed": -1}, ef.InvalidArgumentError, r"seed: expected an integer in \[0, 2\*\*64 - 1\]"),
        ({"basis_blocks": 2}, ef.InvalidArgumentError, r"basis_blocks: expected an integer in"),
    ],
)
def test_bad_arguments_are_named(kwargs, exc, message):
    args = {"matmat": lambda v: v, "n": 50, "k": 3} | kwargs
    with pytest.raises(exc, match=message):
        linalg.eigh_topk_operator(args.pop("matmat"), args.pop("n"), args.pop("k"), **args)


def test_basis_blocks_sets_the_first_cycle_width():
    # a flat spectrum converges in no single cycle: every cycle fills its basis of
    # basis_blocks · block vectors (the first from scratch)
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    kmat = (q * np.linspace(1.0, 0.9, 200)) @ q.T
    widths = []
    for blocks in (3, 5):
        with pytest.warns(RuntimeWarning, match="did not converge"):
            _, _, info = linalg.eigh_topk_operator(
                lambda v: kmat @ v, 200, 2, block=4, basis_blocks=blocks, maxiter=1
            )
        widths.append(info["n_matvec"])
    assert widths == [12, 20]
