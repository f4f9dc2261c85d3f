"""The paper's language-model eNTK (arXiv 2510.00468 v4) on the packaged MiniLM, side by side
with the author's method on the same inputs.

Case: all-MiniLM-L6-v2, the weight of ``encoder.layer.4.output.dense`` (384 × 1536), the last
hidden state read at a word of each context (``positions=``), T = 64 tokens (padded batch with
its 2-D attention mask), flattened kernel, top-k at relative residual ``--tol``.

* ours: ``entk_fast.entk_topk`` (cached-layer products: the model runs once, the layer's
  inputs are cached and a product is a backward through the suffix after the layer and its
  transpose; the Rust Krylov solver).
* the author's method (the mi-ntk Gemma notebook's recipe): ``torch.func.vjp`` then
  ``torch.func.jvp`` of the whole model per product, nothing cached, under scipy's ARPACK
  ``eigsh`` (one vector a product) at the same tolerance; each context is its own batch of one
  (``vmap`` cannot run a Hugging Face model with a 2-D mask, so the author's method runs the
  batch with the mask directly, as here).

Both sides run in this process one after the other, torch on every core; scipy's BLAS kernel
(threadpoolctl) is printed. Each side's first call is also timed in a fresh process
(``--fresh``). Reports wall time, vector products, max relative residual ‖K v − λ v‖ / λ₁
(measured the same way for both, on our operator), eigenvalue agreement and peak RSS, and writes
``benches/results/bench_lm_<UTC time>.json``.

Usage: ``python benches/bench_lm.py [--contexts 32] [--k 25] [--tol 1e-3] [--skip-author]``.
``--contexts 1024`` is the paper's size (ours only: the author's method would take hours here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(n: int, length: int) -> tuple[Any, Any, Any]:
    """n padded contexts of the packaged MiniLM's tokenizer from Python's docs, a word each."""
    import torch

    from entk_fast.paper.language import default_text, load_language_model

    lm = load_language_model(None)
    words = default_text().split()
    texts = [" ".join(words[i * 50 : i * 50 + 40 + (i % 7) * 4]) for i in range(n)]
    enc = lm.tokenizer(
        texts, truncation=True, max_length=length, padding="max_length", return_tensors="pt"
    )
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    real = enc["attention_mask"].sum(dim=1)
    positions = torch.minimum(real - 2, torch.full_like(real, 9))
    return lm.model, inputs, positions


def ours(model: Any, inputs: Any, positions: Any, k: int, tol: float) -> dict[str, Any]:
    from entk_fast import entk_topk

    start = time.perf_counter()
    spec = entk_topk(
        model,
        inputs,
        k,
        params="encoder.layer.4.output.dense.weight",
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        tol=tol,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "n_matvec": spec.info["n_matvec"],
        "max_residual": spec.info["max_residual"],
        "eigenvalues": [float(v) for v in spec.eigenvalues],
        "products": spec.info["products"],
        "pruned_block": spec.info["pruned_block"],
        "vectors": spec.eigenvectors,
    }


def author(model: Any, inputs: Any, positions: Any, k: int, tol: float) -> dict[str, Any]:
    """vjp then jvp of the whole model per product (nothing cached), under ARPACK."""
    import numpy as np
    import scipy.sparse.linalg as sla
    import torch
    from torch.func import functional_call, jvp, vjp

    name = "encoder.layer.4.output.dense.weight"
    params = {n: p.detach() for n, p in model.named_parameters()}
    weight = params[name]
    n = len(positions)
    rows = torch.arange(n)

    def f(w: Any) -> Any:
        out = functional_call(model, {**params, name: w}, (), inputs).last_hidden_state
        return out[rows, positions]  # (N, d)

    count = [0]

    def matvec(v: Any) -> Any:
        count[0] += 1
        cot = torch.as_tensor(np.asarray(v, dtype=np.float32).reshape(n, -1))
        _, pull = vjp(f, weight)
        (g,) = pull(cot)
        _, pushed = jvp(f, (weight,), (g,))
        return pushed.reshape(-1).double().numpy()

    size = n * model.config.hidden_size
    op = sla.LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = time.perf_counter()
    values, vectors = sla.eigsh(op, k=k, tol=tol)
    seconds = time.perf_counter() - start
    order = np.argsort(values)[::-1]
    return {
        "seconds": seconds,
        "n_matvec": count[0],
        "eigenvalues": [float(v) for v in values[order]],
        "vectors": vectors[:, order],
        "matvec": matvec,
    }


def _residual(matvec: Any, values: Any, vectors: Any) -> float:
    import numpy as np

    worst = 0.0
    for j, value in enumerate(values):
        r = matvec(vectors[:, j]) - value * vectors[:, j]
        worst = max(worst, float(np.linalg.norm(r)) / abs(values[0]))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--skip-author", action="store_true")
    args = parser.parse_args()
    # the scipy side's BLAS at full speed (this machine may set these for old OpenBLAS builds)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    blas = [(i.get("internal_api"), i.get("architecture")) for i in threadpool_info()]
    print(f"BLAS (threadpoolctl): {blas}; torch threads {torch.get_num_threads()}")
    model, inputs, positions = _inputs(args.contexts, args.length)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {
        "contexts": args.contexts,
        "length": args.length,
        "k": args.k,
        "tol": args.tol,
        "blas": blas,
    }
    mine = ours(model, inputs, positions, args.k, args.tol)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    print(
        f"ours: {mine['seconds']:.1f} s, {mine['n_matvec']} products, max residual "
        f"{mine['max_residual']:.1e}, peak RSS growth {peak:.2f} GB ({mine['products']}, "
        f"last block at the read positions: {mine['pruned_block']})"
    )
    result["ours"] = {key: v for key, v in mine.items() if key != "vectors"}
    result["ours"]["peak_rss_growth_gb"] = peak
    if not args.skip_author:
        theirs = author(model, inputs, positions, args.k, args.tol)
        residual = _residual(theirs["matvec"], theirs["eigenvalues"], theirs["vectors"])
        ours_residual = _residual(theirs["matvec"], mine["eigenvalues"], mine["vectors"])
        agree = float(
            np.max(np.abs(np.subtract(mine["eigenvalues"], theirs["eigenvalues"])))
            / theirs["eigenvalues"][0]
        )
        print(
            f"author (vjp + jvp per product, ARPACK): {theirs['seconds']:.1f} s, "
            f"{theirs['n_matvec']} products, max residual {residual:.1e} (ours measured the "
            f"same way: {ours_residual:.1e}); eigenvalues agree to {agree:.1e} of λ₁"
        )
        print(f"ratio: ×{theirs['seconds'] / mine['seconds']:.2f}")
        result["author"] = {
            "seconds": theirs["seconds"],
            "n_matvec": theirs["n_matvec"],
            "max_residual": residual,
            "eigenvalues": theirs["eigenvalues"],
        }
        result["ours"]["max_residual_measured_like_author"] = ours_residual
        result["ratio"] = theirs["seconds"] / mine["seconds"]
        result["eigenvalue_agreement"] = agree
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_lm_{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
