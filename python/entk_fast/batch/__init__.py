"""Batch analysis on a CPU cluster with Dask: many runs × checkpoints × analyses as
resumable tasks.

* ``analyses``: what a batch can compute (the registry of analyses);
* ``plan``: which jobs a batch has, and which of them are done;
* ``execute``: the tasks run serially or on Dask (``run_batch``, ``run_checkpoint``);
* ``mapping``: your own function over your own items as resumable jobs (``run_jobs``,
  ``submit_jobs``, ``read_jobs``);
* ``records``: what is written for each job, and the batch's report;
* ``store``: the results store; ``summary``: the summary of a results folder;
* ``cluster``: where the tasks run (local, a scheduler address, SLURM/PBS via dask-jobqueue);
* ``tiled``: kernels assembled tile by tile on disk.

The ``batch`` / ``batch-summary`` / ``spectrum`` commands are in `entk_fast.cli`. Dask
(``dask[distributed]``) is imported only when a client is opened; the serial path and the
store work without it.
"""

from __future__ import annotations

from .analyses import ANALYSES, DEFAULT_K, parse_analyses
from .cluster import open_client
from .execute import analyse_checkpoint, run_batch, run_checkpoint
from .mapping import JobResult, SubmittedJobs, read_jobs, run_jobs, submit_jobs
from .plan import BatchPlan, CheckpointTask, find_runs, plan_batch
from .records import BatchReport
from .store import JobId, ResultStore, file_sha256
from .summary import BatchSummary, summarize, write_curves
from .tiled import (
    StoredKernel,
    open_stored_kernel,
    stored_kernel_meta,
    stored_topk,
    tiled_kernel,
)

__all__ = [
    "ANALYSES",
    "DEFAULT_K",
    "BatchPlan",
    "BatchReport",
    "BatchSummary",
    "CheckpointTask",
    "JobId",
    "JobResult",
    "ResultStore",
    "StoredKernel",
    "SubmittedJobs",
    "analyse_checkpoint",
    "file_sha256",
    "find_runs",
    "open_client",
    "open_stored_kernel",
    "parse_analyses",
    "plan_batch",
    "read_jobs",
    "run_batch",
    "run_checkpoint",
    "run_jobs",
    "stored_kernel_meta",
    "stored_topk",
    "submit_jobs",
    "summarize",
    "tiled_kernel",
    "write_curves",
]
