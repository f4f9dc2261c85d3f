"""Batch analysis of training runs: jobs = runs × checkpoints × analyses, run as Dask tasks
(or serially in this process), each result written to the store as it completes.

One Dask task analyses one checkpoint: it loads the model once, computes one spectrum and
derives every requested analysis of that checkpoint from it (the overlaps need the top
4p − 3 eigenvectors that the spectrum job computes anyway). Results travel back to the
client, which is the only writer of the store: a job's record is written the moment its task
finishes, so an interrupted batch keeps every finished result and a re-run computes only
what is missing or stale.

Analyses:

* ``spectrum``: the top-k eigenpairs (default k = 200, or the kernel's order when smaller)
  of the traced eNTK (modadd) or the flattened eNTK (other tasks), float64, on the run's
  whole data set; saved as an :class:`~entk_fast.NTKSpectrum` ``.npz`` next to the record.
* ``overlaps`` (modadd runs with odd p ≥ 3): the subspace overlaps Σ cos² of the cliff
  blocks of eigenvectors 2..2p−1 and 2p..4p−3 with the Fourier families a, b, a+b, a−b,
  and the cliff ratios λ_k / λ_{k+1} at k = 1, 2p − 1, 4p − 3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import re
import socket
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import linalg
from .._validate import check_int
from .._version import __version__
from ..errors import CheckpointError, EntkError, InvalidArgumentError, StorageError
from .store import JobId, ResultStore, check_run_name, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

    from ..paper.runs import Run
    from ..results import NTKSpectrum

__all__ = [
    "ANALYSES",
    "DEFAULT_K",
    "BatchPlan",
    "BatchReport",
    "CheckpointTask",
    "analyse_checkpoint",
    "find_runs",
    "parse_analyses",
    "plan_batch",
    "run_batch",
    "run_checkpoint",
]

ANALYSES = ("spectrum", "overlaps")
DEFAULT_K = 200
#: The largest checkpoint file a batch reads (hashes and loads); a bigger one, or anything
#: that is not a regular file (a symlink to /dev/zero, a FIFO), is a failed job.
MAX_CHECKPOINT_BYTES = 16 << 30
#: Bumped when an analysis changes what it computes, so stored results are recomputed.
ANALYSIS_VERSION = 1

#: Called after each finished task with its jobs and whether they succeeded.
ResultCallback = Callable[[list[JobId], bool], None]


# --- what to compute --------------------------------------------------------------------------


def parse_analyses(analyses: str | Iterable[str]) -> tuple[str, ...]:
    """``"spectrum,overlaps"`` or an iterable of names -> a tuple of known analyses."""
    names = analyses.split(",") if isinstance(analyses, str) else list(analyses)
    names = [n.strip() for n in names if isinstance(n, str) and n.strip()]
    if not names:
        raise InvalidArgumentError(f"analysis: expected one or more of {', '.join(ANALYSES)}")
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise InvalidArgumentError(
            f"analysis: unknown {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(ANALYSES)} (comma-separated)"
        )
    return tuple(dict.fromkeys(names))


def analysis_params(analysis: str, kind: str, config: Any, k: int) -> dict[str, Any] | None:
    """The parameters that define ``analysis`` of a run (recorded with its result and
    compared on resume), or None when it does not apply to this kind of run."""
    if analysis == "spectrum":
        return {
            "k": k,
            "reduction": "trace" if kind == "modadd" else "flattened",
            "dtype": "float64",
            "method": "auto",
            "seed": 0,
            "version": ANALYSIS_VERSION,
        }
    if analysis == "overlaps":
        p = getattr(config, "p", None)
        if kind != "modadd" or not isinstance(p, int) or p < 3 or p % 2 == 0:
            return None
        from ..analysis import FAMILIES

        return {
            "blocks": [[2, 2 * p - 1], [2 * p, 4 * p - 3]],
            "families": list(FAMILIES),
            "cliffs": [1, 2 * p - 1, 4 * p - 3],
            "reduction": "trace",
            "dtype": "float64",
            "seed": 0,
            "version": ANALYSIS_VERSION,
        }
    raise InvalidArgumentError(f"analysis: unknown {analysis!r}; choose from {ANALYSES}")


@dataclass(frozen=True)
class CheckpointTask:
    """The unit of work of one Dask task: some analyses of one checkpoint."""

    run: str
    run_path: str
    step: int
    analyses: tuple[str, ...]
    params: dict[str, dict[str, Any]]
    threads: int | None = 1
    """Rust and torch threads in the task (None: leave them as they are)."""

    @property
    def label(self) -> str:
        return f"{self.run}/step-{self.step:06d}"

    @property
    def jobs(self) -> list[JobId]:
        return [JobId(self.run, self.step, a) for a in self.analyses]


@dataclass(frozen=True)
class CheckpointResult:
    """What :func:`analyse_checkpoint` returns: per analysis its scalar results and arrays."""

    checkpoint_sha256: str
    results: dict[str, dict[str, Any]]
    arrays: dict[str, Any]
    provenance: dict[str, Any]


# --- the task ---------------------------------------------------------------------------------


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


def _file_state(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def analyse_checkpoint(task: CheckpointTask) -> CheckpointResult:
    """Compute the analyses of one checkpoint (the body of a Dask task; also run serially).

    Raises whatever the computation raises (a corrupt checkpoint: ``CheckpointError``); the
    driver retries and records it.
    """
    import torch

    from ..ntk.spectrum import entk_spectrum
    from ..paper.runs import checkpoint_path, load_run

    start = time.perf_counter()
    with pinned_threads(task.threads):
        run = load_run(task.run_path)
        file = checkpoint_path(run.path, task.step)
        try:
            before = _file_state(file)
            sha = file_sha256(file, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint")
        except (OSError, InvalidArgumentError) as e:
            raise CheckpointError(f"cannot read checkpoint {file}: {e}") from e
        model = run.load_checkpoint(task.step)
        if _file_state(file) != before:
            raise CheckpointError(f"checkpoint {file} changed while it was read; retry")
        x = _model_inputs(run)
        spec_params = task.params.get("spectrum")
        over_params = task.params.get("overlaps")
        base = spec_params if spec_params is not None else over_params
        assert base is not None
        n = _kernel_order(model, x, base["reduction"])
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
            results["spectrum"] = _spectrum_summary(part, n)
            arrays["spectrum"] = part
        if over_params is not None:
            results["overlaps"] = _overlaps(spec, run.config.p, over_params)
        provenance = {
            "run_path": str(run.path.resolve()),
            "checkpoint": str(file.resolve()),
            "entk_fast": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": {"rust": linalg.get_num_threads(), "torch": torch.get_num_threads()},
            "seconds": time.perf_counter() - start,
        }
    return CheckpointResult(sha, results, arrays, provenance)


def _kernel_order(model: Any, x: Any, reduction: str) -> int:
    import torch

    first = tuple(t[:1] for t in x) if isinstance(x, tuple) else x[:1]
    n = int((x[0] if isinstance(x, tuple) else x).shape[0])
    if reduction != "flattened":
        return n
    with torch.no_grad():
        out = model(*first) if isinstance(first, tuple) else model(first)
    return n * int(out[0].numel())


def _spectrum_summary(spec: NTKSpectrum, n: int) -> dict[str, Any]:
    info = {
        key: value
        for key, value in spec.info.items()
        if isinstance(value, bool | int | float | str) and not isinstance(value, np.generic)
    }
    return {
        "k": len(spec),
        "order": n,
        "method": spec.method,
        "n_parameters": spec.n_parameters,
        "leading_eigenvalues": spec.eigenvalues[:8].tolist(),
        "gaps": [[index, ratio] for index, ratio in spec.gaps(5)],
        "info": info,
    }


def _overlaps(spec: NTKSpectrum, p: int, params: dict[str, Any]) -> dict[str, Any]:
    from ..analysis import block_overlaps

    blocks = [(int(a), int(b)) for a, b in params["blocks"]]
    families = tuple(params["families"])
    values = spec.eigenvalues
    if spec.eigenvectors.shape[1] < blocks[-1][1]:
        raise InvalidArgumentError(
            f"overlaps: need {blocks[-1][1]} eigenvectors, the spectrum has "
            f"{spec.eigenvectors.shape[1]}"
        )
    cliffs = {}
    for index in params["cliffs"]:
        if index < values.size:
            below = float(values[index])
            cliffs[str(index)] = float(values[index - 1]) / below if below > 0 else float("inf")
    return {
        "p": p,
        "dimension": p - 1,
        "blocks": block_overlaps(spec.eigenvectors, p, blocks, families),
        "cliff_ratios": cliffs,
    }


# --- planning ---------------------------------------------------------------------------------


def find_runs(runs_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Run name -> run directory for every run under ``runs_dir`` (a directory holding a
    ``config.json``; ``runs_dir`` itself when it is a run). Names are the runs' paths
    relative to ``runs_dir`` (the run's own folder name when ``runs_dir`` is a run).

    Symlinks to folders are followed: a symlinked run is found under the link's name (its
    results record the link's target as the run's path). A folder reached twice (a second
    link to it, a link loop) is searched once and a run reached twice is analysed once,
    under the name of its first path (real folders before links); a link whose target is
    missing is reported. Each of these gives a warning: nothing is skipped silently. A
    folder inside a run is not searched.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise InvalidArgumentError(f"runs_dir: {root} is not a directory")
    if (root / "config.json").is_file():
        return {root.resolve().name: root}
    found: dict[str, Path] = {}
    # the folders under root by their real paths, so that a run is named by its real path
    # rather than by a symlink to it, wherever the two are met in the walk
    real_root = os.path.realpath(root)
    real_names = {real_root: "RUNS_DIR"}
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if not os.path.islink(path):  # os.walk lists links to folders, never enters them
                real_names[os.path.realpath(path)] = Path(path).relative_to(root).as_posix()
    visited: dict[str, str] = {}  # real folder -> the name of the path that reached it
    notes: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        name = here.relative_to(root).as_posix()
        real = os.path.realpath(here)
        direct = os.path.join(real_root, *here.relative_to(root).parts)
        through_link = here != root and real != direct
        first = real_names.get(real) if through_link else None
        if first is None and real in visited:
            first = visited[real] or "RUNS_DIR"
        if first is not None:
            notes.append(f"{name} is {first} again (through a symlink): searched once")
            dirnames[:] = []
            continue
        visited[real] = "" if name == "." else name
        if here != root and (here / "config.json").is_file():
            found[name] = here
            dirnames[:] = []  # a folder inside a run (e.g. a copy kept in it) is not a run
            continue
        dirnames.sort()
        for f in sorted(filenames):
            link = here / f
            if link.is_symlink() and not link.exists():
                notes.append(f"{link.relative_to(root).as_posix()} is a broken symlink")
    for note in notes:
        warnings.warn(f"runs_dir: {note}", RuntimeWarning, stacklevel=2)
    if not found:
        raise InvalidArgumentError(
            f"runs_dir: no run directories (folders holding config.json) under {root}"
        )
    return dict(sorted(found.items()))


@dataclass
class BatchPlan:
    """The jobs of a batch and what is already done."""

    jobs: list[JobId] = field(default_factory=list)
    inputs: dict[JobId, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[JobId, dict[str, float]] = field(default_factory=dict)
    tasks: list[CheckpointTask] = field(default_factory=list)
    skipped: list[JobId] = field(default_factory=list)
    stale: list[JobId] = field(default_factory=list)
    """Jobs with a stored result made from other inputs (recomputed)."""
    damaged: list[JobId] = field(default_factory=list)
    """Jobs whose stored record is damaged (edited, truncated, arrays lost): recomputed."""
    not_applicable: list[str] = field(default_factory=list)
    problems: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Failures found while planning (an unreadable run), keyed like failures.json."""

    @property
    def todo(self) -> list[JobId]:
        return [job for task in self.tasks for job in task.jobs]


def plan_batch(
    runs_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    analyses: str | Iterable[str] = ANALYSES,
    *,
    k: int = DEFAULT_K,
    threads: int | None = 1,
    force: bool = False,
    runs: dict[str, Path] | None = None,
    steps: Iterable[int] | None = None,
    store: ResultStore | None = None,
) -> BatchPlan:
    """Every job of ``runs_dir`` × checkpoints × ``analyses``, and the tasks still to run
    (jobs whose stored result is missing, damaged or made from other inputs; all with
    ``force``). ``runs`` (name -> directory) replaces the search of ``runs_dir``; ``steps``
    keeps only those checkpoints."""
    from ..paper.runs import checkpoint_path, load_run

    names = parse_analyses(analyses)
    k = check_int("k", k, minimum=1)
    if threads is not None:
        check_int("threads", threads, minimum=1)
    store = ResultStore(out) if store is None else store
    only = None if steps is None else {check_int("step", s, minimum=0) for s in steps}
    found = find_runs(runs_dir) if runs is None else runs
    plan = BatchPlan()
    for raw_name, path in found.items():
        try:
            name = check_run_name(raw_name)
            run = load_run(path)
        except EntkError as e:
            plan.problems[f"{raw_name}/*"] = _failure_entry(
                f"{raw_name}/*", e, traceback.format_exc()
            )
            continue
        _check_same_run(store, name, path)
        config = dataclasses.asdict(run.config)
        params = {a: analysis_params(a, run.kind, run.config, k) for a in names}
        for a in names:
            if params[a] is None:
                plan.not_applicable.append(f"{name}: {a} (not defined for {run.kind} runs)")
        history_steps = np.asarray(run.history.get("step", np.zeros(0)))
        available = run.checkpoint_steps
        if only is not None:
            missing = sorted(only - set(available))
            if missing:
                raise InvalidArgumentError(
                    f"step: run {name} has no checkpoint for step(s) {missing} "
                    f"(it has {len(available)}: {available[:3]} … {available[-3:]})"
                )
            available = sorted(only)
        for step in available:
            file = checkpoint_path(run.path, step)
            try:
                sha = file_sha256(file, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint")
            except (OSError, EntkError) as e:
                sha = f"unreadable: {e}"
            todo: list[str] = []
            for a in names:
                p = params[a]
                if p is None:
                    continue
                job = JobId(name, step, a)
                inputs = {
                    "kind": run.kind,
                    "config": config,
                    "checkpoint_sha256": sha,
                    "params": p,
                }
                plan.jobs.append(job)
                plan.inputs[job] = inputs
                plan.metrics[job] = _metrics_at(run, history_steps, step)
                state, _ = store.record_state(job, inputs)
                if not force and state == "valid":
                    plan.skipped.append(job)
                    continue
                if state == "damaged":
                    plan.damaged.append(job)
                elif state != "missing":
                    plan.stale.append(job)
                todo.append(a)
            if todo:
                plan.tasks.append(
                    CheckpointTask(
                        run=name,
                        run_path=str(path.resolve()),
                        step=step,
                        analyses=tuple(todo),
                        params={a: p for a in todo if (p := params[a]) is not None},
                        threads=threads,
                    )
                )
    return plan


def _check_same_run(store: ResultStore, name: str, path: Path) -> None:
    """Refuse to store ``path``'s results under ``name`` when the store holds results of
    another run folder (still there) under that name: two runs sharing a folder name
    (``seed0/modadd``, ``seed1/modadd``) must not overwrite each other's results."""
    recorded = store.recorded_run_path(name)
    if recorded is None:
        return
    here = path.resolve()
    other = Path(recorded)
    if other == here or not (other / "config.json").is_file():
        return  # the same run, or one that was moved or deleted since
    with contextlib.suppress(OSError):
        if os.path.samefile(other, here):
            return
    raise InvalidArgumentError(
        f"name: the results folder {store.root} already holds results of the run {name!r} "
        f"computed from {other}, and {here} is another run with the same name; name it "
        "differently (entk-fast spectrum --name, e.g. its path relative to the folder of "
        "all runs; entk-fast batch names runs by their path relative to RUNS_DIR) or "
        "write to another results folder"
    )


def _metrics_at(run: Run, steps: np.ndarray, step: int) -> dict[str, float]:
    hits = np.flatnonzero(steps == step)
    if hits.size == 0:
        return {}
    i = int(hits[0])
    out = {}
    for column, values in run.history.items():
        if column != "step" and values.ndim == 1 and values.size > i:
            out[column] = float(values[i])
    return out


# --- running ----------------------------------------------------------------------------------


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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _failure_entry(name: str, exc: BaseException, tb: str, **extra: Any) -> dict[str, Any]:
    return {
        "job": name,
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": tb,
        "failed_at": _now(),
        **extra,
    }


def _records(
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
            "provenance": {**result.provenance, "finished_at": _now()},
            "metrics": plan.metrics.get(job, {}),
            "result": result.results[job.analysis],
        }
        yield job, record, result.arrays.get(job.analysis)


class _Recorder:
    """The single writer of the store during a batch: records, failures and the report."""

    def __init__(
        self, store: ResultStore, plan: BatchPlan, report: BatchReport, on_result: Any
    ) -> None:
        self.store = store
        self.plan = plan
        self.report = report
        self.on_result = on_result
        self.failures = store.read_failures()
        stale = {job.name for job in plan.stale}
        self.stale = stale
        changed = False
        for job in plan.skipped:  # a stored valid result supersedes an older failure
            changed |= self.failures.pop(job.name, None) is not None
        for key, entry in plan.problems.items():
            self.failures[key] = entry
            report.failed.append(key)
            changed = True
        if changed:
            store.write_failures(self.failures)

    def success(self, task: CheckpointTask, result: CheckpointResult) -> None:
        jobs = task.jobs
        written: list[JobId] = []
        try:
            for job, record, arrays in _records(self.plan, task, result):
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

    def _record(self, jobs: list[JobId], ok: bool) -> None:
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

    def failure_of(self, jobs: list[JobId], exc: BaseException, tb: str, **extra: Any) -> None:
        for job in jobs:
            self.failures[job.name] = _failure_entry(
                job.name, exc, tb, run=job.run, step=job.step, analysis=job.analysis, **extra
            )
            self.report.failed.append(job.name)
        if jobs:
            self.store.write_failures(self.failures)
        self._record(jobs, False)

    def finish(self, start: float) -> None:
        self.report.seconds = time.perf_counter() - start
        self.store.root.mkdir(parents=True, exist_ok=True)
        from .._io import atomic_write_json

        atomic_write_json(self.store.report_path, self.report.as_dict())


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
            symlinks to folders are followed, see :func:`find_runs`; a checkpoint is read
            only when it is a regular file, or a symlink to one, of at most
            :data:`MAX_CHECKPOINT_BYTES`: anything else is a failed job).
        out: the results directory (see :mod:`entk_fast.batch.store`). One batch at a time
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
        A :class:`BatchReport`; it is also written to ``out/batch.json``. Jobs that kept
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
        if plan.damaged:
            shown = ", ".join(job.name for job in plan.damaged[:5])
            more = f", … ({len(plan.damaged)} in all)" if len(plan.damaged) > 5 else ""
            warnings.warn(
                f"out: {len(plan.damaged)} stored results are damaged and will be recomputed: "
                f"{shown}{more}",
                RuntimeWarning,
                stacklevel=2,
            )
        report = BatchReport(out=Path(out), not_applicable=list(plan.not_applicable))
        report.skipped = [job.name for job in plan.skipped]
        report.damaged = [job.name for job in plan.damaged]
        recorder = _Recorder(store, plan, report, on_result)
        bar = None
        failed = False
        try:
            from .._progress import progress_bar

            bar = progress_bar(progress, len(plan.jobs), "jobs", unit="job")
            bar.update(len(plan.skipped))
            if client is None:
                _run_serial(plan.tasks, recorder, retries, bar)
            else:
                report.workers = _describe_workers(client)
                _run_dask(client, plan.tasks, recorder, retries, bar)
        except BaseException:
            report.interrupted = True
            failed = True
            raise
        finally:
            if bar is not None:
                bar.close()
            try:
                recorder.finish(start)
            except OSError as e:  # e.g. a full disk: do not hide the error that stopped us
                if not failed:
                    raise
                print(f"entk-fast: could not write the batch report: {e}", file=sys.stderr)
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

    ``out`` is a results directory (the files land where :func:`run_batch` puts them, under
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
        for job, record, arrays in _records(plan, task, result):
            store.write_result(job, record, arrays)
    records = [store.read_record(job) for job in plan.jobs]
    return [r for r in records if r is not None], computed


def default_run_name(path: str | os.PathLike[str]) -> str:
    """The name of a run given alone (``entk-fast spectrum RUN``): ``RUN`` itself when it is a
    relative path inside the current folder (``seed1/modadd``: the name ``batch`` gives it
    when run from here), else the run folder's own name."""
    given = Path(path)
    parts = [p for p in given.parts if p != "."]
    if not given.is_absolute() and parts and ".." not in parts:
        return "/".join(parts)
    return given.resolve().name


def _run_serial(
    tasks: Sequence[CheckpointTask], recorder: _Recorder, retries: int, bar: Any
) -> None:
    for task in tasks:
        for attempt in range(retries + 1):
            try:
                result = analyse_checkpoint(task)
            except Exception as e:
                if attempt < retries:
                    continue
                recorder.failure_of(task.jobs, e, traceback.format_exc(), attempts=attempt + 1)
            else:
                recorder.success(task, result)
            break
        bar.update(len(task.analyses))


def _describe_workers(client: Client) -> str:
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
        return f"{info.get('address', '?')}: {len(workers)} workers, {threads} threads"
    except Exception:  # the description is informative only
        return str(getattr(client, "scheduler", "dask"))


def _run_dask(
    client: Client, tasks: Sequence[CheckpointTask], recorder: _Recorder, retries: int, bar: Any
) -> None:
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    futures = {}
    for i, task in enumerate(tasks):
        # keys keep to plain characters whatever the run's folder is called (spaces, commas)
        label = re.sub(r"[^A-Za-z0-9._/=+@-]", "_", task.label)
        future = client.submit(
            analyse_checkpoint,
            task,
            key=f"entk-{label}-{i}-{token}",
            retries=retries,
            pure=False,
        )
        futures[future] = task
    pending = set(futures)
    try:
        for future in as_completed(list(futures)):
            task = futures[future]
            pending.discard(future)
            if future.status == "finished":
                try:
                    result = future.result()
                except Exception as e:  # e.g. the result could not be deserialised here
                    recorder.failure_of(task.jobs, e, traceback.format_exc())
                else:
                    recorder.success(task, result)
            else:
                _dask_failure(future, task, recorder, retries)
            future.release()
            bar.update(len(task.analyses))
    except BaseException:
        if pending:
            with contextlib.suppress(Exception):
                client.cancel(list(pending))
        raise


def _dask_failure(future: Any, task: CheckpointTask, recorder: _Recorder, retries: int) -> None:
    try:
        exc = future.exception()
        tb_obj = future.traceback()
        tb = "".join(traceback.format_exception(type(exc), exc, tb_obj))
    except Exception as e:  # cancelled, or the scheduler lost it
        exc = e if future.status != "cancelled" else RuntimeError(f"task {task.label} cancelled")
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if exc is None:
        exc = RuntimeError(f"task {task.label} ended with status {future.status!r}")
    recorder.failure_of(task.jobs, exc, tb, attempts=retries + 1)
