"""One eigen-solve over Dask workers: ``entk_topk(..., client=)`` on 1 and on 2 single-thread
workers, side by side in one run, on the paper's language-model case.

Case (as ``bench_lm.py``): the packaged all-MiniLM-L6-v2, the weight of
``encoder.layer.4.output.dense`` (384 × 1536), the last hidden state read at a word of each
context, T = 64 tokens (padded, 2-D attention mask), flattened kernel, top-k at relative
residual ``--tol``; ``--contexts 1024`` is the paper's size (N·d = 393 216).

Each side opens its own local cluster (``entk_fast.batch.open_client``: worker processes of
one thread each) and runs the whole solve: the shards' build on the workers (model and cached
prefix, once) and the products. Reported per side: wall time (the cluster's start-up apart),
build time, products, and per product the wall time split into the slowest shard's compute and
the wait (scheduling, transfers, the client's Krylov step), and the bytes a product moves;
then the speed-up and the eigenpairs' agreement (eigenvalues relative to λ₁, eigenvector
overlaps |⟨u, u'⟩|). The client runs torch on one thread too. Writes
``benches/results/bench_distributed_<UTC time>.json``.

``--model gemma3-270m`` measures the per-product compute of the scaling model in
docs/distributed.md instead: Gemma-3-270M's architecture built from its published config
(18 layers, d = 640, MLP 2048, 4 heads of 256, 1 KV head; random weights, vocabulary cut to
4096, which changes no product's cost: the prefix runs once and the readout is the final
hidden state with the metric S = UᵀU, 640 × 640), layer 16's ``mlp.down_proj`` (640 × 2048),
contexts of random tokens read at their last position.

Usage: ``python benches/bench_distributed.py [--contexts 1024] [--k 25] [--tol 1e-3]
[--workers 1,2] [--model minilm|gemma3-270m]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "encoder.layer.4.output.dense.weight"


def gemma_270m(n: int, length: int) -> tuple[Any, Any, Any, Any]:
    """Gemma-3-270M's architecture (random weights, vocabulary 4096), n contexts of random
    tokens read at their last position, and the metric S = UᵀU of its tied unembedding."""
    import torch
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=4096,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        max_position_embeddings=32768,
        sliding_window=512,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    unembed = model.lm_head.weight.detach().double()
    metric = (unembed.T @ unembed).numpy()
    ids = torch.randint(0, 4096, (n, length), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    positions = torch.full((n,), length - 1)
    return model.model, inputs, positions, metric


def solve(workers: int, model: Any, inputs: Any, positions: Any, options: dict[str, Any]) -> Any:
    """The top-k on a fresh local cluster of ``workers`` single-thread workers."""
    from entk_fast import entk_topk
    from entk_fast.batch import open_client

    with open_client(workers=workers, dashboard=False) as client:
        client.wait_for_workers(workers, timeout=120)
        start = time.perf_counter()
        spec = entk_topk(
            model,
            inputs,
            output_fn=lambda o: o.last_hidden_state,
            positions=positions,
            progress=False,
            client=client,
            **options,
        )
        seconds = time.perf_counter() - start
    return spec, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1024)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--model", choices=("minilm", "gemma3-270m"), default="minilm")
    parser.add_argument("--maxiter", type=int, default=None, help="restart cycles at most")
    args = parser.parse_args()
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_lm import _inputs

    torch.set_num_threads(1)
    options: dict[str, Any] = {"k": args.k, "tol": args.tol, "maxiter": args.maxiter}
    if args.model == "minilm":
        model, inputs, positions = _inputs(args.contexts, args.length)
        options["params"] = LAYER
    else:
        model, inputs, positions, metric = gemma_270m(args.contexts, args.length)
        options["params"] = "layers.16.mlp.down_proj.weight"
        options["output_metric"] = metric
    counts = [int(w) for w in args.workers.split(",")]
    print(
        f"{args.model} {options['params']}, N = {args.contexts}, T = {args.length}, "
        f"top-{args.k} at {args.tol}"
    )
    result: dict[str, Any] = {
        "model": args.model,
        "params": options["params"],
        "contexts": args.contexts,
        "length": args.length,
        "k": args.k,
        "tol": args.tol,
        "sides": {},
    }
    spectra = {}
    for workers in counts:
        spec, seconds = solve(workers, model, inputs, positions, options)
        spread = spec.info["distributed"]
        spectra[workers] = spec
        side = {
            "seconds": seconds,
            "n_matvec": spec.info["n_matvec"],
            "max_residual": spec.info["max_residual"],
            **{key: v for key, v in spread.items() if key != "bounds"},
            "eigenvalues": [float(v) for v in spec.eigenvalues],
        }
        result["sides"][str(workers)] = side
        print(
            f"{workers} worker(s): {seconds:.1f} s ({spread['build_seconds']:.1f} s build), "
            f"{spec.info['n_matvec']} products of {spread['seconds_per_product']:.3f} s "
            f"(compute {spread['compute_per_product']:.3f} s, wait "
            f"{spread['wait_per_product']:.3f} s), {spread['bytes_per_product'] / 1e6:.1f} MB "
            f"a product, max residual {spec.info['max_residual']:.1e}"
        )
    base = counts[0]
    for workers in counts[1:]:
        ratio = result["sides"][str(base)]["seconds"] / result["sides"][str(workers)]["seconds"]
        a, b = spectra[base], spectra[workers]
        agree = float(np.max(np.abs(a.eigenvalues - b.eigenvalues)) / a.eigenvalues[0])
        overlap = np.abs(np.sum(a.eigenvectors.astype(float) * b.eigenvectors, axis=0))
        result[f"speedup_{workers}_vs_{base}"] = ratio
        result[f"eigenvalues_{workers}_vs_{base}"] = agree
        result[f"min_overlap_{workers}_vs_{base}"] = float(overlap.min())
        print(
            f"{workers} vs {base} worker(s): ×{ratio:.2f}; eigenvalues agree to {agree:.1e} of "
            f"λ₁, eigenvector overlaps ≥ {overlap.min():.6f}"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_distributed_{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
