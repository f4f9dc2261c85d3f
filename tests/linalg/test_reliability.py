"""entk_fast.linalg under hostile conditions: memory limits, subnormal scales, fork, threads
sharing arrays, Ctrl-C, the GIL, and a fuzz over every entry point. Torch-free."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import entk_fast as ef
from entk_fast import linalg


# ---------------------------------------------------------------- memory
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics")
def test_allocation_failure_is_a_memory_error_not_a_panic():
    # The reproducer: a broadcast K takes no memory, its eigenvectors 1.5 GB, the
    # solver's working copy another 1.5 GB: over a 3 GB address-space limit.
    code = textwrap.dedent(
        """
        import resource, numpy as np
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))
        from entk_fast import linalg
        k = np.broadcast_to(np.ones((1, 1)), (14000, 14000))
        try:
            linalg.eigh(k)
        except MemoryError as e:
            print("MemoryError:", e)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "PanicException" not in run.stderr and "panicked" not in run.stderr
    assert "MemoryError: eigh: working copy of K: could not allocate 1568.0 MB" in run.stdout


def test_result_too_large_for_memory_is_a_memory_error():
    j = np.broadcast_to(np.ones((1, 1)), (10**7, 1))  # its Gram would need 800 TB
    with pytest.raises(MemoryError):
        linalg.gram(j)


# ---------------------------------------------------------------- subnormal and tiny scales
@pytest.mark.parametrize(
    "dtype,scale",
    [(np.float64, 1e-310), (np.float64, 1e-305), (np.float32, 1e-40), (np.float32, 1e-30)],
)
def test_subnormal_scale_is_solved(dtype, scale):
    s = dtype(scale)
    values, vectors = linalg.eigh(np.eye(4, dtype=dtype) * s)
    assert values.dtype == dtype
    eps = float(np.finfo(dtype).eps)
    assert np.allclose(values, s, rtol=8 * eps, atol=0)
    assert np.allclose(np.abs(vectors.T @ vectors), np.eye(4))
    d = np.diag(np.array([4, 3, 2, 1], dtype) * s)
    values, vectors, info = linalg.eigh_topk(d, 2, return_info=True)
    assert np.allclose(values, [4 * s, 3 * s], rtol=8 * eps, atol=0)
    assert np.allclose(np.abs(vectors[:2]), np.eye(2)) and info["max_residual"] < 1e-6
    a = np.array([[1.0], [0.0], [0.0]], dtype) * s
    b = np.array([[1.0], [1.0], [0.0]], dtype) * s
    angle = linalg.principal_angles(a, b)
    assert angle == pytest.approx([math.pi / 4], abs=1e-12 if dtype == np.float64 else 1e-6)
    assert linalg.subspace_overlap(a, b) == pytest.approx(0.5, abs=1e-6)


def test_subnormal_scale_on_the_krylov_path():
    rng = np.random.default_rng(5)
    j = rng.standard_normal((700, 30))
    k = j @ j.T
    want = np.linalg.eigvalsh(k)[::-1][:4]
    values, _, info = linalg.eigh_topk(k * 1e-310, 4, return_info=True)
    assert info["method"] == "krylov"
    # Scaled back into the subnormal range, the values keep what precision it has left.
    assert np.allclose(values / 1e-310, want, rtol=1e-6)


# ---------------------------------------------------------------- fork
fork_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _child_threads(set_first: int | None) -> int:
    if set_first is not None:
        linalg.set_num_threads(set_first)
    linalg.gram(np.ones((50, 5)))
    return linalg.get_num_threads()


@fork_only
@pytest.mark.filterwarnings("ignore:This process.*is multi-threaded:DeprecationWarning")
def test_forked_child_keeps_the_parents_thread_count_and_its_own_first_setting():
    import multiprocessing

    before = linalg.get_num_threads()
    ctx = multiprocessing.get_context("fork")
    try:
        linalg.set_num_threads(1)
        linalg.gram(np.ones((50, 5)))  # the parent's pool exists before the fork
        with ctx.Pool(1) as pool:
            assert pool.apply(_child_threads, (None,)) == 1
        linalg.set_num_threads(2)
        linalg.gram(np.ones((50, 5)))
        with ctx.Pool(1) as pool:
            # The child's first set_num_threads is kept (it used to be discarded).
            assert pool.apply(_child_threads, (1,)) == 1
            assert pool.apply(_child_threads, (3,)) == 3
    finally:
        linalg.set_num_threads(before)


# ---------------------------------------------------------------- threads sharing an array
def test_array_in_use_by_another_thread_gives_a_clear_error():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1200, 1200))
    k = x + x.T
    errors: list[BaseException] = []
    done = threading.Event()

    def read_k() -> None:
        try:
            for _ in range(3):
                linalg.eigh(k)  # borrows K read-only for ~0.5 s each, GIL released
        finally:
            done.set()

    thread = threading.Thread(target=read_k)
    thread.start()
    refused = 0
    try:
        while not done.is_set():
            try:
                linalg.gram_accumulate(k, np.zeros((1200, 1)))  # adds zero: harmless
            except ef.InvalidArgumentError as e:
                assert "K: the array is in use by another entk_fast call" in str(e)
                refused += 1
            except BaseException as e:  # any other type is the bug this test guards
                errors.append(e)
            time.sleep(0.01)
    finally:
        thread.join()
    assert not errors, errors
    assert refused > 0


# ---------------------------------------------------------------- Ctrl-C
class _Interrupt(Exception):
    pass


def test_long_topk_stops_at_ctrl_c():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled on the main thread")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1500, 1500))
    k = x @ x.T  # a Marchenko–Pastur spectrum: ~2 s for the top 40 on 2 cores

    def handler(signum, frame):
        raise _Interrupt

    previous = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        start = time.perf_counter()
        timer.start()
        with pytest.raises(_Interrupt):
            linalg.eigh_topk(k, 40)
        elapsed = time.perf_counter() - start
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert elapsed < 1.0, f"took {elapsed:.2f} s to react"
    # The call left nothing broken behind: the same solve still works.
    assert linalg.eigh_topk(k[:300, :300], 3)[0].shape == (3,)


# ---------------------------------------------------------------- the GIL
def _main_thread_starvation(call) -> tuple[float, float]:
    """Runs ``call`` on a worker thread; returns (its duration, the longest stretch of it in
    which this thread could not run Python code)."""
    stamps: list[float] = []
    span: list[float] = []
    done = threading.Event()

    def work() -> None:
        start = time.perf_counter()
        call()
        span.extend([start, time.perf_counter()])
        done.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    thread = threading.Thread(target=work)
    try:
        thread.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
    finally:
        thread.join()
        sys.setswitchinterval(switch)
    start, end = span
    inside = [start] + [t for t in stamps if start <= t <= end] + [end]
    return end - start, float(np.max(np.diff(inside)))


def test_gil_is_released_during_long_calls():
    # The measurement can tell: list.sort holds the GIL for its whole run.
    big = list(np.random.default_rng(0).random(1_500_000))
    duration, gap = _main_thread_starvation(lambda: sorted(big))
    assert gap > 0.8 * duration, (duration, gap)

    rng = np.random.default_rng(32)
    x = rng.standard_normal((1000, 1000))
    k = x + x.T
    j = rng.standard_normal((1500, 1500))
    for call in (
        lambda: linalg.eigh(k),
        lambda: linalg.gram(j),
        lambda: linalg.eigh_topk(k @ k, 30),
    ):
        duration, gap = _main_thread_starvation(call)
        assert duration > 0.05
        # With the GIL held the main thread would stall for the whole call.
        assert gap < 0.25 * duration, (duration, gap)


# ---------------------------------------------------------------- fuzz
VALUE_KINDS = ["normal", "subnormal", "huge", "nan", "inf", "zero", "mixed"]


def _values(rng: np.random.Generator, shape, dtype, kind: str) -> np.ndarray:
    finfo = np.finfo(dtype)
    x = rng.standard_normal(shape)
    if kind == "subnormal":
        x = x * float(finfo.smallest_subnormal) * 64
    elif kind == "huge":
        x = x * float(finfo.max) / 8
    elif kind == "zero":
        x = np.zeros(shape)
    elif kind == "mixed":
        x = x * np.exp(rng.uniform(-40, 40, shape))
    a = x.astype(dtype)
    if kind in ("nan", "inf") and a.size:
        a.flat[rng.integers(a.size)] = np.nan if kind == "nan" else -np.inf
    return a


def _layout(a: np.ndarray, how: str) -> np.ndarray:
    if how == "F":
        return np.asfortranarray(a)
    if how == "T":
        return np.ascontiguousarray(a.T).T  # same values, transposed memory
    if how == "strided":
        big = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
        big[::2, ::3] = a
        return big[::2, ::3]
    if how == "reversed":
        return np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1]
    return a


def _ref_close(got: np.ndarray, want: np.ndarray, dtype, factor: float) -> bool:
    if not np.all(np.isfinite(want)):
        return False  # the true answer overflows: the call should have raised
    scale = max(float(np.max(np.abs(want), initial=0.0)), float(np.finfo(dtype).tiny))
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    return err <= factor * float(np.finfo(dtype).eps) * scale + 1e3 * float(
        np.finfo(dtype).smallest_subnormal
    )


@settings(max_examples=150, deadline=None)
@given(
    op=st.sampled_from(
        [
            "gram",
            "gram_cross",
            "gram_accumulate",
            "hadamard_gram_accumulate",
            "hadamard_gram_cross",
            "eigh",
            "eigh_topk",
            "principal_angles",
            "subspace_overlap",
        ]
    ),
    rows=st.integers(0, 9),
    cols=st.integers(0, 7),
    dtype=st.sampled_from(
        [np.float64, np.float32, np.float64, np.float32, np.int32, np.complex128]
    ),
    kind=st.sampled_from(VALUE_KINDS),
    layout=st.sampled_from(["C", "F", "T", "strided", "reversed"]),
    symmetric=st.booleans(),
    k=st.integers(-1, 10),
    block=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_fuzz_entry_points_answer_right_or_raise_a_package_error(
    op, rows, cols, dtype, kind, layout, symmetric, k, block, seed
):
    rng = np.random.default_rng(seed)
    real = dtype in (np.float64, np.float32)
    with np.errstate(all="ignore"):  # references of huge inputs may overflow: then we must raise
        _fuzz_one(rng, real, op, rows, cols, dtype, kind, layout, symmetric, k, block)


def _fuzz_one(rng, real, op, rows, cols, dtype, kind, layout, symmetric, k, block):

    def arr(r, c):
        if not real:
            return (rng.standard_normal((r, c)) * 3).astype(dtype)
        return _layout(_values(rng, (r, c), dtype, kind), layout)

    def sym(n):
        a = arr(n, n)
        if symmetric and real:
            a = _layout(((a.astype(np.float64) + a.astype(np.float64).T) / 2).astype(dtype), layout)
        return a

    try:
        if op == "gram":
            j = arr(rows, cols)
            got = linalg.gram(j)
            want = j.astype(np.float64) @ j.astype(np.float64).T
            assert got.dtype == dtype and np.array_equal(got, got.T)
            assert _ref_close(got, want, dtype, 4 * (cols + 1))
        elif op == "gram_cross":
            a, b = arr(rows, cols), arr(max(rows - 2, 0), cols)
            got = linalg.gram_cross(a, b)
            want = a.astype(np.float64) @ b.astype(np.float64).T
            assert _ref_close(got, want, dtype, 4 * (cols + 1))
        elif op == "gram_accumulate":
            kk, j = sym(rows), arr(rows, cols)
            before = kk.copy()
            try:
                linalg.gram_accumulate(kk, j, alpha=0.5)
            except ef.EntkError:
                assert np.array_equal(kk, before, equal_nan=True)  # never half-updated
                raise
            want = before.astype(np.float64) + 0.5 * j.astype(np.float64) @ j.astype(np.float64).T
            assert _ref_close(kk, want, dtype, 8 * (cols + 2))
        elif op in ("hadamard_gram_accumulate", "hadamard_gram_cross"):
            n = max(block, 1) * rows
            g, s = arr(n, cols), sym(rows)
            if op == "hadamard_gram_cross":
                got = linalg.hadamard_gram_cross(g, g, s, block=block)
            else:
                got = np.zeros((n, n), dtype)
                linalg.hadamard_gram_accumulate(got, g, s, block=block)
            g64 = g.astype(np.float64)
            want = np.kron(s.astype(np.float64), np.ones((block, block))) * (g64 @ g64.T)
            assert _ref_close(got, want, dtype, 8 * (cols + 2))
        elif op == "eigh":
            kk = sym(rows)
            values, vectors = linalg.eigh(kk)
            ref = np.linalg.eigvalsh((kk.astype(np.float64) + kk.astype(np.float64).T) / 2)[::-1]
            assert np.all(np.diff(values) <= 0)
            assert _ref_close(values, ref, dtype, 50 * (rows + 1))
        elif op == "eigh_topk":
            kk = sym(rows)
            values, vectors, info = linalg.eigh_topk(kk, k, return_info=True)
            ref = np.linalg.eigvalsh((kk.astype(np.float64) + kk.astype(np.float64).T) / 2)[::-1]
            assert values.shape == (k,) and vectors.shape == (rows, k)
            assert _ref_close(values, ref[:k], dtype, 50 * (rows + 1))
        else:
            a, b = arr(rows, cols), arr(rows, max(cols - 1, 1))
            if op == "principal_angles":
                got = linalg.principal_angles(a, b)
                assert np.all((got >= 0) & (got <= np.pi / 2 + 1e-12))
                # Generic spans that need not intersect: scipy is accurate there (for forced
                # intersections it returns ~1e-8 for angles that are 0).
                if kind == "normal" and real and rows >= a.shape[1] + b.shape[1]:
                    want = np.sort(
                        scipy.linalg.subspace_angles(a.astype(np.float64), b.astype(np.float64))
                    )
                    assert np.allclose(got, want, atol=1e-9 if dtype == np.float64 else 1e-3)
            else:
                got = linalg.subspace_overlap(a, b)
                assert 0 <= got <= min(a.shape[1], b.shape[1])
    except (ef.EntkError, MemoryError):
        pass  # a package error (its message names the argument; other tests check that)
