"""The grokking sweep as a batch: serial vs a local Dask cluster, wall times and speed-up.

Trains the p = 29 modular-addition MLP (``ModAddConfig()``: 500 epochs, a checkpoint every 10,
so 51 checkpoints) into a temporary folder, then runs the batch analyses ``spectrum`` (top-200
eigenpairs of the traced eNTK, 841 × 841) and ``overlaps`` (cliff blocks vs the Fourier
families) of every checkpoint:

* ``serial-1``: in this process, one task after another, 1 Rust/torch thread;
* ``serial-all`` (with ``--serial-all``): in this process, every core for the Rust/torch
  pools (what a user without the batch layer gets; on a loaded machine torch's spinning
  OpenMP threads can make this many times slower than one thread);
* ``dask-N``: a LocalCluster of N worker processes × 1 thread (``entk-fast batch --workers N``),
  timed without and with the cluster's start-up.

All three must give the same numbers (checked: max differences printed). The local cluster's
workers start without distributed's ``MALLOC_TRIM_THRESHOLD_`` (see
``entk_fast.batch.cluster.GLIBC_MALLOC_DEFAULTS``): with it each task ran ~1.5× slower. The
machine's load average is printed before and after: timings on a shared machine move with it.

Usage: ``python benches/bench_batch.py [--workers 2] [--p 29]``; writes
``benches/results/bench_batch_<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _records(out: Path) -> dict[str, dict[str, Any]]:
    from entk_fast.batch import ResultStore

    return {r["job"]: r for r in ResultStore(out).iter_records()}


def _max_differences(a: Path, b: Path) -> dict[str, float]:
    from entk_fast.results import NTKSpectrum

    ra, rb = _records(a), _records(b)
    assert ra.keys() == rb.keys(), "the two batches hold different jobs"
    eig = over = 0.0
    for job, rec in ra.items():
        if rec["analysis"] == "spectrum":
            va = NTKSpectrum.load(a / "jobs" / rec["run"] / rec["arrays"]["file"]).eigenvalues
            other = rb[job]
            vb = NTKSpectrum.load(b / "jobs" / other["run"] / other["arrays"]["file"]).eigenvalues
            eig = max(eig, float(np.max(np.abs(va - vb)) / va[0]))
        else:
            for block, fams in rec["result"]["blocks"].items():
                for fam, value in fams.items():
                    over = max(over, abs(value - rb[job]["result"]["blocks"][block][fam]))
    return {"eigenvalues_rel": eig, "overlaps_abs": over}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--p", type=int, default=29)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--serial-all", action="store_true", help="also serial with all cores")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    import torch

    from entk_fast import linalg
    from entk_fast.batch import open_client, run_batch
    from entk_fast.paper.tasks.modadd import ModAddConfig
    from entk_fast.paper.training import train_modadd

    load_before = os.getloadavg()
    print(f"load average before: {load_before}, cores: {os.cpu_count()}", flush=True)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        train_modadd(ModAddConfig(p=args.p), root / "runs" / "modadd", plot=False)
        timings["train"] = time.perf_counter() - start
        n_checkpoints = len(list((root / "runs" / "modadd" / "checkpoints").glob("*.pt")))
        print(f"trained p = {args.p}: {n_checkpoints} checkpoints in {timings['train']:.1f} s")

        runs = root / "runs"
        start = time.perf_counter()
        serial = run_batch(runs, root / "serial-1", k=args.k, threads=1)
        timings["serial-1"] = time.perf_counter() - start
        assert not serial.failed, serial.summary()
        print(f"serial, 1 thread:      {timings['serial-1']:.1f} s", flush=True)

        if args.serial_all:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            linalg.set_num_threads(cores)
            torch.set_num_threads(cores)
            start = time.perf_counter()
            serial_all = run_batch(runs, root / "serial-all", k=args.k, threads=None)
            timings["serial-all"] = time.perf_counter() - start
            assert not serial_all.failed, serial_all.summary()
            print(f"serial, {cores} threads:     {timings['serial-all']:.1f} s", flush=True)

        name = f"dask-{args.workers}"
        start = time.perf_counter()
        with open_client(workers=args.workers, dashboard=False) as client:
            client.wait_for_workers(args.workers, timeout=120)
            timings[f"{name}-startup"] = time.perf_counter() - start
            begin = time.perf_counter()
            report = run_batch(runs, root / name, k=args.k, client=client)
            timings[name] = time.perf_counter() - begin
        timings[f"{name}-with-startup"] = time.perf_counter() - start
        assert not report.failed, report.summary()
        print(
            f"dask, {args.workers} workers × 1 thread: {timings[name]:.1f} s "
            f"({timings[f'{name}-with-startup']:.1f} s with the cluster's start-up)",
            flush=True,
        )
        diffs = {name: _max_differences(root / "serial-1", root / name)}
        if args.serial_all:
            diffs["serial-all"] = _max_differences(root / "serial-1", root / "serial-all")
        jobs = len(report.succeeded)
    load_after = os.getloadavg()
    speedups = {
        f"{name} vs serial-1": timings["serial-1"] / timings[name],
        f"{name} (with start-up) vs serial-1": timings["serial-1"]
        / timings[f"{name}-with-startup"],
    }
    if args.serial_all:
        speedups[f"{name} vs serial-all"] = timings["serial-all"] / timings[name]
    for label, value in speedups.items():
        print(f"speed-up {label}: ×{value:.2f}")
    print(f"max differences vs serial-1: {diffs}")
    print(f"load average after: {load_after}")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cores": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "p": args.p,
        "k": args.k,
        "checkpoints": n_checkpoints,
        "jobs": jobs,
        "workers": args.workers,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "speedups": {k: round(v, 3) for k, v in speedups.items()},
        "max_differences": diffs,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bench_batch_{stamp}.json"
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    if args.json is not None:
        args.json.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
