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
sha256, analysis parameters) equal the current ones and its arrays are intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .._io import TMP_FILE_RE, atomic_write_json
from ..errors import InvalidArgumentError

__all__ = [
    "FAILURES_FILE",
    "RECORD_FORMAT",
    "REPORT_FILE",
    "JobId",
    "ResultStore",
    "SingleRecordStore",
    "file_sha256",
    "write_record",
]

RECORD_FORMAT = "entk-fast-batch-result"
FAILURES_FORMAT = "entk-fast-batch-failures"
FORMAT_VERSION = 1
JOBS_DIR = "jobs"
FAILURES_FILE = "failures.json"
REPORT_FILE = "batch.json"
_RUN_PART_RE = re.compile(r"^[A-Za-z0-9._+=@-]+$")
_RECORD_RE = re.compile(r"^step-(\d+)\.([a-z_]+)\.json$")
_TMP_RE = re.compile(TMP_FILE_RE)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
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
    """A run name usable as a relative path in the store (no ``..``, no odd characters)."""
    parts = PurePosixPath(name).parts
    if not parts or any(p in (".", "..") or not _RUN_PART_RE.match(p) for p in parts):
        raise InvalidArgumentError(
            f"run name {name!r}: expected a relative path of names made of letters, digits "
            "and ._+=@- (it names the run's folder in the results store)"
        )
    return "/".join(parts)


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
        record = self.read_record(job)
        if record is None or record.get("format") != RECORD_FORMAT:
            return None
        if record.get("format_version") != FORMAT_VERSION:
            return None
        if record.get("inputs") != _normalise(inputs):
            return None
        arrays = record.get("arrays")
        if arrays is not None:
            path = self.record_path(job).with_name(str(arrays.get("file", "")))
            try:
                if file_sha256(path) != arrays.get("sha256"):
                    return None
            except OSError:
                return None
        return record

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
        base = self.root / JOBS_DIR
        if not base.is_dir():
            return
        for path in sorted(base.rglob("step-*.json")):
            if _RECORD_RE.match(path.name):
                record = _read_json(path)
                if record is not None and record.get("format") == RECORD_FORMAT:
                    yield record

    def clean_stale_tmp_files(self) -> None:
        """Remove temporary files left by a writer that was killed mid-write."""
        if not self.root.is_dir():
            return
        for path in self.root.rglob(".*.tmp"):
            if _TMP_RE.match(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()

    # --- failures -----------------------------------------------------------------------------

    def read_failures(self) -> dict[str, dict[str, Any]]:
        """Job name -> failure entry (``error``, ``traceback``, ``attempts``, ...)."""
        data = _read_json(self.failures_path)
        if data is None or data.get("format") != FAILURES_FORMAT:
            return {}
        failures = data.get("failures")
        return dict(failures) if isinstance(failures, dict) else {}

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


def write_record(path: Path, record: dict[str, Any], arrays: Any | None = None) -> dict[str, Any]:
    """Write ``arrays`` (``.save(path)``) to ``path`` with ``.npz``, then the record ``path``
    naming them with their sha256; both atomically. Returns the record as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": RECORD_FORMAT, "format_version": FORMAT_VERSION, **record}
    npz = path.with_suffix(".npz")
    if arrays is not None:
        arrays.save(npz)
        full["arrays"] = {"file": npz.name, "sha256": file_sha256(npz)}
    else:
        full["arrays"] = None
    full = _normalise(full)
    atomic_write_json(path, full)
    if arrays is None:
        with contextlib.suppress(FileNotFoundError):
            npz.unlink()  # a stale one from an older record of this job
    return full


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _normalise(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples -> lists, ...), for comparisons."""
    return json.loads(json.dumps(obj))
