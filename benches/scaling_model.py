"""The scaling model of one distributed eigen-solve (docs/distributed.md), from measurements.

Inputs, all measured by ``bench_distributed.py`` and named in its JSON:

* ``--gemma`` a run with ``--model gemma3-270m --workers 1``: the compute a product costs per
  context on one core (``compute_per_product`` / contexts), a vector's layer-sized parts
  (``part_bytes_per_vector``: Gemma-3-270M layer 16's 640 × 2048 down-projection) and the
  cached prefix a context keeps on its worker (``kept_bytes_per_shard`` / contexts);
* ``--minilm`` a paper-size MiniLM run on 1 and 2 workers: the products a top-25 at 1e-3 takes
  and the wait a product has beyond its compute on this machine's scheduler (which bounds the
  per-task overhead).

Assumed, and printed: nodes of ``--cores`` cores, one worker per node running torch on all of
them at parallel efficiency ``--efficiency``; a network of ``--bandwidth`` GB/s per node and
``--latency`` s per task hop; the scheduler's cost per task ``--task-seconds``.

A product of one vector on P nodes then takes

    compute  c · N / (P · cores · efficiency)
    reduce   ⌈log₄ P⌉ hops, each moving one set of parts (a 4-way sum reads 3 of them)
    spread   the sum read by the P − 1 other workers from the nodes that hold it (Dask fetches
             from any holder, so the copies double: ⌈log₂ P⌉ rounds of one part)
    vectors  V's rows out and K V's rows back through the client: 2 · N · C · 8 bytes
    tasks    (2P + P/3) tasks through the scheduler, and 3 + ⌈log₄ P⌉ dependent hops
    client   the Krylov step on the (N · C)-long basis (measured on the MiniLM run's wait)

and a solve takes ``products`` of them. Usage: ``python benches/scaling_model.py --gemma
FILE --minilm FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any


def _side(result: dict[str, Any], workers: str) -> dict[str, Any]:
    side = result["sides"].get(workers)
    if side is None:
        raise SystemExit(f"{result.get('model')}: no run on {workers} worker(s) in the file")
    return side


def product_seconds(
    n: int, nodes: int, measured: dict[str, float], args: argparse.Namespace
) -> dict[str, float]:
    """The parts of one product's time for N = ``n`` contexts on ``nodes`` nodes."""
    compute = measured["per_context"] * n / (nodes * args.cores * args.efficiency)
    part = measured["part_bytes"] / (args.bandwidth * 1e9)
    levels = math.ceil(math.log(nodes, 4)) if nodes > 1 else 0
    reduce = levels * (3 * part + args.latency)
    spread = (math.ceil(math.log2(nodes)) if nodes > 1 else 0) * (part + args.latency)
    vectors = 2 * n * measured["rows"] * 8 / (args.bandwidth * 1e9)
    tasks = (2 * nodes + nodes / 3) * args.task_seconds + (3 + levels) * args.latency
    client = measured["client_per_row"] * n * measured["rows"]
    total = compute + reduce + spread + vectors + tasks + client
    return {
        "compute": compute,
        "communication": reduce + spread + vectors,
        "overhead": tasks + client,
        "total": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma", type=Path, required=True)
    parser.add_argument("--minilm", type=Path, required=True)
    parser.add_argument("--cores", type=int, default=32)
    parser.add_argument("--efficiency", type=float, default=0.7)
    parser.add_argument("--bandwidth", type=float, default=1.25, help="GB/s (10 Gb/s)")
    parser.add_argument("--latency", type=float, default=0.002, help="s a task hop")
    parser.add_argument("--task-seconds", type=float, default=0.001, help="scheduler s a task")
    args = parser.parse_args()
    gemma = json.loads(args.gemma.read_text())
    minilm = json.loads(args.minilm.read_text())
    one = _side(gemma, "1")
    mini = _side(minilm, "1")
    rows = 640  # Gemma-3-270M's d: a context's rows of the flattened kernel
    measured = {
        "per_context": one["compute_per_product"] / gemma["contexts"],
        "part_bytes": one["part_bytes_per_vector"],
        "kept_per_context": one["kept_bytes_per_shard"] / gemma["contexts"],
        "rows": rows,
        # the client's share of MiniLM's wait, per row of the basis (an upper bound: it
        # includes this machine's scheduler and transfers)
        "client_per_row": mini["wait_per_product"] / (minilm["contexts"] * 384),
    }
    products = mini["n_matvec"]
    print(
        f"measured: {measured['per_context'] * 1e3:.1f} ms a context a product on one core, "
        f"{measured['part_bytes'] / 1e6:.2f} MB of parts a vector, "
        f"{measured['kept_per_context'] / 1e6:.2f} MB kept a context; {products} products "
        f"(MiniLM paper size, top-{minilm['k']} at {minilm['tol']})"
    )
    print(
        f"assumed: {args.cores} cores a node at efficiency {args.efficiency}, "
        f"{args.bandwidth} GB/s, {args.latency * 1e3:.0f} ms a hop, "
        f"{args.task_seconds * 1e3:.1f} ms a task"
    )
    print("| N | nodes | compute s | comm. s | overhead s | s a product | solve | kept a node |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (1024, 8192):
        for nodes in (1, 4, 16, 64):
            t = product_seconds(n, nodes, measured, args)
            kept = measured["kept_per_context"] * n / nodes / 1e9
            print(
                f"| {n} | {nodes} | {t['compute']:.3f} | {t['communication']:.3f} | "
                f"{t['overhead']:.3f} | {t['total']:.3f} | {products * t['total'] / 60:.1f} min "
                f"| {kept:.1f} GB |"
            )


if __name__ == "__main__":
    main()
