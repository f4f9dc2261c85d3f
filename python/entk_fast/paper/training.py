"""The training loop shared by every registered task, with checkpointed, resumable runs.

Loops are full batch, so one step of the modular-addition MLP is one epoch. Training runs on
CPU and is deterministic for a given config (on one machine and thread count); a run resumed
from a checkpoint ends bit-identical to an uninterrupted one, because a checkpoint holds the
model, the optimizer state, the training generator's state and the history so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .._progress import interactive
from .._validate import check_int
from ..errors import CheckpointError, InvalidArgumentError, InvalidTypeError, SignalInterrupt
from . import runs
from .tasks.modadd import ModAddConfig
from .tasks.registry import build_model, task_of_config
from .tasks.spec import TaskSpec, Trainer, stream_seed
from .tasks.tms import TMSConfig

log = logging.getLogger("entk_fast")

__all__ = [
    "ProgressFn",
    "Terminated",
    "TrainResult",
    "train",
    "train_modadd",
    "torch_threads",
    "train_tms",
    "tqdm_progress",
]


#: Upper bound of ``threads`` (torch crashes at exit with absurd thread counts).
MAX_THREADS = 1024


class ProgressFn(Protocol):
    """Called once before the first step and after every step.

    ``step`` is the step just finished (the start step before the first), ``total`` the last
    step, ``metrics`` the latest history row (column -> value, ``"step"`` included). Pass one
    as ``progress=`` to `train`.

    Examples:
        >>> from entk_fast.paper import TMSConfig, train_tms
        >>> seen = []
        >>> def report(step, total, metrics):
        ...     seen.append((step, total))
        >>> _ = train_tms(TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=3),
        ...               progress=report)
        >>> seen
        [(0, 3), (1, 3), (2, 3), (3, 3)]
    """

    def __call__(self, step: int, total: int, metrics: Mapping[str, float]) -> None: ...


# --- results and progress ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a training call returns.

    Attributes:
        config: the config trained.
        model: the final model (eval mode, CPU).
        history: column -> values per logged step (``"step"`` int64, the rest float64).
        out: the run directory, or ``None`` when nothing was written.

    Examples:
        >>> from entk_fast.paper import TMSConfig, train_tms
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=20)
        >>> result = train_tms(config, progress=False)
        >>> result.history["step"], sorted(result.history), result.out
        (array([ 0, 10, 20]), ['loss', 'n_reconstructed', 'step'], None)
    """

    config: Any
    model: nn.Module
    history: dict[str, np.ndarray]
    out: Path | None


def tqdm_progress(desc: str, **tqdm_kwargs: Any) -> ProgressFn:
    """A `ProgressFn` that draws a tqdm bar (to stderr) with the latest metrics.

    What ``progress=True`` uses.

    Args:
        desc: the bar's label.
        **tqdm_kwargs: passed to ``tqdm`` (e.g. ``leave=False``, ``disable=True``).

    Examples:
        >>> from entk_fast.paper import TMSConfig, train_tms
        >>> from entk_fast.paper.training import tqdm_progress
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=3)
        >>> _ = train_tms(config, progress=tqdm_progress("tms", disable=True))
    """
    from .._progress import bar_class

    tqdm = bar_class()
    bar: Any = None

    def update(step: int, total: int, metrics: Mapping[str, float]) -> None:
        nonlocal bar
        if bar is None:
            kwargs = {"file": sys.stderr, "dynamic_ncols": True, **tqdm_kwargs}
            bar = tqdm(total=total, initial=step, desc=desc, unit="step", **kwargs)
        else:
            bar.update(step - bar.n)
        if metrics:
            bar.set_postfix(_postfix(metrics), refresh=False)
        if step >= total:
            bar.close()

    return update


def _postfix(metrics: Mapping[str, float]) -> dict[str, str]:
    short = {}
    for k, v in metrics.items():
        if k.endswith("_acc"):
            short[k] = f"{100 * v:.1f}%"
        elif k == "n_reconstructed":
            short["n_rec"] = str(int(v))
        elif k in ("loss", "train_loss"):
            short[k] = f"{v:.3e}"
    return short


def train(
    config: Any,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    plot: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train the registered task whose config ``config`` is (e.g. a ``TMSConfig``).

    Args:
        config: hyper-parameters of one registered task.
        out: run directory to write (config, history, checkpoints, training-curve PNG); it must
            not exist, be empty, or (with ``resume``) hold this very run. ``None``: write nothing.
        resume: continue the run in ``out`` from its last checkpoint.
        progress: ``True`` for a tqdm bar, ``None`` (default) for one when interactive (a
            terminal or Jupyter), ``False`` for none, or a `ProgressFn`.
        plot: write ``training_curve.png`` into ``out`` at the end.
        threads: torch CPU threads during training (restored afterwards); ``None`` keeps the
            current setting. The models are tiny, so one thread is fastest, and a fixed thread
            count keeps results reproducible across machines.

    Returns:
        A `TrainResult`: the final model (eval mode) and its history.

    Raises:
        InvalidTypeError: ``config`` is no registered task's config, or ``progress`` is
            neither a bool nor a callable.
        InvalidArgumentError: ``resume`` without ``out``, or ``threads`` out of range.
        RunDirectoryError: ``out`` holds something else, another run, or (without
            ``resume``) this run already; or it cannot be written or locked.
        CheckpointError: ``resume`` finds no usable checkpoint.
        Terminated: SIGTERM arrived; the finished step's checkpoint was saved.

    Examples:
        >>> from entk_fast.paper import TransformerConfig
        >>> from entk_fast.paper.training import train
        >>> config = TransformerConfig(p=5, d_model=8, n_heads=2, d_mlp=16, epochs=2)
        >>> result = train(config, progress=False)
        >>> sorted(result.history), result.model(config.dataset().inputs).shape
        (['step', 'test_acc', 'test_loss', 'train_acc', 'train_loss'], torch.Size([25, 6]))
    """
    spec = task_of_config(config)
    with torch_threads(threads):
        return _train(config, spec, out, resume, progress, plot)


def train_tms(
    config: TMSConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    plot: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train a `TMS`: importance-weighted MSE, Adam, full batch.

    Arguments as in `train` (``config`` defaults to the paper's ``TMSConfig()``).
    History columns: ``step``, ``loss`` (the training loss) and ``n_reconstructed`` (features
    with ``(WᵀW)_ii >= 0.75``). The TMS experiment of J. Lin, arXiv 2510.00468.

    Raises:
        InvalidTypeError: ``config`` is not a `TMSConfig`.
        EntkError: as `train`.

    Examples:
        >>> import tempfile
        >>> from entk_fast.paper import TMSConfig, train_tms
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=20, checkpoint_every=10)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = train_tms(config, f"{tmp}/run", progress=False, plot=False)
        ...     result.out.name, sorted(p.name for p in (result.out / "checkpoints").iterdir())
        ('run', ['step-000000.pt', 'step-000010.pt', 'step-000020.pt'])
    """
    config = TMSConfig() if config is None else config
    if not isinstance(config, TMSConfig):
        raise InvalidTypeError(f"config must be a TMSConfig, got {type(config).__name__}")
    return train(config, out, resume=resume, progress=progress, plot=plot, threads=threads)


def train_modadd(
    config: ModAddConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    plot: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train a `ModAddMLP`: MSE on one-hot labels, AdamW, full batch.

    Arguments as in `train` (``config`` defaults to the paper's ``ModAddConfig()``).
    History columns: ``step`` (= epoch), ``train_loss``, ``test_loss``, ``train_acc``,
    ``test_acc`` (accuracies in [0, 1], by arg-max). The grokking experiment of J. Lin,
    arXiv 2510.00468.

    Raises:
        InvalidTypeError: ``config`` is not a `ModAddConfig`.
        EntkError: as `train`.

    Examples:
        >>> from entk_fast.paper import ModAddConfig, train_modadd
        >>> result = train_modadd(ModAddConfig(p=5, hidden=8, epochs=4), progress=False)
        >>> result.history["step"], result.history["test_acc"].shape
        (array([0, 1, 2, 3, 4]), (5,))
    """
    config = ModAddConfig() if config is None else config
    if not isinstance(config, ModAddConfig):
        raise InvalidTypeError(f"config must be a ModAddConfig, got {type(config).__name__}")
    return train(config, out, resume=resume, progress=progress, plot=plot, threads=threads)


# --- the shared loop --------------------------------------------------------------------------


def _train(
    config: Any,
    spec: TaskSpec,
    out: str | Path | None,
    resume: bool,
    progress: ProgressFn | bool | None,
    plot: bool,
) -> TrainResult:
    kind = spec.kind
    run_dir = None if out is None else Path(out)
    if run_dir is None and resume:
        raise InvalidArgumentError("resume=True needs the run directory `out`")
    report = _progress_fn(progress, kind)
    trainer = spec.trainer(config, build_model(config))
    # A trainer that draws random numbers (minibatch order) owns a `generator`; checkpoints
    # save and restore it, so a resumed run draws what an uninterrupted one would.
    generator = getattr(trainer, "generator", None)
    if not isinstance(generator, torch.Generator):
        generator = torch.Generator().manual_seed(stream_seed(config.seed, "train"))
    history: dict[str, list[Any]] = {c: [] for c in spec.columns}
    if run_dir is None:
        return _loop(config, trainer, history, None, generator, report, plot)
    runs.prepare_run_dir(run_dir, kind, dataclasses.asdict(config), resume=resume)
    with runs.run_lock(run_dir):
        if resume:
            # Only now: before the lock, these could be another live process's files.
            runs.clean_stale_tmp_files(run_dir)
        return _loop(config, trainer, history, run_dir, generator, report, plot)


def _loop(
    config: Any,
    task: Trainer,
    history: dict[str, list[Any]],
    run_dir: Path | None,
    generator: torch.Generator,
    report: ProgressFn,
    plot: bool,
) -> TrainResult:
    kind, total = config.kind, config.total_steps
    with _sigterm_flag() as terminated:
        start = 0 if run_dir is None else _resume(run_dir, kind, task, generator, history)
        if start == 0 and not history["step"]:
            _log(history, 0, task.metrics())
            _save(run_dir, kind, 0, task, generator, history, config)
        report(start, total, _last_row(history))
        for step in range(start + 1, total + 1):
            task.step()
            if step % config.log_every == 0 or step == total:
                _log(history, step, task.metrics())
            saved = step % config.checkpoint_every == 0 or step == total
            if saved or terminated[0]:
                _save(run_dir, kind, step, task, generator, history, config)
                log.info("train %s: step %d/%d %s", kind, step, total, _postfix(_last_row(history)))
            report(step, total, _last_row(history))
            if terminated[0] and step < total:
                raise Terminated(step)

    if run_dir is not None:
        runs.write_history(run_dir, kind, history, completed=True)
        if plot:
            from .figures import MATPLOTLIB_MISSING, matplotlib_available, plot_training_curve

            if matplotlib_available():
                plot_training_curve(history, kind, run_dir / runs.PLOT_FILE)
            else:
                log.warning(
                    "matplotlib is not installed: %s not written (%s)",
                    runs.PLOT_FILE,
                    MATPLOTLIB_MISSING,
                )
    task.model.eval()
    return TrainResult(config=config, model=task.model, history=_as_arrays(history), out=run_dir)


class Terminated(SignalInterrupt):
    """SIGTERM arrived (a cluster's time limit, ``kill``): training saved a checkpoint of the
    step it had finished and stopped; resuming continues bit-identically. A
    KeyboardInterrupt, with ``signum`` = SIGTERM (the CLI exits 143, like every command).

    Args:
        step: the last step finished (and checkpointed), kept as ``.step``.

    Examples:
        >>> from entk_fast.paper.training import Terminated
        >>> stop = Terminated(7)
        >>> stop.step, stop.signum, str(stop)
        (7, 15, 'terminated by SIGTERM after step 7 (checkpoint saved)')
    """

    def __init__(self, step: int) -> None:
        super().__init__(
            signal.SIGTERM, f"terminated by SIGTERM after step {step} (checkpoint saved)"
        )
        self.step = step


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[list[bool]]:
    """Turn SIGTERM into a flag the loop checks after each step (main thread only; signal
    handlers cannot be installed elsewhere). The previous handler is restored afterwards."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside the block, restored afterwards (None:
    unchanged); checked to be in [1, MAX_THREADS].

    Raises:
        InvalidTypeError: ``threads`` is not an integer.
        InvalidArgumentError: ``threads`` is not in [1, MAX_THREADS].

    Examples:
        >>> import torch
        >>> from entk_fast.paper.training import torch_threads
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    if threads is None:
        yield
        return
    check_int("threads", threads, minimum=1)
    if threads > MAX_THREADS:
        raise InvalidArgumentError(
            f"threads must be an integer in [1, {MAX_THREADS}], got {threads}"
        )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress_fn(progress: ProgressFn | bool | None, kind: str) -> ProgressFn:
    if progress is True:
        return tqdm_progress(f"train {kind}")
    if progress is None:
        return tqdm_progress(f"train {kind}") if interactive() else (lambda s, t, m: None)
    if progress is False:
        return lambda step, total, metrics: None
    if not callable(progress):
        raise InvalidTypeError(
            f"progress must be a bool or a callable, got {type(progress).__name__}"
        )
    return progress


def _log(history: dict[str, list[Any]], step: int, metrics: Mapping[str, float]) -> None:
    history["step"].append(step)
    for k, v in metrics.items():
        history[k].append(v)


def _last_row(history: Mapping[str, list[Any]]) -> dict[str, float]:
    return {k: v[-1] for k, v in history.items() if v}


def _save(
    run_dir: Path | None,
    kind: str,
    step: int,
    task: Trainer,
    generator: torch.Generator,
    history: dict[str, list[Any]],
    config: Any,
) -> None:
    if run_dir is None:
        return
    payload = {
        "kind": kind,
        "model": task.model.state_dict(),
        "optimizer": task.optimizer.state_dict(),
        "generator": generator.get_state(),
        "history": {k: list(v) for k, v in history.items()},
    }
    runs.save_checkpoint(run_dir, step, payload)
    runs.write_history(run_dir, kind, history, completed=step == config.total_steps)


def _resume(
    run_dir: Path,
    kind: str,
    task: Trainer,
    generator: torch.Generator,
    history: dict[str, list[Any]],
) -> int:
    """Restore the latest usable checkpoint of ``run_dir``; its step (0: none, start afresh).

    A checkpoint that cannot be read or restored (a disk error, a file truncated outside
    entk-fast's atomic writes) is skipped with a warning naming it, and training resumes from
    the previous one; the skipped step is recomputed (deterministically) and its file
    rewritten. When no checkpoint is usable, `CheckpointError` says so and what to do.
    """
    steps = runs.checkpoint_steps(run_dir)
    if not steps:
        return 0
    skipped: list[str] = []
    for step in reversed(steps):
        try:
            _restore(task, generator, history, runs.read_checkpoint(run_dir, step, kind=kind))
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} unusable checkpoint(s) and resumed from step {step} "
                f"(training redoes the steps after it): {'; '.join(skipped)}",
                UserWarning,
                stacklevel=5,
            )
        return step
    raise CheckpointError(
        f"no usable checkpoint in {run_dir / runs.CHECKPOINT_DIR}, so the run cannot be "
        f"resumed: {'; '.join(skipped)}. Train again into a new directory (or delete "
        f"{run_dir} first); the same config gives the same run"
    )


def _restore(
    task: Trainer, generator: torch.Generator, history: dict[str, list[Any]], state: dict[str, Any]
) -> None:
    try:
        task.model.load_state_dict(state["model"])
        task.optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint of step {state['step']} cannot be restored: {e}") from e
    saved = state["history"]
    # The last logged step may precede the checkpoint's when the two intervals differ.
    if set(saved) != set(history) or (saved["step"] and saved["step"][-1] > state["step"]):
        raise CheckpointError(f"checkpoint of step {state['step']} holds an inconsistent history")
    for k in history:
        history[k] = list(saved[k])


def _as_arrays(history: Mapping[str, list[Any]]) -> dict[str, np.ndarray]:
    return {
        k: np.asarray(v, dtype=np.int64 if k == "step" else np.float64) for k, v in history.items()
    }
