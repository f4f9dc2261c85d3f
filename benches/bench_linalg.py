"""Side-by-side timings of the Rust linear-algebra core against numpy / scipy.

    python benches/bench_linalg.py [--sizes 512 1024 2048 4096] [--json benches/results/linalg.json]

Measured in one run, same process, same dtype, same thread count for both sides (the Rust pool
and OpenBLAS are both set to ``--threads``). Ratios are ``theirs / ours`` (speed-up, > 1 means
entk-fast is faster) and, for top-k, ``our full eigh / our top-k``. Reports whether
OPENBLAS_CORETYPE was set, since it changes which OpenBLAS kernels numpy runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from threadpoolctl import threadpool_info, threadpool_limits

from entk_fast import linalg


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def eNTK_like_kernel(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Gram matrix of a Jacobian with a decaying spectrum, like a trained network's eNTK."""
    width = max(n // 2, 64)
    j = rng.standard_normal((n, width)) * np.geomspace(1.0, 1e-3, width)
    return j @ j.T


def wishart_kernel(rng: np.random.Generator, n: int) -> np.ndarray:
    """A hard case for Krylov methods: a Gram of pure noise (Marchenko–Pastur spectrum)."""
    x = rng.standard_normal((n, n))
    return x @ x.T


def bench(sizes: list[int], params: int, k: int, repeats: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []

    def record(**row: Any) -> None:
        rows.append(row)
        extra = {key: row[key] for key in row if key not in ("op", "n", "dtype")}
        print(f"{row['op']:>22s} n={row['n']:5d} {row['dtype']:8s} {json.dumps(extra)}", flush=True)

    for n in sizes:
        for dtype in (np.float64, np.float32):
            j = rng.standard_normal((n, params)).astype(dtype)
            ours = best_of(lambda j=j: linalg.gram(j), repeats)
            theirs = best_of(lambda j=j: j @ j.T, repeats)
            record(
                op="gram vs numpy J@J.T",
                n=n,
                dtype=np.dtype(dtype).name,
                params=params,
                ours_s=ours,
                numpy_s=theirs,
                speedup=theirs / ours,
            )
        kern = eNTK_like_kernel(rng, n)
        eig_repeats = 1 if n >= 2048 else repeats
        ours = best_of(lambda m=kern: linalg.eigh(m), eig_repeats)
        np_t = best_of(lambda m=kern: np.linalg.eigh(m), eig_repeats)
        sp_t = best_of(lambda m=kern: scipy.linalg.eigh(m), eig_repeats)
        record(
            op="eigh",
            n=n,
            dtype="float64",
            ours_s=ours,
            numpy_s=np_t,
            scipy_s=sp_t,
            speedup_vs_numpy=np_t / ours,
            speedup_vs_scipy=sp_t / ours,
        )
        if n >= 1024:
            for name, matrix in (("eNTK-like", kern), ("wishart", wishart_kernel(rng, n))):
                full = ours if name == "eNTK-like" else best_of(lambda m=matrix: linalg.eigh(m), 1)
                topk = best_of(lambda m=matrix: linalg.eigh_topk(m, k), eig_repeats)
                eigsh = best_of(
                    lambda m=matrix: scipy.sparse.linalg.eigsh(m, k, which="LA"), eig_repeats
                )
                w_ours = linalg.eigh_topk(matrix, k)[0]
                w_ref = np.linalg.eigvalsh(matrix)[::-1][:k]
                record(
                    op=f"eigh_topk k={k} {name}",
                    n=n,
                    dtype="float64",
                    topk_s=topk,
                    full_eigh_s=full,
                    eigsh_s=eigsh,
                    speedup_vs_full=full / topk,
                    speedup_vs_eigsh=eigsh / topk,
                    max_rel_err=float(np.max(np.abs(w_ours - w_ref)) / w_ref[0]),
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--params", type=int, default=2048, help="columns P of J for gram")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benches/results/linalg.json"))
    args = parser.parse_args()

    linalg.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        blas = [
            {
                key: info.get(key)
                for key in ("internal_api", "version", "architecture", "num_threads")
            }
            for info in threadpool_info()
        ]
        env = {
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
        print("environment:", json.dumps(env))
        if env["OPENBLAS_CORETYPE"]:
            print(f"note: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} was set for numpy/scipy")
        rows = bench(args.sizes, args.params, args.k, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({"environment": env, "results": rows}, indent=2))
    tmp.replace(args.json)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
