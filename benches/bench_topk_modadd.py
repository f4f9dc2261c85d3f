"""Matrix-free against dense top-k of the mod-add MLP's traced eNTK (issue: spectra at scale).

The paper's grokking MLP (arXiv 2510.00468; ``p = 29``, H = 512, all p² = 841 pairs),
randomly initialised, float32, all parameters, ``reduction="trace"``: the top ``--k`` (120)
eigenpairs by

* dense: ``entk_spectrum(..., method="dense")``, the kernel formed by the structured path and
  diagonalised by the Rust top-k solver;
* matrix-free: ``entk_topk``, the block Krylov solver on factored products (both Linear
  layers are structured: inputs and cotangents gathered once, the traced cotangents
  compressed exactly, a product is a few matrix products); K never formed;
* with ``--kept-graphs``, also ``entk_topk(structured=False)``: products through the kept
  autograd graphs, one backward and its transpose per output (slow: minutes).

Each method runs once to warm up, then ``--repeats`` timed calls, side by side in one process
(median, min and max); the first call of each in a fresh process is timed too. Reports the
eigenvalue agreement with a float64 dense reference, the subspace overlap, the vector
products and the residuals, and writes ``benches/results/bench_topk_modadd_<UTC time>.json``.

Usage: ``python benches/bench_topk_modadd.py [--p 29] [--hidden 512] [--k 120] [--repeats 5]
[--kept-graphs]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _problem(p: int, hidden: int) -> tuple[Any, Any]:
    import torch

    from entk_fast.toys.modadd import ModAddMLP, modadd_dataset

    model = ModAddMLP(p, hidden, generator=torch.Generator().manual_seed(0))
    return model, modadd_dataset(p).inputs


def _run(method: str, model: Any, x: Any, k: int) -> Any:
    from entk_fast import entk_spectrum, entk_topk

    if method == "dense":
        return entk_spectrum(model, x, k, reduction="trace", method="dense", progress=False)
    structured = method == "matrix_free"
    return entk_topk(model, x, k, reduction="trace", structured=structured, progress=False)


def _first_call(method: str, args: argparse.Namespace) -> float:
    """Seconds of one call in a fresh process (imports and model set-up not counted)."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import sys, time; sys.path.insert(0, {here!r}); import bench_topk_modadd as b; "
        f"m, x = b._problem({args.p}, {args.hidden}); t = time.perf_counter(); "
        f"b._run({method!r}, m, x, {args.k}); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=29)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--k", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kept-graphs", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    from entk_fast import entk_spectrum

    model, x = _problem(args.p, args.hidden)
    print(
        f"torch threads {torch.get_num_threads()}; BLAS: "
        + ", ".join(f"{i['internal_api']} {i.get('architecture')}" for i in threadpool_info())
    )
    reference = entk_spectrum(
        model, x, None, reduction="trace", method="dense", dtype=torch.float64, progress=False
    )
    top = reference.eigenvalues[: args.k].astype(np.float64)
    basis = reference.eigenvectors[:, : args.k].astype(np.float64)
    methods = ["dense", "matrix_free"] + (["kept_graphs"] if args.kept_graphs else [])
    report: dict[str, Any] = {"p": args.p, "hidden": args.hidden, "k": args.k, "methods": {}}
    for method in methods:
        spec = _run(method, model, x, args.k)  # warm-up
        times = []
        for _ in range(1 if method == "kept_graphs" else args.repeats):
            start = time.perf_counter()
            spec = _run(method, model, x, args.k)
            times.append(time.perf_counter() - start)
        values = spec.eigenvalues.astype(np.float64)
        overlap = float(np.linalg.norm(basis.T @ spec.eigenvectors.astype(np.float64)) ** 2)
        entry = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "first_call_s": _first_call(method, args),
            "eigenvalue_error": float(np.abs(values - top).max() / top[0]),
            "subspace_overlap": overlap,
            "n_matvec": spec.info.get("n_matvec"),
            "max_residual": spec.info.get("max_residual"),
            "factored_layers": spec.info.get("factored_layers"),
        }
        report["methods"][method] = entry
        print(
            f"{method:12s} median {entry['median_s']:.3f} s (min {entry['min_s']:.3f}, max "
            f"{entry['max_s']:.3f}; first call in a fresh process {entry['first_call_s']:.3f} s)"
            f"  max |Δλ|/λ₁ {entry['eigenvalue_error']:.1e}  overlap {overlap:.3f}/{args.k}"
            + (f"  {entry['n_matvec']} products" if entry["n_matvec"] else "")
        )
    dense = report["methods"]["dense"]["median_s"]
    for method in methods[1:]:
        ratio = report["methods"][method]["median_s"] / dense
        report["methods"][method]["times_dense"] = ratio
        print(f"{method} / dense: ×{ratio:.2f} (target ≤ ×5)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_topk_modadd_{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
