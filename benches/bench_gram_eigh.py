"""The Rust Gram and full eigh against numpy / scipy (OpenBLAS) at the sizes users time them.

    python benches/bench_gram_eigh.py [--repeats 7] [--eigh 1024 2048 4096] [--skip-gram]

* Gram J Jᵀ: ``entk_fast.linalg.gram`` and ``gram_accumulate`` (K += J Jᵀ into a K that
  keeps growing from call to call) against numpy's ``J @ J.T`` (OpenBLAS's syrk-backed
  product), and ``gram_accumulate`` also against numpy's ``K += J @ J.T``, on J of
  2000 × 4000, 512 × 4096 and 841 × 7168 (the paper's mod-add trace kernel's widest Gram),
  float64 and float32.
* Full eigh (float64 and float32) of a dense symmetric n × n matrix: ``entk_fast.linalg.eigh``
  against ``numpy.linalg.eigh`` and ``scipy.linalg.eigh(driver="evd")`` (LAPACK's dsyevd /
  ssyevd).

One process, both sides on every core; OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed
(the script re-executes itself without them) and the BLAS kernel threadpoolctl reports is
printed. Warm calls (two warm-ups), median and min–max over ``--repeats`` (at most 3 for
n ≥ 4096); ratios are theirs / ours on medians (> 1: entk-fast is faster). Writes
``benches/results/bench_gram_eigh_<UTC time>.json``.
"""

from __future__ import annotations

import os
import sys

_CLEARED = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(name in os.environ for name in _CLEARED) and __name__ == "__main__":
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GRAM_SHAPES = ((2000, 4000), (512, 4096), (841, 7168))


def timed(f: Callable[[], object], repeats: int) -> dict[str, float]:
    f()
    f()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        runs.append(time.perf_counter() - start)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def show(t: dict[str, float]) -> str:
    return f"{t['median'] * 1e3:9.1f} ms ({t['min'] * 1e3:.1f}–{t['max'] * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eigh", type=int, nargs="*", default=[1024, 2048, 4096])
    parser.add_argument("--skip-gram", action="store_true", help="time eigh only")
    args = parser.parse_args()
    import numpy as np
    import scipy.linalg
    from threadpoolctl import threadpool_info

    from entk_fast import linalg

    blas = [
        (i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
        for i in threadpool_info()
    ]
    print(f"BLAS (threadpoolctl): {blas}; entk-fast threads {linalg.get_num_threads()}")
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for n, p in () if args.skip_gram else GRAM_SHAPES:
        for dtype in (np.float64, np.float32):
            j = rng.standard_normal((n, p)).astype(dtype)
            # K keeps growing by J Jᵀ from call to call (no zeroing inside the timed call:
            # a memset of K is not part of either product)
            k = np.zeros((n, n), dtype=dtype)
            k_numpy = np.zeros((n, n), dtype=dtype)

            def numpy_accumulate(j: Any = j, k: Any = k_numpy) -> None:
                k += j @ j.T

            ours = timed(lambda j=j: linalg.gram(j), args.repeats)
            acc = timed(lambda j=j, k=k: linalg.gram_accumulate(k, j), args.repeats)
            numpy = timed(lambda j=j: j @ j.T, args.repeats)
            numpy_acc = timed(numpy_accumulate, args.repeats)
            row = {
                "op": "gram",
                "shape": [n, p],
                "dtype": np.dtype(dtype).name,
                "ours": ours,
                "ours_accumulate": acc,
                "numpy": numpy,
                "numpy_accumulate": numpy_acc,
                "ratio": numpy["median"] / ours["median"],
                "ratio_accumulate": numpy["median"] / acc["median"],
                "ratio_accumulate_vs_numpy_accumulate": numpy_acc["median"] / acc["median"],
            }
            rows.append(row)
            print(
                f"gram {n}×{p} {row['dtype']:7}: ours {show(ours)}  accumulate {show(acc)}  "
                f"numpy {show(numpy)}  K += J Jᵀ {show(numpy_acc)}  ×{row['ratio']:.2f} / "
                f"×{row['ratio_accumulate']:.2f} (accumulate against K += J @ J.T: "
                f"×{row['ratio_accumulate_vs_numpy_accumulate']:.2f})"
            )
    for n in args.eigh:
        a = rng.standard_normal((n, n))
        for dtype in (np.float64, np.float32):
            m = (a @ a.T / n).astype(dtype)
            reps = args.repeats if n < 4096 else min(3, args.repeats)
            ours = timed(lambda m=m: linalg.eigh(m), reps)
            numpy = timed(lambda m=m: np.linalg.eigh(m), reps)
            evd = timed(lambda m=m: scipy.linalg.eigh(m, driver="evd"), reps)
            row = {
                "op": "eigh",
                "n": n,
                "dtype": np.dtype(dtype).name,
                "ours": ours,
                "numpy": numpy,
                "scipy_evd": evd,
                "ratio_numpy": numpy["median"] / ours["median"],
                "ratio_scipy_evd": evd["median"] / ours["median"],
            }
            rows.append(row)
            print(
                f"eigh {n} {row['dtype']:7}: ours {show(ours)}  numpy {show(numpy)}  "
                f"scipy evd {show(evd)}  ×{row['ratio_numpy']:.2f} / ×{row['ratio_scipy_evd']:.2f}"
            )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_gram_eigh_{stamp}.json"
    path.write_text(json.dumps({"blas": blas, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
