"""What a batch writes for its jobs: the record of each finished job (its inputs, the
provenance of the task that computed it, its results), the batch's report, and the
recorder, the single writer of the store while a batch runs (records, failures, report).
The files themselves are written atomically by the store (`entk_fast.batch.store`); `JobLog`,
the writer of the failures and the report, serves `entk_fast.batch.run_jobs` too.
"""

from __future__ import annotations

import os
import platform
import socket
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import linalg
from .._version import __version__
from ..errors import EntkError, StorageError
from .plan import BatchPlan, CheckpointTask
from .store import JobId, ResultStore, failure_entry, utc_timestamp

__all__ = [
    "BatchReport",
    "CheckpointResult",
    "JobLog",
    "Recorder",
    "job_records",
    "process_provenance",
    "task_provenance",
]


@dataclass(frozen=True)
class CheckpointResult:
    """What `analyse_checkpoint` returns: per analysis its scalar
    results and arrays."""

    checkpoint_sha256: str
    results: dict[str, dict[str, Any]]
    arrays: dict[str, Any]
    provenance: dict[str, Any]


def task_provenance(run_path: Path, checkpoint: Path, start: float) -> dict[str, Any]:
    """Where and how a task computed its results: the run and checkpoint read, then
    `process_provenance`."""
    return {
        "run_path": str(run_path.resolve()),
        "checkpoint": str(checkpoint.resolve()),
        **process_provenance(start),
    }


def process_provenance(start: float) -> dict[str, Any]:
    """The versions, the host, process and thread counts of the process computing a task,
    and the seconds since ``start`` (``time.perf_counter()``)."""
    import torch

    return {
        "entk_fast": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "threads": {"rust": linalg.get_num_threads(), "torch": torch.get_num_threads()},
        "seconds": time.perf_counter() - start,
    }


@dataclass
class BatchReport:
    """What a batch did: job names succeeded (computed now), skipped (already in the store
    with the same inputs) and failed (recorded in failures.json with their tracebacks)."""

    out: Path
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    """The succeeded jobs that replaced a stale result (inputs changed)."""
    damaged: list[str] = field(default_factory=list)
    """Jobs whose stored record was found damaged (and so recomputed)."""
    not_applicable: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    workers: str = "serial"

    @property
    def total(self) -> int:
        return len(self.succeeded) + len(self.skipped) + len(self.failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {
                "succeeded": len(self.succeeded),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
                "recomputed": len(self.recomputed),
            },
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "failed": self.failed,
            "recomputed": self.recomputed,
            "damaged": self.damaged,
            "not_applicable": self.not_applicable,
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "workers": self.workers,
            "entk_fast": __version__,
        }

    def summary(self, *, names: int = 10) -> str:
        """A few lines for the terminal: counts, then the failed jobs' names."""
        lines = [
            f"{len(self.succeeded)} succeeded ({len(self.recomputed)} with changed inputs), "
            f"{len(self.skipped)} skipped (already done), {len(self.failed)} failed"
            + (" — interrupted" if self.interrupted else "")
            + f"; {self.seconds:.1f} s, results in {self.out}"
        ]
        if self.failed:
            shown = ", ".join(self.failed[:names])
            more = f", … ({len(self.failed)} in all)" if len(self.failed) > names else ""
            lines.append(f"failed: {shown}{more} (tracebacks in {self.out / 'failures.json'})")
        if self.not_applicable:
            example = self.not_applicable[0]
            lines.append(f"not applicable: {len(self.not_applicable)} (e.g. {example})")
        return "\n".join(lines)


def job_records(
    plan: BatchPlan, task: CheckpointTask, result: CheckpointResult
) -> Iterator[tuple[JobId, dict[str, Any], Any]]:
    """(job, record, arrays) of each job of a finished task. The recorded checkpoint hash is
    the one of the bytes the task read."""
    for job in task.jobs:
        record = {
            "job": job.name,
            "run": job.run,
            "step": job.step,
            "analysis": job.analysis,
            "inputs": {**plan.inputs[job], "checkpoint_sha256": result.checkpoint_sha256},
            "provenance": {**result.provenance, "finished_at": utc_timestamp()},
            "metrics": plan.metrics.get(job, {}),
            "result": result.results[job.analysis],
        }
        yield job, record, result.arrays.get(job.analysis)


class JobLog:
    """The single writer of the failures and the report while jobs run: a finished job's
    older failure is dropped, a failed one is recorded with its traceback, and the report
    lists both. Who writes a finished job's record depends on the caller (`Recorder` for a
    batch; the task itself for `entk_fast.batch.run_jobs`).

    ``skipped`` are the names of jobs whose stored result is valid (an older failure of theirs
    is dropped), ``stale`` those recomputed because their inputs changed, ``problems`` the
    failures found before any task ran (keyed like failures.json)."""

    def __init__(
        self,
        store: ResultStore,
        report: BatchReport,
        on_result: Any,
        *,
        skipped: Iterable[str] = (),
        stale: Iterable[str] = (),
        problems: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.report = report
        self.on_result = on_result
        self.failures = store.read_failures()
        self.stale = set(stale)
        changed = False
        for name in skipped:  # a stored valid result supersedes an older failure
            changed |= self.failures.pop(name, None) is not None
        for key, entry in (problems or {}).items():
            self.failures[key] = entry
            report.failed.append(key)
            changed = True
        if changed:
            store.write_failures(self.failures)

    def succeeded(self, jobs: Sequence[Any]) -> None:
        """``jobs`` (anything with a ``name``) finished and their records are written."""
        self._record(list(jobs), True)

    def _record(self, jobs: list[Any], ok: bool) -> None:
        if ok:
            changed = False
            for job in jobs:
                self.report.succeeded.append(job.name)
                if job.name in self.stale:
                    self.report.recomputed.append(job.name)
                changed |= self.failures.pop(job.name, None) is not None
            if changed:
                self.store.write_failures(self.failures)
        if jobs and self.on_result is not None:
            self.on_result(jobs, ok)

    def entry_fields(self, job: Any) -> dict[str, Any]:
        """The fields a failure entry of ``job`` has besides the error (none here)."""
        return {}

    def failure_of(self, jobs: Sequence[Any], exc: BaseException, tb: str, **extra: Any) -> None:
        for job in jobs:
            self.failures[job.name] = failure_entry(
                job.name, exc, tb, **self.entry_fields(job), **extra
            )
            self.report.failed.append(job.name)
        if jobs:
            self.store.write_failures(self.failures)
        self._record(list(jobs), False)

    def finish(self, start: float) -> None:
        self.report.seconds = time.perf_counter() - start
        self.store.root.mkdir(parents=True, exist_ok=True)
        from .._io import atomic_write_json

        atomic_write_json(self.store.report_path, self.report.as_dict())


class Recorder(JobLog):
    """The single writer of the store during a batch: records, failures and the report."""

    def __init__(
        self, store: ResultStore, plan: BatchPlan, report: BatchReport, on_result: Any
    ) -> None:
        super().__init__(
            store,
            report,
            on_result,
            skipped=[job.name for job in plan.skipped],
            stale=[job.name for job in plan.stale],
            problems=plan.problems,
        )
        self.plan = plan

    def success(self, task: CheckpointTask, result: CheckpointResult) -> None:
        jobs = task.jobs
        written: list[JobId] = []
        try:
            for job, record, arrays in job_records(self.plan, task, result):
                self.store.write_result(job, record, arrays)
                written.append(job)
        except StorageError:  # a full disk: nothing more can be recorded, stop the batch
            self._record(written, True)
            raise
        except (OSError, EntkError, KeyError) as e:  # this job is lost, not the batch
            rest = [job for job in jobs if job not in written]
            self._record(written, True)
            self.failure_of(rest, e, traceback.format_exc())
            return
        self._record(written, True)

    def entry_fields(self, job: JobId) -> dict[str, Any]:
        return {"run": job.run, "step": job.step, "analysis": job.analysis}
