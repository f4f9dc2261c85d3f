"""A stand-in for the paper's language-model setting (arXiv 2510.00468 v4): matrix-free top-k of
one MLP projection's eNTK of a small causal transformer, K never formed.

The model is randomly initialised and built here (no download): ``--layers`` pre-LayerNorm
blocks (``nn.MultiheadAttention`` with a causal mask, a GELU MLP of width 4·d), token and
position embeddings, a final LayerNorm and an unembedding U (vocabulary × d). The output is the
final hidden state at the last position, h ∈ R^d per context, with the unembedding metric
S = UᵀU (distances between hidden states as the logits see them); the parameters are one
block's MLP output projection (weight and bias). The operator has dimension N·d; its top-k
eigenpairs come from ``entk_fast.entk_topk``: block Krylov on K V = S^½ J (Jᵀ S^½ V), each
chunk's forward graph kept for the whole solve (the layers before θ run once; a product is a
backward through the kept graph and its transpose, whose graphs are kept too while memory
allows), convergence tested as the basis grows.

Reports wall time, peak RSS above the start, vector products, residuals and convergence, and
writes ``benches/results/bench_lm_standin_<UTC time>.json``.

Usage: ``python benches/bench_lm_standin.py [--contexts 1024] [--k 25] [--layers 4] [--d 128]
[--context-length 64] [--block-index 2] [--max-memory 1GB]``. The issue's full size is the
default: N = 1024 contexts, d = 128, an operator of dimension 131 072.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _model(vocab: int, d: int, heads: int, layers: int, context: int) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.ln2 = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp_in = nn.Linear(d, 4 * d)
            self.mlp_out = nn.Linear(4 * d, d)

        def forward(self, x: Any, mask: Any) -> Any:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp_out(nn.functional.gelu(self.mlp_in(self.ln2(x))))

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos_embed = nn.Embedding(context, d)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(d)
            self.unembed = nn.Linear(d, vocab, bias=False)
            mask = torch.triu(torch.ones(context, context, dtype=torch.bool), 1)
            self.register_buffer("mask", mask)

        def forward(self, tokens: Any) -> Any:
            t = tokens.shape[1]
            x = self.embed(tokens) + self.pos_embed(torch.arange(t).expand_as(tokens))
            for block in self.blocks:
                x = block(x, self.mask[:t, :t])
            return self.ln_f(x)[:, -1]  # the last position's final hidden state (N, d)

    return TinyLM()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1024, help="N, contexts")
    parser.add_argument("--k", type=int, default=25, help="eigenpairs")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d", type=int, default=128, help="d_model")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--block-index", type=int, default=2, help="whose mlp_out is θ")
    parser.add_argument(
        "--max-memory", default=None, help="entk_topk's working-memory budget (e.g. 1GB)"
    )
    args = parser.parse_args()

    import numpy as np
    import torch

    import entk_fast as ef

    torch.manual_seed(0)
    model = _model(args.vocab, args.d, args.heads, args.layers, args.context_length).eval()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.contexts, args.context_length), generator=gen)
    u = model.unembed.weight.detach().double()
    metric = (u.T @ u).numpy()
    params = [f"blocks.{args.block_index}.mlp_out"]
    baseline = _rss()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    spec = ef.entk_topk(
        model,
        tokens,
        k=args.k,
        output_metric=metric,
        params=params,
        progress=False,
        max_memory=args.max_memory,
    )
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    info = spec.info
    residuals = np.asarray(info.get("residuals", []), dtype=float)
    report = {
        "date": datetime.now(timezone.utc).isoformat(),
        "args": vars(args),
        "operator_dimension": args.contexts * args.d,
        "parameters": params,
        "seconds": elapsed,
        "peak_rss_increment_bytes": peak[0] - baseline,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "n_matvec": info.get("n_matvec"),
        "converged": info.get("converged"),
        "solver": {
            key: info.get(key)
            for key in (
                "chunk",
                "columns",
                "chunks",
                "kept_chunks",
                "kept_transposes",
                "kept_bytes",
                "cycles",
                "block",
            )
        },
        "max_residual": float(residuals.max()) if residuals.size else None,
        "eigenvalues": [float(v) for v in spec.eigenvalues],
        "load_average": os.getloadavg(),
    }
    print(
        f"operator {report['operator_dimension']}, top-{args.k}: {elapsed:.1f} s, peak RSS "
        f"+{report['peak_rss_increment_bytes'] / 1e6:.0f} MB, {report['n_matvec']} vector "
        f"products, max residual {report['max_residual']}, converged {report['converged']}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_lm_standin_{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
