"""Which jobs a batch has and which of them are done: the runs under a folder and their
names, runs × checkpoints × analyses as jobs, and the tasks still to run (one per
checkpoint, holding its jobs whose stored result is missing, damaged or made from other
inputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_int
from ..errors import EntkError, InvalidArgumentError
from .analyses import ANALYSES, DEFAULT_K, analysis_params, parse_analyses
from .store import JobId, ResultStore, check_run_name, failure_entry, file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from ..paper.runs import Run

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "BatchPlan",
    "CheckpointTask",
    "default_run_name",
    "find_runs",
    "plan_batch",
]

#: The largest checkpoint file a batch reads (hashes and loads); a bigger one, or anything
#: that is not a regular file (a symlink to /dev/zero, a FIFO), is a failed job.
MAX_CHECKPOINT_BYTES = 16 << 30


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


def default_run_name(path: str | os.PathLike[str]) -> str:
    """The name of a run given alone (``entk-fast spectrum RUN``): ``RUN`` itself when it is a
    relative path inside the current folder (``seed1/modadd``: the name ``batch`` gives it
    when run from here), else the run folder's own name."""
    given = Path(path)
    parts = [p for p in given.parts if p != "."]
    if not given.is_absolute() and parts and ".." not in parts:
        return "/".join(parts)
    return given.resolve().name


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
            plan.problems[f"{raw_name}/*"] = failure_entry(
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
