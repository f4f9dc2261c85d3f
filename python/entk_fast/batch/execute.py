"""Running a batch's tasks, serially in this process or as Dask tasks, each result written to
the store as it completes.

One task analyses one checkpoint: it loads the model once, computes one spectrum and derives
every requested analysis of that checkpoint from it (the overlaps need the top 4p − 3
eigenvectors that the spectrum job computes anyway), with the Rust and torch threads pinned.
Results travel back to the client, which is the only writer of the store: a job's record is
written the moment its task finishes, so an interrupted batch keeps every finished result
and a re-run computes only what is missing or stale. The driver's parts (serial retries,
Dask submission and draining, the report) serve `entk_fast.batch.run_jobs` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import linalg
from .._validate import check_int
from ..errors import CheckpointError, InvalidArgumentError
from .analyses import (
    ANALYSES,
    DEFAULT_K,
    kernel_order,
    overlaps_summary,
    parse_analyses,
    spectrum_summary,
)
from .plan import (
    MAX_CHECKPOINT_BYTES,
    CheckpointTask,
    default_run_name,
    find_runs,
    plan_batch,
)
from .records import (
    BatchReport,
    CheckpointResult,
    JobLog,
    Recorder,
    job_records,
    task_provenance,
)
from .store import JobId, ResultStore, check_run_name, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from ..paper.runs import Run

__all__ = [
    "ResultCallback",
    "analyse_checkpoint",
    "pinned_threads",
    "run_batch",
    "run_checkpoint",
]

T = TypeVar("T")

#: Called after each finished task with its jobs and whether they succeeded.
ResultCallback = Callable[[list[JobId], bool], None]


@contextlib.contextmanager
def pinned_threads(n: int | None) -> Iterator[None]:
    """Rust and torch thread counts set to ``n`` for the block, restored after (workers
    sharing a node must not each take every core)."""
    if n is None:
        yield
        return
    import torch

    before = (linalg.get_num_threads(), torch.get_num_threads())
    linalg.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        linalg.set_num_threads(before[0])
        torch.set_num_threads(before[1])


def _model_inputs(run: Run) -> Any:
    data = run.dataset()
    return getattr(data, "inputs", data)


def file_state(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of ``path``: a file that changed while a task read it differs."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def analyse_checkpoint(task: CheckpointTask) -> CheckpointResult:
    """Compute the analyses of one checkpoint (the body of a Dask task; also run serially).

    Raises whatever the computation raises (a corrupt checkpoint: ``CheckpointError``); the
    driver retries and records it.
    """
    from ..ntk.spectrum import entk_spectrum
    from ..paper.runs import checkpoint_path, load_run

    start = time.perf_counter()
    with pinned_threads(task.threads):
        run = load_run(task.run_path)
        file = checkpoint_path(run.path, task.step)
        try:
            before = file_state(file)
            sha = file_sha256(file, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint")
        except (OSError, InvalidArgumentError) as e:
            raise CheckpointError(f"cannot read checkpoint {file}: {e}") from e
        model = run.load_checkpoint(task.step)
        if file_state(file) != before:
            raise CheckpointError(f"checkpoint {file} changed while it was read; retry")
        x = _model_inputs(run)
        spec_params = task.params.get("spectrum")
        over_params = task.params.get("overlaps")
        base = spec_params if spec_params is not None else over_params
        assert base is not None
        n = kernel_order(model, x, base["reduction"])
        wanted = []
        if spec_params is not None:
            wanted.append(int(spec_params["k"]))
        if over_params is not None:
            wanted.append(int(over_params["blocks"][-1][-1]))
        k = min(max(wanted), n)
        spec = entk_spectrum(
            model,
            x,
            k=k,
            reduction=base["reduction"],
            dtype=base["dtype"],
            method=base["method"] if "method" in base else "auto",
            seed=int(base["seed"]),
            progress=False,
        )
        results: dict[str, dict[str, Any]] = {}
        arrays: dict[str, Any] = {}
        if spec_params is not None:
            kept = min(int(spec_params["k"]), len(spec))
            part = dataclasses.replace(
                spec,
                eigenvalues=spec.eigenvalues[:kept].copy(),
                eigenvectors=spec.eigenvectors[:, :kept].copy(),
            )
            results["spectrum"] = spectrum_summary(part, n)
            arrays["spectrum"] = part
        if over_params is not None:
            results["overlaps"] = overlaps_summary(spec, run.config.p, over_params)
        provenance = task_provenance(run.path, file, start)
    return CheckpointResult(sha, results, arrays, provenance)


def run_batch(
    runs_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    analyses: str | Iterable[str] = ANALYSES,
    *,
    k: int = DEFAULT_K,
    client: Client | None = None,
    retries: int = 2,
    threads: int | None = 1,
    force: bool = False,
    progress: bool = False,
    on_result: ResultCallback | None = None,
) -> BatchReport:
    """Run every job of ``runs_dir`` × checkpoints × ``analyses`` and store the results.

    Args:
        runs_dir: a run directory, or a directory holding runs (searched recursively;
            symlinks to folders are followed, see `find_runs`; a checkpoint is read
            only when it is a regular file, or a symlink to one, of at most
            `MAX_CHECKPOINT_BYTES`: anything else is a failed job).
        out: the results directory (see `entk_fast.batch.store`). One batch at a time
            writes it: a second one is refused (InvalidArgumentError naming ``out``).
        analyses: ``"spectrum"``, ``"overlaps"`` (a comma-separated string or a list).
        k: eigenpairs of the spectrum job (at most the kernel's order).
        client: a ``dask.distributed.Client``: one task per checkpoint on its workers. None:
            run the tasks one by one in this process.
        retries: extra attempts of a task that raised (Dask's ``retries``; a worker that
            dies mid-task is handled by the scheduler, up to its ``allowed-failures``).
        threads: Rust and torch threads inside each task (default 1, so workers sharing a
            node do not oversubscribe it; None leaves them as they are).
        force: recompute jobs whose stored result is valid.
        progress: a progress bar over finished jobs (on a terminal).
        on_result: called as ``on_result(jobs, ok)`` after each task's results are written.

    Returns:
        A `BatchReport`; it is also written to ``out/batch.json``. Jobs that kept
        failing are in ``out/failures.json`` with their tracebacks; the others are done.
        Ctrl-C (or an exception from ``on_result``) cancels the remaining tasks, writes the
        report (``interrupted``) and propagates; the finished results stay valid.
    """
    retries = check_int("retries", retries, minimum=0)
    start = time.perf_counter()
    store = ResultStore(out)
    names = parse_analyses(analyses)  # the request is checked before the store is touched
    k = check_int("k", k, minimum=1)
    if threads is not None:
        check_int("threads", threads, minimum=1)
    found = find_runs(runs_dir)
    with store.batch_lock():
        store.clean_stale_tmp_files()
        plan = plan_batch(
            runs_dir, out, names, k=k, threads=threads, force=force, runs=found, store=store
        )
        warn_damaged([job.name for job in plan.damaged], stacklevel=2)
        report = BatchReport(out=Path(out), not_applicable=list(plan.not_applicable))
        report.skipped = [job.name for job in plan.skipped]
        report.damaged = [job.name for job in plan.damaged]
        recorder = Recorder(store, plan, report, on_result)
        bar = None
        failed = False
        try:
            from .._progress import progress_bar

            bar = progress_bar(progress, len(plan.jobs), "jobs", unit="job")
            bar.update(len(plan.skipped))
            if client is None:
                _run_serial(plan.tasks, recorder, retries, bar)
            else:
                report.workers = describe_workers(client)
                _run_dask(client, plan.tasks, recorder, retries, bar)
        except BaseException:
            report.interrupted = True
            failed = True
            raise
        finally:
            if bar is not None:
                bar.close()
            finish_report(recorder, start, failed=failed)
    return report


def run_checkpoint(
    run_path: str | os.PathLike[str],
    step: int,
    out: str | os.PathLike[str],
    analyses: str | Iterable[str] = ("spectrum",),
    *,
    k: int = DEFAULT_K,
    name: str | None = None,
    threads: int | None = None,
    force: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """The analyses of one checkpoint in this process (``entk-fast spectrum``, one SLURM
    array task per checkpoint), written as a batch job writes them.

    ``out`` is a results directory (the files land where `run_batch` puts them, under
    the run's ``name``, default its folder name) or a ``.json`` file (one analysis: the
    record there, its arrays next to it as ``.npz``). A valid stored result is reused unless
    ``force``. Errors propagate (nothing is written to failures.json: array tasks would race
    on it; the scheduler records the exit status). Returns ``(records, computed)``.
    """
    from .store import SingleRecordStore

    path = Path(run_path)
    if not (path / "config.json").is_file():
        from ..paper.runs import load_run

        load_run(path)  # raises the run-directory error that explains what is wrong
    label = check_run_name(name if name is not None else default_run_name(path))
    names = parse_analyses(analyses)
    target = Path(out)
    if target.suffix == ".json":
        if len(names) != 1:
            raise InvalidArgumentError(
                "out: a .json file holds one analysis; give one --analysis or a results folder"
            )
        store: ResultStore = SingleRecordStore(target)
    else:
        store = ResultStore(target)
    plan = plan_batch(
        path,
        target,
        names,
        k=k,
        threads=threads,
        force=force,
        runs={label: path},
        steps=[step],
        store=store,
    )
    if plan.problems:
        entry = next(iter(plan.problems.values()))
        raise InvalidArgumentError(f"run: {entry['error']}")
    if not plan.jobs:
        raise InvalidArgumentError(
            f"analysis: {', '.join(names)} does not apply to this run ({plan.not_applicable})"
        )
    computed = bool(plan.tasks)
    for task in plan.tasks:
        result = analyse_checkpoint(task)
        for job, record, arrays in job_records(plan, task, result):
            store.write_result(job, record, arrays)
    records = [store.read_record(job) for job in plan.jobs]
    return [r for r in records if r is not None], computed


def run_serially(
    tasks: Sequence[T],
    compute: Callable[[T], Any],
    done: Callable[[T, Any], None],
    failed: Callable[[T, BaseException, str, int], None],
    retries: int,
) -> None:
    """``compute(task)`` for each task in this process, retried ``retries`` times when it
    raises; then ``done(task, result)``, or ``failed(task, error, traceback, attempts)``."""
    for task in tasks:
        for attempt in range(retries + 1):
            try:
                result = compute(task)
            except Exception as e:
                if attempt < retries:
                    continue
                failed(task, e, traceback.format_exc(), attempt + 1)
            else:
                done(task, result)
            break


def _run_serial(
    tasks: Sequence[CheckpointTask], recorder: Recorder, retries: int, bar: Any
) -> None:
    def done(task: CheckpointTask, result: CheckpointResult) -> None:
        recorder.success(task, result)
        bar.update(len(task.analyses))

    def failed(task: CheckpointTask, exc: BaseException, tb: str, attempts: int) -> None:
        recorder.failure_of(task.jobs, exc, tb, attempts=attempts)
        bar.update(len(task.analyses))

    run_serially(tasks, analyse_checkpoint, done, failed, retries)


def describe_workers(client: Client) -> str:
    """``address: N workers, T threads`` of a client's cluster (for the report)."""
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
        return f"{info.get('address', '?')}: {len(workers)} workers, {threads} threads"
    except Exception:  # the description is informative only
        return str(getattr(client, "scheduler", "dask"))


def warn_damaged(names: Sequence[str], *, stacklevel: int) -> None:
    """Warn that the stored results of the jobs ``names`` are damaged and will be recomputed
    (nothing when there are none); ``stacklevel`` as the caller would give it to
    ``warnings.warn``."""
    if not names:
        return
    shown = ", ".join(names[:5])
    more = f", … ({len(names)} in all)" if len(names) > 5 else ""
    warnings.warn(
        f"out: {len(names)} stored results are damaged and will be recomputed: {shown}{more}",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def finish_report(log: JobLog, start: float, *, failed: bool) -> None:
    """Write the report; when the jobs stopped on an error (``failed``), a report that cannot
    be written (a full disk) is said on stderr rather than raised over that error."""
    try:
        log.finish(start)
    except OSError as e:  # e.g. a full disk: do not hide the error that stopped us
        if not failed:
            raise
        print(f"entk-fast: could not write the batch report: {e}", file=sys.stderr)


def task_keys(labels: Sequence[str]) -> list[str]:
    """Dask keys of one submission's tasks: unique to it, in plain characters whatever the
    labels hold (spaces, commas)."""
    token = uuid.uuid4().hex[:8]
    return [
        f"entk-{re.sub(r'[^A-Za-z0-9._/=+@-]', '_', label)}-{i}-{token}"
        for i, label in enumerate(labels)
    ]


#: Statuses of a future whose result was lost with its worker and is being recomputed.
RECOMPUTING = frozenset({"pending", "lost"})


def drain(
    client: Client,
    futures: dict[Any, T],
    on_done: Callable[[Any, T], None],
    *,
    release: bool = True,
) -> None:
    """Call ``on_done(future, item)`` for each future as it finishes (``release``: then let
    its result go). A future whose result a dying worker took with it is waited for again
    (Dask recomputes it). Any exception (Ctrl-C, one from ``on_done``) cancels the futures not
    yet seen and propagates."""
    from distributed import as_completed

    pending = set(futures)
    try:
        finished = as_completed(list(futures))
        for future in finished:
            if future.status in RECOMPUTING:
                # Its worker died after it finished (or while it was being reported): Dask
                # recomputes it elsewhere, so wait for it again rather than call it failed.
                finished.add(future)
                continue
            pending.discard(future)
            on_done(future, futures[future])
            if release:
                future.release()
    except BaseException:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending))
        raise


def future_error(future: Any, label: str) -> tuple[BaseException, str]:
    """The exception of a future that did not finish and its formatted traceback (a
    cancelled or lost task: an error that says so)."""
    try:
        exc = future.exception()
        tb_obj = future.traceback()
        tb = "".join(traceback.format_exception(type(exc), exc, tb_obj))
    except Exception as e:  # cancelled, or the scheduler lost it
        exc = e if future.status != "cancelled" else RuntimeError(f"task {label} cancelled")
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if exc is None:
        exc = RuntimeError(f"task {label} ended with status {future.status!r}")
    return exc, tb


def _run_dask(
    client: Client, tasks: Sequence[CheckpointTask], recorder: Recorder, retries: int, bar: Any
) -> None:
    futures = {
        client.submit(analyse_checkpoint, task, key=key, retries=retries, pure=False): task
        for task, key in zip(tasks, task_keys([task.label for task in tasks]), strict=True)
    }

    def on_done(future: Any, task: CheckpointTask) -> None:
        if future.status == "finished":
            try:
                result = future.result()
            except Exception as e:  # e.g. the result could not be deserialised here
                recorder.failure_of(task.jobs, e, traceback.format_exc())
            else:
                recorder.success(task, result)
        else:
            exc, tb = future_error(future, task.label)
            recorder.failure_of(task.jobs, exc, tb, attempts=retries + 1)
        bar.update(len(task.analyses))

    drain(client, futures, on_done)
