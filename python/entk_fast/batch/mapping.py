"""Your own function over your own items (checkpoints, models, anything picklable) as
resumable jobs in a results folder, serially or on Dask: one record per item, written
atomically by the task that computed it, with the failures and the report that `run_batch`
writes.

Layout of the results folder::

    jobs/<name>.json     the record: inputs, provenance, the function's results
    jobs/<name>.npz      its arrays, when the function returned any
    failures.json        jobs that kept failing, with their tracebacks
    batch.json           the report of the latest invocation
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
import uuid
import weakref
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_open, json_default
from .._validate import check_bool, check_int
from ..errors import CheckpointError, EntkError, InvalidArgumentError, InvalidTypeError
from .cluster import open_client, require_dask
from .execute import (
    describe_workers,
    drain,
    file_state,
    finish_report,
    future_error,
    pinned_threads,
    run_serially,
    task_keys,
    warn_damaged,
)
from .plan import MAX_CHECKPOINT_BYTES
from .records import BatchReport, JobLog, process_provenance
from .store import (
    JOBS_DIR,
    ResultStore,
    check_run_name,
    file_sha256,
    record_file_state,
    utc_timestamp,
    write_record,
)

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, Future

__all__ = ["JobResult", "SubmittedJobs", "read_jobs", "run_jobs", "submit_jobs"]


@dataclass(frozen=True)
class JobResult:
    """One finished job of `run_jobs`: its record as written and where it lies.

    ``record`` holds ``job`` (the name), ``inputs`` (what identifies the item: a file's
    sha256, or the item itself, or what ``fingerprint`` made of it, and ``params``),
    ``provenance`` (the item's file, the function, versions, host, process, threads, seconds,
    ``finished_at``), ``result`` (the function's dict) and ``arrays`` (the ``.npz`` beside
    the record with its sha256, or None).

    Examples:
        >>> import tempfile
        >>> from entk_fast.batch import read_jobs, run_jobs
        >>> out = tempfile.mkdtemp()
        >>> _ = run_jobs(lambda n: ({"n": n}, {"squares": [i * i for i in range(n)]}),
        ...              {"three": 3}, out)
        >>> job = read_jobs(out)["three"]
        >>> job.result, job.arrays()["squares"], job.arrays_path.name
        ({'n': 3}, array([0, 1, 4]), 'three.npz')
    """

    name: str
    record: dict[str, Any]
    path: Path
    """The record file (``jobs/<name>.json``)."""

    @property
    def result(self) -> dict[str, Any]:
        """The dict the function returned (as JSON reads it back)."""
        result: dict[str, Any] = self.record["result"]
        return result

    @property
    def arrays_path(self) -> Path | None:
        """The job's ``.npz`` (None when the function returned no arrays). An object saved
        with its own ``save`` reads back with its ``load``: ``NTKSpectrum.load(path)``."""
        arrays = self.record.get("arrays")
        return None if arrays is None else self.path.with_name(arrays["file"])

    def arrays(self) -> dict[str, np.ndarray]:
        """The job's arrays, read into memory (empty when it has none)."""
        path = self.arrays_path
        if path is None:
            return {}
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def run_jobs(
    fn: Callable[[Any], Any],
    items: Mapping[str, Any] | Iterable[Any],
    out: str | os.PathLike[str],
    *,
    name: Callable[[Any], str] | None = None,
    fingerprint: Callable[[Any], Any] | None = None,
    params: Mapping[str, Any] | None = None,
    client: Client | None = None,
    workers: int | None = None,
    retries: int = 2,
    threads: int | None = 1,
    overwrite: bool = False,
    progress: bool | None = False,
) -> BatchReport:
    """Run ``fn(item)`` for every item and store each result in ``out``, resumably.

    Each job writes its record atomically the moment it finishes (on the worker that ran
    it, so Dask workers must see ``out``); a job whose record is there, valid and made from
    the same inputs is skipped, so an interrupted call continues where it stopped when run
    again. A job that keeps raising is written to ``out/failures.json`` with its traceback
    and the others go on.

    Args:
        fn: ``fn(item) -> dict`` (JSON results: numbers, strings, lists, dicts; numpy
            scalars and arrays become numbers and lists) or ``(dict, arrays)``, where
            ``arrays`` is a dict of numpy arrays (or tensors), or an object with
            ``save(path)`` such as an `NTKSpectrum`: written as ``jobs/<name>.npz``.
            It is pickled to the workers: load big things (models) inside it.
        items: a mapping ``name -> item``, or an iterable of items named by ``name``. Paths
            (str or ``os.PathLike``) are named by default after their path below the
            items' common folder (``runs/a/ckpt.pt``, ``runs/b/ckpt.pt``: ``a/ckpt.pt``,
            ``b/ckpt.pt``). A name is a relative ``/``-separated path (a job's files are
            ``out/jobs/<name>.json``, ``.npz``).
        out: the results folder; one invocation at a time writes it (a second one is
            refused, `InvalidArgumentError` naming ``out``).
        name: ``name(item) -> str`` for items given as an iterable.
        fingerprint: ``fingerprint(item)`` -> JSON: what identifies an item, stored in the
            record; a job is rerun when it changes. Default: an item that names a regular
            file is identified by the file's sha256 (rehashed by the task, which also checks
            that the file did not change while ``fn`` ran), another path by its string, a
            JSON item by itself, anything else by its name only.
        params: the parameters of ``fn`` (JSON), stored in every record: changing them
            reruns every job.
        client: a ``dask.distributed.Client``: one task per job on its workers. None (and
            no ``workers``): the jobs run one by one in this process.
        workers: run on a local cluster of this many worker processes (`open_client`),
            started only when some job is left to run. Not with ``client``.
        retries: extra attempts of a job that raised.
        threads: Rust and torch threads inside each job (default 1, so workers sharing a
            node do not oversubscribe it; None leaves them as they are).
        overwrite: rerun the jobs whose stored result is valid too.
        progress: a progress bar over finished jobs (None: on a terminal).

    Returns:
        A `BatchReport` (also written to ``out/batch.json``): the names of the jobs
        succeeded, skipped (already done), failed, recomputed (inputs changed) and damaged
        (a stored record found unreadable, rerun). Read the results with `read_jobs`.
        Ctrl-C cancels the jobs not started, writes the report (``interrupted``) and
        propagates; the finished results stay valid.

    Raises:
        InvalidTypeError: ``fn``, ``name``, ``fingerprint`` or ``client`` is not what it
            should be, or ``items`` is not a collection.
        InvalidArgumentError: ``items`` is empty, two items have one name, a name is not a
            relative path, ``out`` is in use, or ``client`` and ``workers`` are both given.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from entk_fast.batch import read_jobs, run_jobs
        >>> def moments(x):
        ...     return {"mean": float(np.mean(x))}, {"cumsum": np.cumsum(x)}
        >>> out = tempfile.mkdtemp()
        >>> run_jobs(moments, {"a": [1, 2, 3], "b": [4, 5]}, out).succeeded
        ['a', 'b']
        >>> run_jobs(moments, {"a": [1, 2, 3], "b": [4, 5, 6]}, out).skipped  # b changed
        ['a']
        >>> jobs = read_jobs(out)
        >>> jobs["b"].result, jobs["b"].arrays()["cumsum"]
        ({'mean': 5.0}, array([ 4,  9, 15]))
    """
    spec = _JobSpec.make(fn, items, name, fingerprint, params, retries, threads, overwrite)
    if client is not None and workers is not None:
        raise InvalidArgumentError(
            "workers: a client's workers are started elsewhere; give client or workers"
        )
    if workers is not None:
        workers = check_int("workers", workers, minimum=1)
    if client is not None:
        _check_client(client)
    store = ResultStore(out)
    with store.batch_lock():
        session = _Session(spec, store)
        warn_damaged(session.report.damaged, stacklevel=2)
        if client is not None:
            session.submit(client).wait(progress=progress)
        elif workers is not None and session.tasks:
            with open_client(workers=workers, dashboard=False) as local:
                session.submit(local).wait(progress=progress)
        else:  # in this process (or nothing is left to run: no cluster to start)
            session.run_serially(progress)
    return session.report


def submit_jobs(
    fn: Callable[[Any], Any],
    items: Mapping[str, Any] | Iterable[Any],
    out: str | os.PathLike[str],
    *,
    client: Client,
    name: Callable[[Any], str] | None = None,
    fingerprint: Callable[[Any], Any] | None = None,
    params: Mapping[str, Any] | None = None,
    retries: int = 2,
    threads: int | None = 1,
    overwrite: bool = False,
) -> SubmittedJobs:
    """`run_jobs` on a Dask client without waiting: the jobs still to run are submitted
    and their futures returned at once.

    Each task writes its job's record itself when it finishes, so the records are there
    whether or not anyone waits; `SubmittedJobs.wait` then writes the failures and the
    report. Until it (or `SubmittedJobs.cancel`) returns, ``out`` stays locked against
    another invocation. The arguments are `run_jobs`'s.

    Returns:
        A `SubmittedJobs`: ``futures`` (name -> future of the jobs submitted; each one's
        result is the job's `JobResult`, its error the job's), ``skipped`` (the jobs
        already done), ``wait()`` and ``cancel()``.

    Examples:
        >>> import tempfile
        >>> from distributed import Client
        >>> from entk_fast.batch import submit_jobs
        >>> with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0") as client:
        ...     jobs = submit_jobs(lambda n: {"square": n * n}, {"two": 2, "three": 3},
        ...                        tempfile.mkdtemp(), client=client)
        ...     print(jobs.futures["three"].result().result)
        ...     print(jobs.wait().summary().split(";")[0])
        {'square': 9}
        2 succeeded (0 with changed inputs), 0 skipped (already done), 0 failed
    """
    spec = _JobSpec.make(fn, items, name, fingerprint, params, retries, threads, overwrite)
    _check_client(client)
    store = ResultStore(out)
    lock = contextlib.ExitStack()
    lock.enter_context(store.batch_lock())
    try:
        session = _Session(spec, store)
        warn_damaged(session.report.damaged, stacklevel=2)
        submitted = session.submit(client, lock=lock)
    except BaseException:
        lock.close()
        raise
    return submitted


def read_jobs(out: str | os.PathLike[str]) -> dict[str, JobResult]:
    """Every complete job record of a `run_jobs` results folder, by name (sorted).

    A record that is damaged (truncated, edited, its arrays changed or lost: its sha256 is
    checked) is left out; `run_jobs` reruns it. Records of `run_batch` are not jobs of
    `run_jobs` and are left out too.

    Examples:
        >>> import tempfile
        >>> from entk_fast.batch import read_jobs, run_jobs
        >>> out = tempfile.mkdtemp()
        >>> _ = run_jobs(lambda s: {"length": len(s)}, {"abc": "abc", "de": "de"}, out)
        >>> {name: job.result["length"] for name, job in read_jobs(out).items()}
        {'abc': 3, 'de': 2}
    """
    root = Path(out)
    if not root.is_dir():
        raise InvalidArgumentError(f"out: {root} is not a results folder")
    base = root / JOBS_DIR
    found: dict[str, JobResult] = {}
    if not base.is_dir():
        return found
    for path in sorted(base.rglob("*.json")):
        name = path.relative_to(base).with_suffix("").as_posix()
        state, record = record_file_state(path, None, _names(name))
        if state == "valid" and record is not None:
            found[name] = JobResult(name, record, path)
    return dict(sorted(found.items()))


class SubmittedJobs:
    """The jobs `submit_jobs` sent to a Dask client.

    Attributes:
        futures: job name -> ``distributed.Future`` of each job submitted; its result is
            the `JobResult` (the record is written by then), its error the job's last one.
        skipped: the jobs already done (a valid record with the same inputs).
        out: the results folder.

    Examples:
        >>> import tempfile
        >>> from distributed import Client
        >>> from entk_fast.batch import submit_jobs
        >>> def check(n):
        ...     if n < 0:
        ...         raise ValueError(f"negative: {n}")
        ...     return {"n": n}
        >>> with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0") as client:
        ...     jobs = submit_jobs(check, {"ok": 1, "bad": -1}, tempfile.mkdtemp(),
        ...                        client=client, retries=0)
        ...     report = jobs.wait()
        >>> report.succeeded, report.failed
        (['ok'], ['bad'])
    """

    def __init__(
        self,
        session: _Session,
        client: Client,
        futures: dict[Future, _Task],
        lock: contextlib.ExitStack | None,
    ) -> None:
        self.out = session.store.root
        self.futures: dict[str, Future] = {task.name: f for f, task in futures.items()}
        self.skipped = list(session.report.skipped)
        self._session = session
        self._client = client
        self._by_future = futures
        self._cancelled = False
        self._finished = False
        # a handle dropped without wait() still lets the next invocation have the folder
        self._release = weakref.finalize(self, lock.close) if lock is not None else None

    def wait(self, *, progress: bool | None = False) -> BatchReport:
        """Wait for every job, record the failures and write the report; returns it (a
        second call returns it again). Ctrl-C cancels the jobs not started, writes the
        report (``interrupted``) and propagates."""
        if self._finished:
            return self._session.report
        session, report = self._session, self._session.report
        bar = None
        failed = False
        try:
            from .._progress import progress_bar

            bar = progress_bar(progress, len(report.skipped) + len(self._by_future), "jobs", "job")
            bar.update(len(report.skipped))

            def on_done(future: Any, task: _Task) -> None:
                if future.status == "finished":
                    try:
                        future.result()
                    except Exception as e:  # e.g. the result could not be deserialised here
                        session.log.failure_of([task], e, traceback.format_exc())
                    else:
                        session.log.succeeded([task])
                elif not (self._cancelled and future.status == "cancelled"):
                    exc, tb = future_error(future, task.name)
                    session.log.failure_of([task], exc, tb, attempts=session.spec.retries + 1)
                bar.update(1)

            drain(self._client, self._by_future, on_done, release=False)
            report.interrupted = self._cancelled
        except BaseException:
            report.interrupted = True
            failed = True
            raise
        finally:
            self._finished = True
            if bar is not None:
                bar.close()
            try:
                finish_report(session.log, session.start, failed=failed)
            finally:
                if self._release is not None:
                    self._release()
        return report

    def cancel(self) -> BatchReport:
        """Cancel the jobs not finished, then `wait` for the rest: the report lists what
        finished (``interrupted`` is set). A job already running may still write its record
        (a valid one, skipped by the next invocation)."""
        if not self._finished:
            self._cancelled = True
            pending = [f for f in self._by_future if not f.done()]
            if pending:
                self._client.cancel(pending)
        return self.wait()


# --- the jobs of one invocation ---------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    name: str
    item: Any
    file: str | None
    """The regular file the item names (hashed), resolved; None when it names none."""
    fingerprint: Any
    """What identifies the item besides its file (JSON)."""


@dataclass(frozen=True)
class _Task:
    """One job as a task receives it: it computes ``fn(item)`` and writes the record."""

    fn: Callable[[Any], Any]
    name: str
    item: Any
    file: str | None
    inputs: dict[str, Any]
    path: str
    threads: int | None
    submission: str


@dataclass(frozen=True)
class _JobSpec:
    """The checked arguments of one invocation (nothing on disk read yet)."""

    fn: Callable[[Any], Any]
    items: list[_Item]
    params: Any
    retries: int
    threads: int | None
    overwrite: bool

    @classmethod
    def make(
        cls,
        fn: Any,
        items: Any,
        name: Any,
        fingerprint: Any,
        params: Any,
        retries: Any,
        threads: Any,
        overwrite: Any,
    ) -> _JobSpec:
        if not callable(fn):
            raise InvalidTypeError(
                f"fn: expected a function fn(item) -> dict, got {type(fn).__name__}"
            )
        for what, value in (("name", name), ("fingerprint", fingerprint)):
            if value is not None and not callable(value):
                raise InvalidTypeError(
                    f"{what}: expected a function of an item, got {type(value).__name__}"
                )
        if params is not None and not isinstance(params, Mapping):
            raise InvalidTypeError(f"params: expected a dict of JSON values, got {type(params)}")
        params = _json_value("params", None if params is None else dict(params))
        retries = check_int("retries", retries, minimum=0)
        if threads is not None:
            threads = check_int("threads", threads, minimum=1)
        overwrite = check_bool("overwrite", overwrite)
        named = _named_items(items, name)
        listed = []
        for job_name, item in named:
            file = _file_of(item) if fingerprint is None else None
            if fingerprint is not None:
                value = _json_value("fingerprint", fingerprint(item), job_name)
            elif file is not None:
                value = None
            else:
                value = _default_fingerprint(item)
            listed.append(_Item(job_name, item, file, value))
        return cls(fn, listed, params, retries, threads, overwrite)


class _Session:
    """One invocation on a locked store: the jobs still to run, the report and the log."""

    def __init__(self, spec: _JobSpec, store: ResultStore) -> None:
        self.start = time.perf_counter()
        self.spec = spec
        self.store = store
        store.clean_stale_tmp_files()
        self.report = BatchReport(out=store.root)
        submission = uuid.uuid4().hex
        self.tasks: list[_Task] = []
        stale: list[str] = []
        for item in spec.items:
            fingerprint = item.fingerprint
            if item.file is not None:
                try:
                    fingerprint = {"sha256": _sha256(Path(item.file))}
                except (OSError, EntkError) as e:  # the task fails on it, with its traceback
                    fingerprint = {"sha256": f"unreadable: {e}"}
            inputs = {"item": fingerprint, "params": spec.params}
            path = _record_path(store, item.name)
            state, _ = record_file_state(path, inputs, _names(item.name))
            if state == "valid" and not spec.overwrite:
                self.report.skipped.append(item.name)
                continue
            if state == "damaged":
                self.report.damaged.append(item.name)
            elif state != "missing":
                stale.append(item.name)
            self.tasks.append(
                _Task(
                    spec.fn,
                    item.name,
                    item.item,
                    item.file,
                    inputs,
                    str(path),
                    spec.threads,
                    submission,
                )
            )
        self.log = JobLog(store, self.report, None, skipped=self.report.skipped, stale=stale)

    def run_serially(self, progress: bool | None) -> None:
        from .._progress import progress_bar

        bar = None
        failed = False
        try:
            bar = progress_bar(progress, len(self.spec.items), "jobs", unit="job")
            bar.update(len(self.report.skipped))

            def done(task: _Task, result: JobResult) -> None:
                self.log.succeeded([task])
                bar.update(1)

            def failed_job(task: _Task, exc: BaseException, tb: str, attempts: int) -> None:
                self.log.failure_of([task], exc, tb, attempts=attempts)
                bar.update(1)

            run_serially(self.tasks, _run_task, done, failed_job, self.spec.retries)
        except BaseException:
            self.report.interrupted = True
            failed = True
            raise
        finally:
            if bar is not None:
                bar.close()
            finish_report(self.log, self.start, failed=failed)

    def submit(self, client: Client, *, lock: contextlib.ExitStack | None = None) -> SubmittedJobs:
        self.report.workers = describe_workers(client)
        keys = task_keys([task.name for task in self.tasks])
        futures = {}
        try:
            for task, key in zip(self.tasks, keys, strict=True):
                future = client.submit(
                    _run_task, task, key=key, retries=self.spec.retries, pure=False
                )
                futures[future] = task
        except BaseException:
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
            self.report.interrupted = True
            finish_report(self.log, self.start, failed=True)
            raise
        return SubmittedJobs(self, client, futures, lock)


# --- the task ---------------------------------------------------------------------------------


def _run_task(task: _Task) -> JobResult:
    """Compute one job and write its record (in the worker that runs it)."""
    path = Path(task.path)
    state, record = record_file_state(path, None, _names(task.name))
    earlier = record.get("provenance") if record is not None else None
    if (
        state == "valid"
        and record is not None
        and isinstance(earlier, dict)
        and earlier.get("submission") == task.submission
    ):
        # an earlier attempt of this very task wrote it, and its worker died before it could
        # say so: the record is written once
        return JobResult(task.name, record, path)
    start = time.perf_counter()
    with pinned_threads(task.threads):
        inputs = task.inputs
        file = None if task.file is None else Path(task.file)
        if file is not None:
            try:
                before = file_state(file)
                inputs = {**inputs, "item": {"sha256": _sha256(file)}}
            except (OSError, EntkError) as e:
                raise CheckpointError(f"cannot read {file}: {e}") from e
        output = task.fn(task.item)
        if file is not None and file_state(file) != before:
            raise CheckpointError(f"{file} changed while the job read it; retry")
        result, arrays = _split_output(output, task.name)
        provenance = {
            "file": task.file,
            "fn": _describe_fn(task.fn),
            "submission": task.submission,
            **process_provenance(start),
            "finished_at": utc_timestamp(),
        }
    written = write_record(
        path,
        {"job": task.name, "inputs": inputs, "provenance": provenance, "result": result},
        arrays,
    )
    return JobResult(task.name, written, path)


def _split_output(output: Any, name: str) -> tuple[dict[str, Any], Any]:
    expected = (
        "expected a dict of JSON results, or (dict, arrays) with arrays a dict of numpy "
        "arrays or an object with save(path) such as an NTKSpectrum"
    )
    arrays = None
    if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], Mapping):
        output, arrays = output
        if isinstance(arrays, Mapping):
            arrays = _ArraysFile(arrays, name)
        elif arrays is not None and not callable(getattr(arrays, "save", None)):
            raise InvalidTypeError(
                f"fn: returned arrays of type {type(arrays).__name__} for job {name!r}; " + expected
            )
    if not isinstance(output, Mapping):
        raise InvalidTypeError(
            f"fn: returned {type(output).__name__} for job {name!r}; "
            "expected a dict of JSON results, or (dict, arrays)"
        )
    try:
        result = json.loads(json.dumps(dict(output), default=json_default))
    except (TypeError, ValueError) as e:
        raise InvalidTypeError(
            f"fn: the results of job {name!r} are not JSON ({e}); return numbers (.item() of "
            "a tensor), strings, lists and dicts, and arrays as the second element"
        ) from None
    return result, arrays


class _ArraysFile:
    """A dict of arrays with the ``save(path)`` that `write_record` calls: one ``.npz``
    (uncompressed, no pickles), written atomically."""

    def __init__(self, arrays: Mapping[str, Any], name: str) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise InvalidTypeError(
                    f"fn: array name {key!r} of job {name!r}: expected a non-empty str without '/'"
                )
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise InvalidTypeError(
                    f"fn: array {key!r} of job {name!r} holds Python objects; return numeric arrays"
                )
            self.arrays[key] = array

    def save(self, path: Path) -> None:
        # np.savez's own keyword arguments would clash with arrays named "file" or
        # "allow_pickle": the members are written as it writes them
        with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            for key, array in self.arrays.items():
                with z.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)


# --- items, names, fingerprints ---------------------------------------------------------------


def _named_items(items: Any, name: Any) -> list[tuple[str, Any]]:
    if isinstance(items, Mapping):
        if name is not None:
            raise InvalidArgumentError(
                "name: items is a mapping whose keys name the jobs; drop name"
            )
        pairs = list(items.items())
        for key, _ in pairs:
            if not isinstance(key, str):
                raise InvalidTypeError(
                    f"items: a mapping's keys are the job names (str), got {type(key).__name__}"
                )
    else:
        if isinstance(items, str | bytes | os.PathLike) or not isinstance(items, Iterable):
            raise InvalidTypeError(
                "items: expected a list of items (e.g. checkpoint paths) or a mapping "
                f"name -> item, got {type(items).__name__}"
            )
        listed = list(items)
        if name is None:
            names = _default_names(listed)
        else:
            names = [name(item) for item in listed]
            for given in names:
                if not isinstance(given, str):
                    raise InvalidTypeError(
                        f"name: expected a str for each item, got {type(given).__name__}"
                    )
        pairs = list(zip(names, listed, strict=True))
    if not pairs:
        raise InvalidArgumentError("items: no items; give at least one")
    checked = [(_check_name(job_name), item) for job_name, item in pairs]
    counts = Counter(job_name for job_name, _ in checked)
    twice = [job_name for job_name, n in counts.items() if n > 1]
    if twice:
        raise InvalidArgumentError(
            f"name: {counts[twice[0]]} items are named {twice[0]!r}"
            + (f" ({len(twice)} names are taken more than once)" if len(twice) > 1 else "")
            + "; each job needs its own name (give name= or a mapping name -> item)"
        )
    return checked


def _check_name(job_name: str) -> str:
    try:
        return check_run_name(job_name)
    except InvalidArgumentError:
        raise InvalidArgumentError(
            f"name: job name {job_name!r}: expected a relative path of folder names without "
            "'..', backslashes or control characters (the job's files are out/jobs/NAME.json)"
        ) from None


def _default_names(items: list[Any]) -> list[str]:
    """Paths named after their path below the items' common folder (a single path: its
    file name)."""
    if not all(isinstance(item, str | os.PathLike) for item in items):
        kinds = sorted({type(i).__name__ for i in items if not isinstance(i, str | os.PathLike)})
        raise InvalidArgumentError(
            f"name: items of type {', '.join(kinds)} have no name of their own; give items as "
            "a mapping name -> item, or name=function(item) -> str"
        )
    paths = [PurePath(os.fspath(item)).as_posix() for item in items]
    if len(paths) == 1:
        return [PurePath(paths[0]).name or paths[0]]
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # absolute and relative paths mixed
        common = ""
    if not common:
        return paths
    return [PurePath(os.path.relpath(path, common)).as_posix() for path in paths]


def _file_of(item: Any) -> str | None:
    if isinstance(item, str | os.PathLike):
        with contextlib.suppress(OSError, TypeError, ValueError):
            path = Path(os.fspath(item))
            if path.is_file():
                return str(path.resolve())
    return None


def _default_fingerprint(item: Any) -> Any:
    if isinstance(item, os.PathLike):
        return os.fspath(item) if isinstance(os.fspath(item), str) else None
    try:
        return json.loads(json.dumps(item, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return None  # identified by its name only


def _json_value(what: str, value: Any, job_name: str | None = None) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=json_default))
    except (TypeError, ValueError) as e:
        where = f" for item {job_name!r}" if job_name is not None else ""
        raise InvalidTypeError(
            f"{what}: expected JSON values (str, finite numbers, lists, dicts){where}: {e}"
        ) from None


def _sha256(file: Path) -> str:
    return file_sha256(file, max_bytes=MAX_CHECKPOINT_BYTES, what="item")


def _record_path(store: ResultStore, name: str) -> Path:
    return store.root / JOBS_DIR / f"{name}.json"


def _names(name: str) -> Callable[[dict[str, Any]], str | None]:
    """The check that a complete record is the one of the job ``name``."""

    def problem(record: dict[str, Any]) -> str | None:
        return None if record.get("job") == name else "it names another job"

    return problem


def _describe_fn(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _check_client(client: Any) -> None:
    require_dask()
    from distributed import Client

    if not isinstance(client, Client):
        raise InvalidTypeError(
            f"client: expected a dask.distributed.Client (or None: run in this process), "
            f"got {type(client).__name__}"
        )
