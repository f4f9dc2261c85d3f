"""Training of the two toy models exactly as in SPEC §2–3, with checkpointed, resumable runs.

Both loops are full batch, so one step of :func:`train_modadd` is one epoch. Training runs on
CPU and is deterministic for a given config (on one machine and thread count); a run resumed
from a checkpoint ends bit-identical to an uninterrupted one, because a checkpoint holds the
model, the optimizer state, the training generator's state and the history so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import runs
from .data import (
    ModAddData,
    _check_float,
    _check_int,
    _check_seed,
    _train_size,
    modadd_dataset,
    tms_dataset,
    tms_importance,
)
from .errors import InvalidArgumentError, InvalidTypeError
from .models import TMS, ModAddMLP

__all__ = [
    "ModAddConfig",
    "ProgressFn",
    "TMSConfig",
    "TrainResult",
    "build_model",
    "config_from_dict",
    "first_step_above",
    "train_modadd",
    "train_tms",
]


class ProgressFn(Protocol):
    """Called once before the first step and after every step."""

    def __call__(self, step: int, total: int, metrics: Mapping[str, float]) -> None: ...


# --- configs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TMSConfig:
    """TMS training (SPEC §2). Change fields with ``dataclasses.replace(config, ...)``.

    Attributes:
        n_features: n, number of features (input and output size).
        n_hidden: m, hidden width.
        sparsity: S in [0, 1), probability that a feature is 0.
        n_points: D, size of the fixed training set.
        importance_decay: importance of feature i is ``importance_decay**i``.
        lr: Adam learning rate.
        steps: number of full-batch Adam steps.
        seed: seeds the model initialisation.
        data_seed: seeds :func:`~entk_fast.tms_dataset`.
        log_every: a history row every this many steps (and at steps 0 and ``steps``).
        checkpoint_every: a checkpoint every this many steps (and at steps 0 and ``steps``).
    """

    kind: ClassVar[str] = "tms"

    n_features: int = 50
    n_hidden: int = 10
    sparsity: float = 0.9
    n_points: int = 500
    importance_decay: float = 0.8
    lr: float = 1e-3
    steps: int = 5000
    seed: int = 0
    data_seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        _set = _setter(self)
        _set("n_features", _check_int("n_features", self.n_features, minimum=1))
        _set("n_hidden", _check_int("n_hidden", self.n_hidden, minimum=1))
        _set("sparsity", _check_float("sparsity", self.sparsity, low=0, high=1, high_open=True))
        _set("n_points", _check_int("n_points", self.n_points, minimum=1))
        decay = _check_float("importance_decay", self.importance_decay, low=0, low_open=True)
        _set("importance_decay", decay)
        _set("lr", _check_float("lr", self.lr, low=0, low_open=True))
        _set("steps", _check_int("steps", self.steps, minimum=1))
        _check_common(self)

    @property
    def total_steps(self) -> int:
        return self.steps

    def dataset(self) -> torch.Tensor:
        """The fixed training set, (n_points, n_features) float32."""
        return tms_dataset(self.n_features, self.n_points, self.sparsity, seed=self.data_seed)

    def importance(self) -> torch.Tensor:
        """Feature importances, (n_features,) float32."""
        return tms_importance(self.n_features, self.importance_decay)


@dataclass(frozen=True)
class ModAddConfig:
    """Modular-addition MLP training (SPEC §3). One step is one full-batch epoch.

    Attributes:
        p: modulus (>= 2); inputs are 2p-dimensional, outputs p-dimensional.
        hidden: H, hidden width.
        train_fraction: fraction of the p² pairs in the training set.
        lr, weight_decay: AdamW hyper-parameters (betas and eps are PyTorch's defaults).
        epochs: number of full-batch AdamW steps.
        seed: seeds the model initialisation.
        data_seed: seeds the train/test split (:func:`~entk_fast.modadd_dataset`).
        log_every: a history row every this many epochs (and at epochs 0 and ``epochs``).
        checkpoint_every: a checkpoint every this many epochs (and at epochs 0 and ``epochs``).
    """

    kind: ClassVar[str] = "modadd"

    p: int = 29
    hidden: int = 512
    train_fraction: float = 0.7
    lr: float = 0.05
    weight_decay: float = 0.01
    epochs: int = 500
    seed: int = 0
    data_seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        _set = _setter(self)
        _set("p", _check_int("p", self.p, minimum=2))
        _set("hidden", _check_int("hidden", self.hidden, minimum=1))
        fraction = _check_float(
            "train_fraction", self.train_fraction, low=0, high=1, low_open=True, high_open=True
        )
        _set("train_fraction", fraction)
        _train_size(self.p, fraction)
        _set("lr", _check_float("lr", self.lr, low=0, low_open=True))
        _set("weight_decay", _check_float("weight_decay", self.weight_decay, low=0))
        _set("epochs", _check_int("epochs", self.epochs, minimum=1))
        _check_common(self)

    @property
    def total_steps(self) -> int:
        return self.epochs

    def dataset(self) -> ModAddData:
        """All p² pairs with this run's train/test split."""
        return modadd_dataset(self.p, self.train_fraction, seed=self.data_seed)


Config = TMSConfig | ModAddConfig
_CONFIGS: dict[str, type[TMSConfig] | type[ModAddConfig]] = {
    "tms": TMSConfig,
    "modadd": ModAddConfig,
}


def _setter(config: Any) -> Callable[[str, Any], None]:
    # frozen dataclass: store the normalised value (e.g. lr=1 -> 1.0) so saved JSON is canonical
    return lambda name, value: object.__setattr__(config, name, value)


def _check_common(config: Config) -> None:
    _check_seed("seed", config.seed)
    _check_seed("data_seed", config.data_seed)
    _check_int("log_every", config.log_every, minimum=1)
    _check_int("checkpoint_every", config.checkpoint_every, minimum=1)


def config_from_dict(kind: str, fields: Mapping[str, Any]) -> Config:
    """Rebuild a config from ``kind`` and its ``dataclasses.asdict`` fields (e.g. from JSON)."""
    cls = _CONFIGS.get(kind)
    if cls is None:
        raise InvalidArgumentError(f"kind must be one of {sorted(_CONFIGS)}, got {kind!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown {kind} config field(s): {', '.join(unknown)}")
    return cls(**fields)


def build_model(config: Config) -> nn.Module:
    """The freshly initialised model of ``config`` (deterministic in ``config.seed``)."""
    gen = torch.Generator().manual_seed(_stream_seed(config.seed, "init"))
    if isinstance(config, TMSConfig):
        return TMS(config.n_features, config.n_hidden, generator=gen)
    if isinstance(config, ModAddConfig):
        return ModAddMLP(config.p, config.hidden, generator=gen)
    raise InvalidTypeError(
        f"config must be a TMSConfig or ModAddConfig, got {type(config).__name__}"
    )


def _stream_seed(seed: int, tag: str) -> int:
    # Derived seeds keep the init and training streams apart from the data stream even when
    # seed == data_seed (two generators seeded alike would produce correlated draws).
    digest = hashlib.blake2b(f"entk-fast/{tag}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# --- results and progress ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a training call returns.

    Attributes:
        config: the config trained.
        model: the final model (eval mode, CPU).
        history: column -> values per logged step (``"step"`` int64, the rest float64).
        out: the run directory, or ``None`` when nothing was written.
    """

    config: Config
    model: nn.Module
    history: dict[str, np.ndarray]
    out: Path | None


def tqdm_progress(desc: str, **tqdm_kwargs: Any) -> ProgressFn:
    """A :class:`ProgressFn` that draws a tqdm bar (to stderr) with the latest metrics."""
    from tqdm.auto import tqdm

    bar: Any = None

    def update(step: int, total: int, metrics: Mapping[str, float]) -> None:
        nonlocal bar
        if bar is None:
            # disable=None: tqdm draws only when stderr is a terminal (quiet in logs and CI).
            kwargs = {"file": sys.stderr, "dynamic_ncols": True, "disable": None, **tqdm_kwargs}
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


# --- the two tasks ----------------------------------------------------------------------------


class _Task(Protocol):
    @property
    def model(self) -> nn.Module: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    def step(self) -> None: ...

    def metrics(self) -> dict[str, float]: ...


class _TMSTask:
    columns = ("step", "loss", "n_reconstructed")

    def __init__(self, config: TMSConfig) -> None:
        self.x = config.dataset()
        self.importance = config.importance()
        self.model: TMS = build_model(config)  # type: ignore[assignment]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)

    def _loss(self) -> torch.Tensor:
        return (self.importance * (self.x - self.model(self.x)) ** 2).mean()

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._loss().backward()
        self.optimizer.step()

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            loss = self._loss().item()
        return {"loss": loss, "n_reconstructed": float(self.model.n_reconstructed())}


class _ModAddTask:
    columns = ("step", "train_loss", "test_loss", "train_acc", "test_acc")

    def __init__(self, config: ModAddConfig) -> None:
        data = config.dataset()
        self.x, self.labels, targets = data.inputs, data.labels, data.targets
        self.train_idx, self.test_idx = data.train_idx, data.test_idx
        self.x_train, self.y_train = self.x[self.train_idx], targets[self.train_idx]
        self.targets = targets
        self.model: ModAddMLP = build_model(config)  # type: ignore[assignment]
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.mse_loss(self.model(self.x_train), self.y_train).backward()
        self.optimizer.step()

    def metrics(self) -> dict[str, float]:
        with torch.no_grad():
            out = self.model(self.x)
            sq_err = ((out - self.targets) ** 2).mean(dim=1)
            correct = (out.argmax(dim=1) == self.labels).to(torch.float64)
        m: dict[str, float] = {}
        for split, idx in (("train", self.train_idx), ("test", self.test_idx)):
            m[f"{split}_loss"] = sq_err[idx].mean().item()
            m[f"{split}_acc"] = correct[idx].mean().item()
        return m


def train_tms(
    config: TMSConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    plot: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train a :class:`~entk_fast.TMS` (SPEC §2): importance-weighted MSE, Adam, full batch.

    Args:
        config: hyper-parameters (default ``TMSConfig()``).
        out: run directory to write (config, history, checkpoints, training-curve PNG); it must
            not exist, be empty, or (with ``resume``) hold this very run. ``None``: write nothing.
        resume: continue the run in ``out`` from its last checkpoint.
        progress: ``True`` for a tqdm bar, or a :class:`ProgressFn`.
        plot: write ``training_curve.png`` into ``out`` at the end.
        threads: torch CPU threads during training (restored afterwards); ``None`` keeps the
            current setting. The models are tiny, so one thread is fastest, and a fixed thread
            count keeps results reproducible across machines.

    History columns: ``step``, ``loss`` (the training loss) and ``n_reconstructed`` (features
    with ``(WᵀW)_ii >= 0.75``).
    """
    config = TMSConfig() if config is None else config
    if not isinstance(config, TMSConfig):
        raise InvalidTypeError(f"config must be a TMSConfig, got {type(config).__name__}")
    with _torch_threads(threads):
        return _train(config, _TMSTask(config), _TMSTask.columns, out, resume, progress, plot)


def train_modadd(
    config: ModAddConfig | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    plot: bool = True,
    threads: int | None = 1,
) -> TrainResult:
    """Train a :class:`~entk_fast.ModAddMLP` (SPEC §3): MSE on one-hot labels, AdamW, full batch.

    Arguments as in :func:`train_tms`. History columns: ``step`` (= epoch), ``train_loss``,
    ``test_loss``, ``train_acc``, ``test_acc`` (accuracies in [0, 1], by arg-max).
    """
    config = ModAddConfig() if config is None else config
    if not isinstance(config, ModAddConfig):
        raise InvalidTypeError(f"config must be a ModAddConfig, got {type(config).__name__}")
    with _torch_threads(threads):
        return _train(config, _ModAddTask(config), _ModAddTask.columns, out, resume, progress, plot)


# --- the shared loop --------------------------------------------------------------------------


def _train(
    config: Config,
    task: _Task,
    columns: tuple[str, ...],
    out: str | Path | None,
    resume: bool,
    progress: ProgressFn | bool | None,
    plot: bool,
) -> TrainResult:
    kind = config.kind
    run_dir = None if out is None else Path(out)
    if run_dir is None and resume:
        raise InvalidArgumentError("resume=True needs the run directory `out`")
    report = _progress_fn(progress, kind)
    generator = torch.Generator().manual_seed(_stream_seed(config.seed, "train"))
    history: dict[str, list[Any]] = {c: [] for c in columns}
    if run_dir is None:
        return _loop(config, task, history, None, generator, report, plot)
    runs.prepare_run_dir(run_dir, kind, dataclasses.asdict(config), resume=resume)
    with runs.run_lock(run_dir):
        if resume:
            # Only now: before the lock, these could be another live process's files.
            runs.clean_stale_tmp_files(run_dir)
        return _loop(config, task, history, run_dir, generator, report, plot)


def _loop(
    config: Config,
    task: _Task,
    history: dict[str, list[Any]],
    run_dir: Path | None,
    generator: torch.Generator,
    report: ProgressFn,
    plot: bool,
) -> TrainResult:
    kind, total = config.kind, config.total_steps
    start = 0
    if run_dir is not None:
        steps = runs.checkpoint_steps(run_dir)
        if steps:
            start = steps[-1]
            state = runs.read_checkpoint(run_dir, start, kind=kind)
            _restore(task, generator, history, state)

    if start == 0 and not history["step"]:
        _log(history, 0, task.metrics())
        _save(run_dir, kind, 0, task, generator, history, config)
    report(start, total, _last_row(history))

    for step in range(start + 1, total + 1):
        task.step()
        if step % config.log_every == 0 or step == total:
            _log(history, step, task.metrics())
        if step % config.checkpoint_every == 0 or step == total:
            _save(run_dir, kind, step, task, generator, history, config)
        report(step, total, _last_row(history))

    if run_dir is not None:
        runs.write_history(run_dir, kind, history, completed=True)
        if plot:
            from .plots import plot_training_curve

            plot_training_curve(history, kind, run_dir / runs.PLOT_FILE)
    task.model.eval()
    return TrainResult(config=config, model=task.model, history=_as_arrays(history), out=run_dir)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    _check_int("threads", threads, minimum=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress_fn(progress: ProgressFn | bool | None, kind: str) -> ProgressFn:
    if progress is True:
        return tqdm_progress(f"train {kind}")
    if progress is None or progress is False:
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
    task: _Task,
    generator: torch.Generator,
    history: dict[str, list[Any]],
    config: Config,
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


def _restore(
    task: _Task, generator: torch.Generator, history: dict[str, list[Any]], state: dict[str, Any]
) -> None:
    from .errors import CheckpointError

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


def first_step_above(history: Mapping[str, Any], column: str, threshold: float) -> int | None:
    """First logged step at which ``history[column] > threshold``, or ``None``."""
    values = np.asarray(history[column], dtype=np.float64)
    hits = np.flatnonzero(values > threshold)
    return None if hits.size == 0 else int(np.asarray(history["step"])[hits[0]])
