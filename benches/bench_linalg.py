"""Side-by-side timings of the Rust linear-algebra core against numpy / scipy at their best.

    python benches/bench_linalg.py [--sizes 512 1024 2048 4096] [--json benches/results/linalg.json]

Measured in one run, same process, same dtype, same thread count for both sides (the Rust pool
and OpenBLAS are both set to ``--threads``). numpy/scipy run with their own best kernel:
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment (the script re-executes
itself without them, since OpenBLAS reads them when it loads) and the kernel threadpoolctl
reports is printed. Every timing is of warm calls (a pause, so the previous side's threads
have stopped spinning, and one warm-up first), reported as the median
with min–max over ``--repeats``; ratios are ``theirs / ours`` (> 1: entk-fast is faster) on
medians. First-call times (import and pool start-up included) are measured in fresh processes.

Baselines: gram — numpy ``J @ J.T`` and scipy BLAS ``dsyrk``/``ssyrk`` (one triangle, like
ours); eigh — numpy and scipy ``eigh``; top-k — scipy ``eigh(subset_by_index=...)``, ARPACK
``eigsh`` and ``lobpcg``, on an eNTK-like (decaying) and a Marchenko–Pastur (noise) spectrum.
"""

from __future__ import annotations

import os
import sys

_CLEARED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(name in os.environ for name in _CLEARED) and __name__ == "__main__":
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    env["ENTK_BENCH_CLEARED"] = ",".join(
        f"{n}={os.environ[n]}" for n in _CLEARED if n in os.environ
    )
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import scipy.linalg.blas  # noqa: E402
import scipy.sparse.linalg  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from entk_fast import linalg  # noqa: E402

#: Seconds to let the other side's thread pool fall idle before a timing starts: OpenBLAS
#: threads spin for a while after a call and, on 2 cores, halved the next side's speed.
SETTLE_S = 0.5


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Median, min and max of ``repeats`` warm calls (after a pause and one warm-up call)."""
    time.sleep(SETTLE_S)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def fmt(t: dict[str, float]) -> str:
    return f"{t['median'] * 1e3:8.1f} ms [{t['min'] * 1e3:.1f}–{t['max'] * 1e3:.1f}]"


def eNTK_like_kernel(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Gram matrix of a Jacobian with a decaying spectrum, like a trained network's eNTK."""
    width = max(n // 2, 64)
    j = rng.standard_normal((n, width)) * np.geomspace(1.0, 1e-3, width)
    return j @ j.T


def wishart_kernel(rng: np.random.Generator, n: int) -> np.ndarray:
    """A hard case for Krylov methods: a Gram of pure noise (Marchenko–Pastur spectrum)."""
    x = rng.standard_normal((n, n))
    return x @ x.T


def syrk(j: np.ndarray) -> np.ndarray:
    f = scipy.linalg.blas.dsyrk if j.dtype == np.float64 else scipy.linalg.blas.ssyrk
    return f(1.0, j)  # upper triangle of J Jᵀ


def lobpcg_topk(m: np.ndarray, k: int) -> np.ndarray:
    """scipy's LOBPCG, capped at 200 iterations (it stalls on the noise spectrum)."""
    x = np.random.default_rng(0).standard_normal((m.shape[0], k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not reaching the requested tolerance"
        values = scipy.sparse.linalg.lobpcg(m, x, largest=True, tol=1e-9, maxiter=200)[0]
    return np.sort(values)[::-1]


def bench(sizes: list[int], params: int, k: int, repeats: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []

    def record(
        op: str, n: int, dtype: str, times: dict[str, dict[str, float]], **extra: Any
    ) -> None:
        ours = times["ours"]["median"]
        ratios = {name: t["median"] / ours for name, t in times.items() if name != "ours"}
        rows.append({"op": op, "n": n, "dtype": dtype, "times": times, "speedup": ratios, **extra})
        parts = "  ".join(f"{name} {fmt(t)}" for name, t in times.items())
        ratio = "  ".join(f"×{r:.2f} vs {name}" for name, r in ratios.items())
        print(f"{op:>26s} n={n:5d} {dtype:7s} {parts}\n{'':>34s}{ratio} {extra or ''}", flush=True)

    for n in sizes:
        big = n >= 2048
        reps = max(3, repeats // 2) if big else repeats
        for dtype in (np.float64, np.float32):
            j = rng.standard_normal((n, params)).astype(dtype)
            record(
                f"gram (P={params})",
                n,
                np.dtype(dtype).name,
                {
                    "ours": timed(lambda j=j: linalg.gram(j), reps),
                    "numpy J@J.T": timed(lambda j=j: j @ j.T, reps),
                    "scipy syrk": timed(lambda j=j: syrk(j), reps),
                },
            )
        kern = eNTK_like_kernel(rng, n)
        record(
            "eigh",
            n,
            "float64",
            {
                "ours": timed(lambda m=kern: linalg.eigh(m), reps),
                "numpy": timed(lambda m=kern: np.linalg.eigh(m), reps),
                "scipy": timed(lambda m=kern: scipy.linalg.eigh(m), reps),
            },
        )
        if n < 1024:
            continue
        for name, matrix in (("eNTK-like", kern), ("noise", wishart_kernel(rng, n))):
            ref = np.linalg.eigvalsh(matrix)[::-1][:k]
            values, _, info = linalg.eigh_topk(matrix, k, return_info=True)
            sub = (n - k, n - 1)
            times = {
                "ours": timed(lambda m=matrix: linalg.eigh_topk(m, k), reps),
                "scipy subset": timed(
                    lambda m=matrix, sub=sub: scipy.linalg.eigh(m, subset_by_index=sub), reps
                ),
                "eigsh": timed(lambda m=matrix: scipy.sparse.linalg.eigsh(m, k, which="LA"), reps),
                "lobpcg": timed(lambda m=matrix: lobpcg_topk(m, k), 1),
                "our eigh": timed(lambda m=matrix: linalg.eigh(m), max(1, reps // 2)),
            }
            lob = lobpcg_topk(matrix, k)
            record(
                f"top-{k} {name}",
                n,
                "float64",
                times,
                method=info["method"],
                cycles=info["cycles"],
                n_matvec=info["n_matvec"],
                max_rel_err=float(np.max(np.abs(values - ref)) / ref[0]),
                lobpcg_max_rel_err=float(np.max(np.abs(lob - ref)) / ref[0]),
            )
    return rows


FIRST_CALL = """
import time, sys
t0 = time.perf_counter()
import numpy as np
from entk_fast import linalg
t1 = time.perf_counter()
rng = np.random.default_rng(0)
op = sys.argv[1]
if op == "gram":
    x = rng.standard_normal((1024, 2048))
    f = lambda: linalg.gram(x)
else:
    j = rng.standard_normal((1024, 512))
    x = j @ j.T
    f = (lambda: linalg.eigh(x)) if op == "eigh" else (lambda: linalg.eigh_topk(x, 32))
t2 = time.perf_counter(); f(); t3 = time.perf_counter(); f(); t4 = time.perf_counter()
print(t1 - t0, t3 - t2, t4 - t3)
"""


def first_calls(threads: int) -> list[dict[str, Any]]:
    """Import time, first and second call of each operation (n = 1024) in a fresh process."""
    out = []
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    for op in ("gram", "eigh", "eigh_topk"):
        samples = []
        for _ in range(3):
            run = subprocess.run(
                [sys.executable, "-c", FIRST_CALL, op],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            samples.append([float(x) for x in run.stdout.split()])
        imp, first, second = (statistics.median(s[i] for s in samples) for i in range(3))
        out.append(
            {"op": op, "n": 1024, "import_s": imp, "first_call_s": first, "second_call_s": second}
        )
        print(
            f"{'first call ' + op:>26s} n= 1024          import {imp * 1e3:.0f} ms, first call "
            f"{first * 1e3:.1f} ms, second {second * 1e3:.1f} ms (median of 3 fresh processes)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--params", type=int, default=2048, help="columns P of J for gram")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("benches/results/linalg.json"))
    args = parser.parse_args()

    linalg.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        blas = [
            {
                key: info.get(key)
                for key in ("internal_api", "version", "architecture", "num_threads", "filepath")
            }
            for info in threadpool_info()
        ]
        env = {
            "cleared_for_numpy": os.environ.get("ENTK_BENCH_CLEARED", ""),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
            "threads": args.threads,
            "blas": blas,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        }
        for lib in blas:
            print(
                f"BLAS: {lib['internal_api']} {lib['version']} kernel={lib['architecture']} "
                f"threads={lib['num_threads']}"
            )
        if env["cleared_for_numpy"]:
            print(f"note: removed {env['cleared_for_numpy']} so numpy/scipy use their own kernel")
        rows = bench(args.sizes, args.params, args.k, args.repeats)
    firsts = first_calls(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"environment": env, "results": rows, "first_calls": firsts}, indent=2)
    )
    tmp.replace(args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
