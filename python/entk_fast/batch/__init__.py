"""Batch analysis on a CPU cluster with Dask: many runs × checkpoints × analyses as
resumable tasks (``jobs``), their results store (``store``), where the tasks run
(``cluster``: local, a scheduler address, SLURM/PBS via dask-jobqueue), kernels assembled
tile by tile on disk (``tiled``), the summary of a results folder (``summary``) and the
``batch`` / ``batch-summary`` / ``spectrum`` commands (``cli``).

Dask (``dask[distributed]``) is imported only when a client is opened; the serial path and
the store work without it.
"""

from __future__ import annotations

from .cluster import open_client
from .jobs import (
    ANALYSES,
    DEFAULT_K,
    BatchPlan,
    BatchReport,
    CheckpointTask,
    analyse_checkpoint,
    find_runs,
    parse_analyses,
    plan_batch,
    run_batch,
    run_checkpoint,
)
from .store import JobId, ResultStore, file_sha256
from .summary import BatchSummary, summarize, write_curves
from .tiled import StoredKernel, open_stored_kernel, stored_topk, tiled_kernel

__all__ = [
    "ANALYSES",
    "DEFAULT_K",
    "BatchPlan",
    "BatchReport",
    "BatchSummary",
    "CheckpointTask",
    "JobId",
    "ResultStore",
    "StoredKernel",
    "analyse_checkpoint",
    "file_sha256",
    "find_runs",
    "open_client",
    "open_stored_kernel",
    "parse_analyses",
    "plan_batch",
    "run_batch",
    "run_checkpoint",
    "stored_topk",
    "summarize",
    "tiled_kernel",
    "write_curves",
]
