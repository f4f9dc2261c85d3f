"""The results store of a batch: one JSON record (+ one ``.npz`` of arrays) per job, the
failures file, and the check that decides whether a stored result is still valid.

Layout of a results directory::

    jobs/<run>/step-000010.spectrum.json   the record: inputs, provenance, scalar results
    jobs/<run>/step-000010.spectrum.npz    its arrays (an NTKSpectrum file), when it has any
    failures.json                          jobs that kept failing, with their tracebacks
    batch.json                             the report of the latest batch invocation

Every file is written atomically (temporary file, fsync, rename): the arrays first, then the
record that names them with their sha256, so a record on disk always describes complete
arrays. A stored result is reused only when its recorded inputs (run config, checkpoint
sha256, analysis parameters) equal the current ones and its arrays are intact; a record that
cannot be read as one (edited, truncated, its arrays lost) is *damaged*: reported and
recomputed, never an error.

One batch at a time writes a results directory: `ResultStore.batch_lock` holds an
exclusive lock on ``.batch.lock`` in it (released by the OS when the process ends, crash
included). Temporary files carry their writer's pid and host, and only those of writers that
are gone are removed.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import (
    TMP_FILE_RE,
    atomic_write_json,
    open_regular,
    read_regular_bytes,
    storage_error,
    written_by_dead_process,
)
from ..errors import EntkError, InvalidArgumentError

__all__ = [
    "FAILURES_FILE",
    "RECORD_FORMAT",
    "REPORT_FILE",
    "JobId",
    "ResultStore",
    "SingleRecordStore",
    "failure_entry",
    "file_sha256",
    "record_file_state",
    "utc_timestamp",
    "write_record",
]

RECORD_FORMAT = "entk-fast-batch-result"
FAILURES_FORMAT = "entk-fast-batch-failures"
FORMAT_VERSION = 1
JOBS_DIR = "jobs"
FAILURES_FILE = "failures.json"
REPORT_FILE = "batch.json"
LOCK_FILE = ".batch.lock"
#: The largest record / failures / report file read (they are a few kB to a few MB).
MAX_JSON_BYTES = 256 << 20
#: A run name's parts: anything but separators and control characters (spaces, commas and
#: non-ASCII letters are fine: the name is a folder of the store, never parsed).
_RUN_PART_RE = re.compile(r"^[^/\\\x00-\x1f\x7f]+$")
_RECORD_RE = re.compile(r"^step-(\d+)\.([a-z_]+)\.json$")
_TMP_RE = re.compile(TMP_FILE_RE)


def file_sha256(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, what: str = "path"
) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks).

    Only a regular file is read: a symlink is followed when it points to one, and anything
    else (a device such as /dev/zero, a FIFO, a folder) is refused with
    `InvalidArgumentError` naming ``what`` before a byte is read, as is a file larger
    than ``max_bytes`` (None: no cap). OSError when the file cannot be opened."""
    digest = hashlib.sha256()
    with open_regular(path, max_bytes, what=what) as (f, _):
        total = 0
        for block in iter(lambda: f.read(1 << 20), b""):
            total += len(block)
            if max_bytes is not None and total > max_bytes:
                raise InvalidArgumentError(
                    f"{what}: {os.fspath(path)} grew past {max_bytes} bytes while it was read"
                )
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, order=True)
class JobId:
    """One job: an analysis of one checkpoint of one run. ``run`` is the run's name in the
    store (its path relative to the runs directory, ``/``-separated)."""

    run: str
    step: int
    analysis: str

    @property
    def name(self) -> str:
        return f"{self.run}/step-{self.step:06d}/{self.analysis}"

    def __str__(self) -> str:
        return self.name


def check_run_name(name: str) -> str:
    """A run name usable as a relative path in the store: ``/``-separated folder names, none
    of them ``.`` or ``..`` or holding a backslash or a control character (spaces and commas
    are fine)."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if (
        not parts
        or parts[0] == "/"
        or any(p in (".", "..") or not _RUN_PART_RE.match(p) for p in parts)
    ):
        raise InvalidArgumentError(
            f"run name {name!r}: expected a relative path of folder names without '..', "
            "backslashes or control characters (it names the run's folder in the results store)"
        )
    return "/".join(parts)


def utc_timestamp() -> str:
    """The current UTC time, ISO 8601 to the second (``finished_at``, ``failed_at``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def failure_entry(name: str, exc: BaseException, tb: str, **extra: Any) -> dict[str, Any]:
    """One entry of failures.json: the job's name, the error, its traceback ``tb`` and when
    it failed, with ``extra`` fields (``attempts``, the job's run, step and analysis)."""
    return {
        "job": name,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": tb,
        "failed_at": utc_timestamp(),
        **extra,
    }


class ResultStore:
    """A results directory (created on first use)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgumentError(f"out: {self.root} exists and is not a directory")

    # --- paths --------------------------------------------------------------------------------

    def record_path(self, job: JobId) -> Path:
        return self.root / JOBS_DIR / job.run / f"step-{job.step:06d}.{job.analysis}.json"

    def arrays_path(self, job: JobId) -> Path:
        return self.record_path(job).with_suffix(".npz")

    @property
    def failures_path(self) -> Path:
        return self.root / FAILURES_FILE

    @property
    def report_path(self) -> Path:
        return self.root / REPORT_FILE

    # --- records ------------------------------------------------------------------------------

    def read_record(self, job: JobId) -> dict[str, Any] | None:
        """The stored record of ``job``, or None when absent or unreadable."""
        return _read_json(self.record_path(job))

    def valid_record(self, job: JobId, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """The stored record if it was produced from exactly ``inputs`` and its arrays file
        is intact (same sha256); None otherwise (missing, stale or damaged: recompute)."""
        state, record = self.record_state(job, inputs)
        return record if state == "valid" else None

    def record_state(
        self, job: JobId, inputs: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any] | None]:
        """``(state, record)``: ``"missing"`` (no record file), ``"damaged"`` (a file that
        is not a complete record of this job: unreadable JSON, a field edited or lost, its
        arrays missing or changed), ``"stale"`` (complete, made from other ``inputs``) or
        ``"valid"``. Never raises for what is on disk."""
        return record_file_state(
            self.record_path(job), inputs, lambda record: _job_problem(record, job)
        )

    def recorded_run_path(self, run: str) -> str | None:
        """The run folder (resolved) that the stored results of ``run`` were computed from,
        read from the first readable record of it; None when there is none."""
        folder = self.root / JOBS_DIR / run
        if not folder.is_dir():
            return None
        for path in sorted(folder.glob("step-*.json")):
            record = _read_json(path)
            if record is None or record.get("run") != run:
                continue
            provenance = record.get("provenance")
            if isinstance(provenance, dict) and isinstance(provenance.get("run_path"), str):
                return str(provenance["run_path"])
        return None

    def write_result(
        self, job: JobId, record: dict[str, Any], arrays: Any | None = None
    ) -> dict[str, Any]:
        """Write ``arrays`` (an object with ``.save(path)``, e.g. NTKSpectrum) then the
        record naming them; both atomically. Returns the record as written."""
        return write_record(self.record_path(job), record, arrays)

    def read_report(self) -> dict[str, Any] | None:
        """The report of the latest batch invocation, or None."""
        return _read_json(self.report_path)

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every readable record in the store, in path order."""
        for _, record in self.iter_record_files():
            yield record

    def iter_record_files(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """``(path, record)`` of every readable record in the store, in path order."""
        base = self.root / JOBS_DIR
        if not base.is_dir():
            return
        for path in sorted(base.rglob("step-*.json")):
            if _RECORD_RE.match(path.name):
                record = _read_json(path)
                if record is not None and record.get("format") == RECORD_FORMAT:
                    yield path, record

    def clean_stale_tmp_files(self) -> list[Path]:
        """Remove the temporary files left by writers that were killed mid-write: only those
        whose writer (the pid and host in their name) is a process of this host that no
        longer runs; another live writer's files, and files whose writer is unknown, stay.
        Returns the removed paths."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for path in self.root.rglob(".*.tmp"):
            if _TMP_RE.match(path.name) and written_by_dead_process(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
        return removed

    @contextlib.contextmanager
    def batch_lock(self) -> Iterator[None]:
        """Hold the store's batch lock for the block (``.batch.lock``, an exclusive
        ``flock``: the OS releases it when this process ends, a crash included). A second
        batch on the same store is refused with `InvalidArgumentError` naming ``out``.
        On a file system without locks a warning says so and the block runs unlocked."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise storage_error(e, path) from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    holder = os.pread(fd, 4096, 0).decode("utf-8").strip()
                raise InvalidArgumentError(
                    f"out: {self.root} is in use by another entk-fast batch"
                    + (f" ({holder})" if holder else "")
                    + "; wait for it to finish, or give another --out"
                ) from None
            except OSError as e:  # NFS / Lustre without lock support: ENOLCK, EOPNOTSUPP
                warnings.warn(
                    f"out: cannot lock {path} ({e.strerror or e}); nothing stops a second "
                    "batch from writing the same results folder at the same time",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    # --- failures -----------------------------------------------------------------------------

    def read_failures(self) -> dict[str, dict[str, Any]]:
        """Job name -> failure entry (``error``, ``traceback``, ``attempts``, ...)."""
        data = _read_json(self.failures_path)
        if data is None or data.get("format") != FAILURES_FORMAT:
            return {}
        failures = data.get("failures")
        if not isinstance(failures, dict):
            return {}
        return {str(k): v for k, v in failures.items() if isinstance(v, dict)}

    def write_failures(self, failures: dict[str, dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.failures_path,
            {
                "format": FAILURES_FORMAT,
                "format_version": FORMAT_VERSION,
                "failures": dict(sorted(failures.items())),
            },
        )


class SingleRecordStore(ResultStore):
    """One record at a chosen path (``entk-fast spectrum --out FILE.json``): its arrays go
    to the same name with ``.npz``."""

    def __init__(self, record: str | os.PathLike[str]) -> None:
        path = Path(record)
        if path.suffix != ".json":
            raise InvalidArgumentError(f"out: expected a .json file name, got {path}")
        super().__init__(path.parent)
        self.file = path

    def record_path(self, job: JobId) -> Path:
        return self.file

    def recorded_run_path(self, run: str) -> str | None:
        return None  # one file, replaced by whichever run is written to it


def write_record(path: Path, record: dict[str, Any], arrays: Any | None = None) -> dict[str, Any]:
    """Write ``arrays`` (``.save(path)``) to ``path`` with ``.npz``, then the record ``path``
    naming them with their sha256; both atomically. Returns the record as written.

    Without ``arrays``, the ``.npz`` next to ``path`` is removed only when the record this
    one replaces named it (an older result of the same job): a file of that name written by
    anything else is left alone."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, path.parent) from e
    full = {"format": RECORD_FORMAT, "format_version": FORMAT_VERSION, **record}
    npz = path.with_suffix(".npz")
    previous = _read_json(path) if arrays is None else None
    if arrays is not None:
        arrays.save(npz)
        full["arrays"] = {"file": npz.name, "sha256": file_sha256(npz)}
    else:
        full["arrays"] = None
    full = _normalise(full)
    atomic_write_json(path, full)
    if arrays is None and previous is not None and previous.get("format") == RECORD_FORMAT:
        old = previous.get("arrays")
        if isinstance(old, dict) and old.get("file") == npz.name:
            with contextlib.suppress(FileNotFoundError):
                npz.unlink()  # the arrays of the older record of this job, now replaced
    return full


def record_file_state(
    path: Path,
    inputs: dict[str, Any] | None,
    problem: Callable[[dict[str, Any]], str | None],
) -> tuple[str, dict[str, Any] | None]:
    """`ResultStore.record_state` of the record file ``path``: ``problem(record)`` says
    what makes a well-formed record (format, inputs, result, an arrays entry naming this
    record's ``.npz``) no record of the expected job (None: nothing). Never raises for what
    is on disk."""
    if not (path.exists() or path.is_symlink()):
        return "missing", None
    record = _read_json(path)
    if record is None or _record_problem(record, path) is not None or problem(record) is not None:
        return "damaged", record
    if inputs is not None and record.get("inputs") != _normalise(inputs):
        return "stale", record
    arrays = record["arrays"]
    if arrays is not None:
        try:
            sha = file_sha256(path.with_name(arrays["file"]), max_bytes=None)
        except (OSError, EntkError):
            return "damaged", record
        if sha != arrays["sha256"]:
            return "damaged", record
    return "valid", record


def _record_problem(record: dict[str, Any], path: Path) -> str | None:
    """What makes ``record`` no complete record at ``path`` (None: nothing)."""
    if record.get("format") != RECORD_FORMAT:
        return "not an entk-fast batch record"
    if record.get("format_version") != FORMAT_VERSION:
        return f"format_version {record.get('format_version')!r}"
    if not isinstance(record.get("inputs"), dict):
        return "no inputs"
    if not isinstance(record.get("result"), dict):
        return "no result"
    if "arrays" not in record:
        return "no arrays entry"
    arrays = record["arrays"]
    if arrays is not None and (
        not isinstance(arrays, dict)
        or arrays.get("file") != path.with_suffix(".npz").name
        or not isinstance(arrays.get("sha256"), str)
    ):
        return f"arrays entry {arrays!r} does not name this record's .npz with a sha256"
    return None


def _job_problem(record: dict[str, Any], job: JobId) -> str | None:
    """What makes a complete record no record of the batch job ``job`` (None: nothing)."""
    if (record.get("run"), record.get("step"), record.get("analysis")) != (
        job.run,
        job.step,
        job.analysis,
    ):
        return "it names another job"
    if record["arrays"] is None and job.analysis == "spectrum":
        return "its arrays entry was lost"
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_regular_bytes(path, MAX_JSON_BYTES).decode("utf-8"))
    except (OSError, ValueError, EntkError):
        return None
    return data if isinstance(data, dict) else None


def _normalise(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, ...), for comparisons."""
    return json.loads(json.dumps(obj))
