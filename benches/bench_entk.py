"""``empirical_ntk`` against the torch.func tutorial recipe: time and peak memory, same inputs.

The recipe is the "Jacobian contraction" method of the torch.func NTK tutorial:
``vmap(jacrev(f))`` over the samples, then one ``einsum`` per parameter tensor
(``'Naf,Mbf->NMab'`` for the flattened kernel, ``'Naf,Maf->NM'`` for the trace, divided by C
here to give the mean). The Jacobian is computed once and contracted with itself.

Cases:

* ``a``: the paper's modular-addition MLP (p = 29, H = 512, all 841 inputs), ``trace``.
* ``b``: a 3-layer ReLU MLP of width 512 (32 → 512 → 512 → 8, biases), N = 512 so
  N·C = 4096, ``flattened``.
* ``mha`` / ``mha-layers``: a 1-layer, 4-head ``nn.MultiheadAttention`` model (token and
  position embeddings, d_model 64, ReLU MLP 256 at every position, residuals, unembedding of
  the last position to 30 logits, biases), 3 tokens, N = 400, ``mean_pairs``: all parameters /
  one kernel per layer (the recipe keeps its per-parameter contractions apart).
* ``transformer`` / ``transformer-layers``: the paper's 1-layer modular-addition transformer
  (``ModAddTransformer(29)``, untrained), all N = 841 inputs, ``mean_pairs``.

For ``mean_pairs`` the recipe differentiates the mean logit (one Jacobian row a sample), as a
user would.

Each (case, method) runs in its own subprocess: build model and inputs (seeded), time the
first full call (the warm-up), make up to three calls while a thread samples the RSS every
millisecond (peak memory: the largest RSS above the baseline read before each), then time the
warm calls without the sampler (its 1 kHz wake-ups take the GIL).
``empirical_ntk`` is timed ``--repeat`` times (median reported), the recipe once by default (it
takes tens of seconds). Wall time and process CPU time (all threads) are both reported: on a shared
machine the CPU-time ratio is the steadier measure. Both kernels are compared (max relative
difference). The load average at start and end is recorded.

Each worker first times one call in its fresh process (imports, lazy initialisation), then
the warm runs.

The workers inherit the environment, so both sides run under the same OpenMP setting; it is
recorded. ``GOMP_SPINCOUNT=30000 python benches/bench_entk.py`` times them as the
``entk-fast`` command runs (it sets that for itself), without it as the Python API runs in a
user's process by default.

Usage: ``PYTHONPATH=python python benches/bench_entk.py [--cases a b mha ...] [--repeat 3]``
Writes ``benches/results/bench_entk_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

CASES = {
    "a": "modular-addition MLP p=29 H=512, N=841, trace",
    "b": "3-layer MLP 32-512-512-8, N=512 (N·C=4096), flattened",
    "mha": "1-layer nn.MultiheadAttention model d=64 h=4 mlp=256, T=3, N=400, mean_pairs",
    "mha-layers": "the same, layerwise (one kernel per layer)",
    "transformer": "ModAddTransformer(29) (paper v3, untrained), N=841, mean_pairs",
    "transformer-layers": "the same, layerwise (one kernel per layer)",
}
METHODS = ("entk_fast", "recipe")
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- worker side


def _attention_model() -> Any:
    import torch
    from torch import nn

    class AttentionModel(nn.Module):
        def __init__(self, vocab: int = 30, d: int = 64, heads: int = 4, d_mlp: int = 256) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos_embed = nn.Embedding(3, d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.mlp_in = nn.Linear(d, d_mlp)
            self.mlp_out = nn.Linear(d_mlp, d)
            self.unembed = nn.Linear(d, vocab)
            self.register_buffer("mask", torch.triu(torch.ones(3, 3, dtype=torch.bool), 1))

        def forward(self, tokens: Any) -> Any:
            positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
            x = self.embed(tokens) + self.pos_embed(positions)
            a, _ = self.attn(x, x, x, attn_mask=self.mask, need_weights=False)
            x = x + a
            x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
            return self.unembed(x[:, -1])

    return AttentionModel()


def _modadd_tokens(p: int) -> Any:
    import torch

    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1)


def _build(case: str) -> tuple[Any, Any, str]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)
    if case.startswith("mha"):
        tokens = _modadd_tokens(29)
        pick = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))[:400]
        return _attention_model().eval(), tokens[pick], "mean_pairs"
    if case.startswith("transformer"):
        from entk_fast.toys.transformer import ModAddTransformer

        return ModAddTransformer(29).eval(), _modadd_tokens(29), "mean_pairs"
    if case == "a":
        from entk_fast.toys import ModAddMLP

        p = 29
        model = ModAddMLP(p, 512).eval()
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()
        return model, x, "trace"
    model = nn.Sequential(
        nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 8)
    ).eval()
    return model, torch.randn(512, 32), "flattened"


def _recipe(model: Any, x: Any, reduction: str, layerwise: bool = False) -> np.ndarray:
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    if reduction == "mean_pairs":  # one row a sample: the Jacobian of the mean logit

        def mean_single(params: dict[str, Any], x: Any) -> Any:
            return functional_call(model, params, (x.unsqueeze(0),)).mean()

        grads = vmap(jacrev(mean_single), (None, 0))(params, x)
        flat = [g.flatten(1) for g in grads.values()]
        kernels = [f @ f.T for f in flat]  # J_i J_iᵀ per parameter
        if layerwise:
            return np.stack([k.numpy() for k in kernels]).sum(0)
        return torch.stack(kernels).sum(0).numpy()

    def fnet_single(params: dict[str, Any], x: Any) -> Any:
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
    jac = [j.flatten(2) for j in jac.values()]
    expr = "Naf,Maf->NM" if reduction == "trace" else "Naf,Mbf->NMab"
    result = torch.stack([torch.einsum(expr, j, j) for j in jac]).sum(0)
    n, c = jac[0].shape[:2]
    if reduction == "trace":
        return (result / c).numpy()
    return result.permute(0, 2, 1, 3).reshape(n * c, n * c).numpy()


def _run(method: str, model: Any, x: Any, reduction: str, layerwise: bool = False) -> np.ndarray:
    if method == "recipe":
        return _recipe(model, x, reduction, layerwise)
    from entk_fast import empirical_ntk

    result = empirical_ntk(model, x, reduction=reduction, layerwise=layerwise, progress=False)
    return result.kernel


_MEMORY_RUNS = 3
"""Calls measured for peak memory (after the timed ones)."""


def _worker(case: str, method: str, repeat: int, kernel_path: str, threads: int) -> None:
    import psutil
    import torch

    from entk_fast import linalg

    if threads > 0:
        torch.set_num_threads(threads)
        linalg.set_num_threads(threads)

    model, x, reduction = _build(case)
    layerwise = case.endswith("-layers")
    start = time.perf_counter()
    _run(method, model, x, reduction, layerwise)  # the first call in a fresh process
    first = time.perf_counter() - start
    proc = psutil.Process()
    times: list[float] = []
    cpu_times: list[float] = []
    peaks: list[int] = []
    kernel = None
    # Peak memory first (glibc's malloc keeps freed blocks resident once large ones have been
    # freed a few times, which would hide later peaks), on calls of their own.
    for _ in range(min(repeat, _MEMORY_RUNS)):
        kernel = None
        baseline = proc.memory_info().rss
        peak = [baseline]
        done = threading.Event()

        def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        kernel = _run(method, model, x, reduction, layerwise)
        done.set()
        sampler.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        peaks.append(peak[0] - baseline)
    # Then the timed runs, alone: the sampler's thread (a Python wake-up every 1 ms that
    # takes the GIL) would slow a call made of many short steps more than one long one.
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        kernel = _run(method, model, x, reduction, layerwise)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    assert kernel is not None
    np.save(kernel_path, kernel)
    print(
        json.dumps(
            {
                "first_call_s": first,
                "times_s": times,
                "cpu_times_s": cpu_times,
                "peak_bytes": peaks,
                "kernel_shape": list(kernel.shape),
                "kernel_bytes": int(kernel.nbytes),
                "torch_threads": torch.get_num_threads(),
                "rust_threads": linalg.get_num_threads(),
            }
        )
    )


# --------------------------------------------------------------------------- driver side


def _chunk_bytes(kernel_bytes: int) -> int:
    """One chunk: the working memory the structured path plans within beyond the kernel
    (``structured_cap``: max(0.5 · kernel, 32 MiB)); cotangents beyond it are taken a few
    output rows (trace) or a sample tile at a time."""
    from entk_fast.ntk.plan import structured_cap

    return structured_cap(kernel_bytes)


def _spawn(case: str, method: str, repeat: int, kernel_path: str, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", case, method, str(repeat), kernel_path]
    cmd.append(str(threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of empirical_ntk")
    parser.add_argument("--recipe-repeat", type=int, default=1, help="timed runs of the recipe")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch and Rust threads (default: all cores)"
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        case, method, repeat, path, threads = args.worker
        _worker(case, method, int(repeat), path, int(threads))
        return 0

    coretype = os.environ.get("OPENBLAS_CORETYPE")
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "OPENBLAS_CORETYPE": coretype,
        "OPENBLAS_CORETYPE_set": coretype is not None,
        "load_average_start": os.getloadavg(),
        "threads_requested": args.threads or "all cores",
        # how torch's idle OpenMP threads wait (both sides run under the same setting);
        # the entk-fast command sets GOMP_SPINCOUNT=30000 for itself, the Python API does not
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    print(f"OPENBLAS_CORETYPE {'= ' + coretype if coretype else 'not set'}; env {env}")
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(),
        "env": env,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            rows: dict[str, Any] = {}
            kernels = {}
            for method in METHODS:
                repeat = args.repeat if method == "entk_fast" else args.recipe_repeat
                path = str(Path(tmp) / f"{case}_{method}.npy")
                row = _spawn(case, method, repeat, path, args.threads)
                row["time_s"] = statistics.median(row["times_s"])
                row["cpu_time_s"] = statistics.median(row["cpu_times_s"])
                row["peak_increment_bytes"] = int(max(row["peak_bytes"]))
                rows[method] = row
                kernels[method] = np.load(path)
                print(
                    f"[{case}] {method:9s} time {row['time_s']:8.3f} s  "
                    f"cpu {row['cpu_time_s']:8.3f} s  "
                    f"peak +{_fmt_mb(row['peak_increment_bytes'])}  first call "
                    f"{row['first_call_s']:.3f} s  (warm runs {row['times_s']})",
                    flush=True,
                )
            fast, recipe = rows["entk_fast"], rows["recipe"]
            ref = kernels["recipe"].astype(np.float64)
            diff = float(np.abs(kernels["entk_fast"] - ref).max() / np.abs(ref).max())
            kernel_bytes = fast["kernel_bytes"]
            chunk = _chunk_bytes(kernel_bytes)
            summary = {
                "description": CASES[case],
                "methods": rows,
                "speedup_vs_recipe": recipe["time_s"] / fast["time_s"],
                "cpu_time_ratio_vs_recipe": recipe["cpu_time_s"] / fast["cpu_time_s"],
                "memory_ratio_recipe_over_entk_fast": recipe["peak_increment_bytes"]
                / max(1, fast["peak_increment_bytes"]),
                "kernel_bytes": kernel_bytes,
                "chunk_bytes": chunk,
                "memory_target_bytes": int(1.5 * kernel_bytes + chunk),
                "peak_within_target": fast["peak_increment_bytes"] <= 1.5 * kernel_bytes + chunk,
                "max_relative_difference": diff,
            }
            report["cases"][case] = summary
            print(
                f"[{case}] speed-up ×{summary['speedup_vs_recipe']:.1f} (CPU time "
                f"×{summary['cpu_time_ratio_vs_recipe']:.1f}), memory ÷"
                f"{summary['memory_ratio_recipe_over_entk_fast']:.1f}; kernel "
                f"{_fmt_mb(kernel_bytes)}, target 1.5·kernel + chunk = "
                f"{_fmt_mb(summary['memory_target_bytes'])}, within: "
                f"{summary['peak_within_target']}; max rel. diff {diff:.2e}",
                flush=True,
            )
    env["load_average_end"] = os.getloadavg()
    print(f"load average start {env['load_average_start']}, end {env['load_average_end']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench_entk_{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
