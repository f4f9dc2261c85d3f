"""Paper-size toy-model training: wall time and the science figures, written as JSON.

Runs the full p = 29 modular-addition MLP (500 epochs, with run directory, checkpoints every
10 epochs and the training-curve plot, as ``entk-fast train modadd`` does) and the three TMS
settings of the TMS experiment (arXiv 2510.00468), and reports:

* the MLP's wall time and the first epoch at which test accuracy exceeds 50 %;
* for TMS, the number of features with ``(WᵀW)_ii >= 0.75`` (paper: about 10, 21, 42).

Usage: ``PYTHONPATH=python python benches/bench_training.py [--seeds 0 1 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from entk_fast.paper.tasks.modadd import ModAddConfig, first_step_above
from entk_fast.paper.tasks.tms import TMSConfig
from entk_fast.paper.training import train_modadd, train_tms

TMS_SETTINGS = ((10, 0.3), (10, 0.9), (40, 0.9))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    results: dict[str, list[dict[str, object]]] = {"modadd": [], "tms": []}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = Path(tmp) / "run"
            h = train_modadd(ModAddConfig(seed=seed), out, threads=args.threads).history
            seconds = time.perf_counter() - start
        row = {
            "seed": seed,
            "seconds": round(seconds, 2),
            "first_epoch_test_acc_above_50pct": first_step_above(h, "test_acc", 0.5),
            "final_train_acc": float(h["train_acc"][-1]),
            "final_test_acc": float(h["test_acc"][-1]),
        }
        results["modadd"].append(row)
        print(f"modadd p=29 seed={seed}: {row}", flush=True)
        for hidden, sparsity in TMS_SETTINGS:
            start = time.perf_counter()
            cfg = TMSConfig(n_hidden=hidden, sparsity=sparsity, seed=seed)
            model = train_tms(cfg, threads=args.threads).model
            row = {
                "seed": seed,
                "n_hidden": hidden,
                "sparsity": sparsity,
                "n_reconstructed": model.n_reconstructed(),
                "seconds": round(time.perf_counter() - start, 2),
            }
            results["tms"].append(row)
            print(f"tms m={hidden} S={sparsity} seed={seed}: {row}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
