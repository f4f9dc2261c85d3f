"""Run directories: config/history/checkpoint files, the run lock, and `load_run`.

Layout of a run directory::

    config.json                 {"format", "format_version", "kind", "config", "created_with"}
    history.json                {"kind", "completed", "history": {column: [values per logged step]}}
    checkpoints/step-000010.pt  torch.save of {"model", "optimizer", "generator", "step", "history"}
    training_curve.png
    .lock                       held (flock) by the process that is training

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``),
so a crash or Ctrl-C leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import TMP_FILE_RE, atomic_open, atomic_write_json, read_regular_bytes
from ..errors import CheckpointError, EntkError, RunDirectoryError
from .tasks.registry import build_model, config_from_dict

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["Run", "load_run"]

RUN_FORMAT = "entk-fast-run"
CHECKPOINT_FORMAT = "entk-fast-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
PLOT_FILE = "training_curve.png"
LOCK_FILE = ".lock"
_CHECKPOINT_RE = re.compile(r"^step-(\d+)\.pt$")
#: The largest config.json / history.json read (a symlink to /dev/zero must not hang a reader).
MAX_CONFIG_BYTES = 16 << 20
MAX_HISTORY_BYTES = 1 << 30
_TMP_RE = re.compile(TMP_FILE_RE)


# --- run directory: config and history files --------------------------------------------------


def read_config_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``(kind, config fields)`` from ``path/config.json``; RunDirectoryError if unreadable."""
    file = path / CONFIG_FILE
    try:
        meta = json.loads(read_regular_bytes(file, MAX_CONFIG_BYTES, what="config").decode("utf-8"))
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{path} is not an entk-fast run directory (no {CONFIG_FILE})"
        ) from None
    except (OSError, ValueError, EntkError) as e:
        raise RunDirectoryError(f"cannot read {file}: {e}") from e
    if (
        not isinstance(meta, dict)
        or meta.get("format") != RUN_FORMAT
        or not isinstance(meta.get("kind"), str)
        or not isinstance(meta.get("config"), dict)
    ):
        raise RunDirectoryError(f"{file} is not an entk-fast run config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise RunDirectoryError(
            f"{file} has format_version {meta.get('format_version')!r}; this entk-fast reads "
            f"version {FORMAT_VERSION}"
        )
    return meta["kind"], meta["config"]


def prepare_run_dir(path: Path, kind: str, config: dict[str, Any], *, resume: bool) -> None:
    """Create a fresh run directory for ``config``, or check that ``path`` holds this very run
    when ``resume`` is set. Never modifies a directory that holds anything else.
    """
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"output path {path} exists and is not a directory")
    if path.is_dir() and (path / CONFIG_FILE).exists():
        saved_kind, saved = read_config_file(path)
        diffs = _config_diff(saved_kind, saved, kind, config)
        if diffs:
            raise RunDirectoryError(
                f"{path} already holds a different run ({'; '.join(diffs)}); "
                "choose another output directory"
            )
        if not resume:
            raise RunDirectoryError(
                f"{path} already holds this run; pass resume=True (CLI: --resume) to continue "
                "it, or choose another output directory"
            )
        # Stale temporary files are removed by the caller once it holds the run lock: another
        # process may still be writing them.
        return
    if path.is_dir() and any(path.iterdir()):
        raise RunDirectoryError(
            f"{path} is not empty and is not an entk-fast run directory; refusing to write there"
        )
    if resume:
        raise RunDirectoryError(f"nothing to resume: {path} holds no run")
    try:
        (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            path / CONFIG_FILE,
            {
                "format": RUN_FORMAT,
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "config": config,
                "created_with": _versions(),
            },
        )
    except OSError as e:
        raise RunDirectoryError(f"cannot create run directory {path}: {e}") from e


def write_history(
    path: Path, kind: str, history: Mapping[str, list[Any]], *, completed: bool
) -> None:
    """Atomically (re)write ``path/history.json``."""
    try:
        atomic_write_json(
            path / HISTORY_FILE,
            {"kind": kind, "completed": completed, "history": dict(history)},
            indent=None,
        )
    except OSError as e:
        raise RunDirectoryError(f"cannot write {path / HISTORY_FILE}: {e}") from e


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory while training writes to it, so two
    processes never write one run. The OS releases it when the process dies (POSIX flock;
    elsewhere this is a no-op).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirectoryError(f"cannot lock run directory {path}: {e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(f"{path} is in use by another training process") from None
        except OSError as e:  # NFS / Lustre mounted without lock support: ENOLCK, EOPNOTSUPP
            raise RunDirectoryError(
                f"cannot lock run directory {path}: its file system does not support file "
                f"locks ({e.strerror or e}); put the run directory on a file system that does "
                "(a local disk, or a parallel file system mounted with locking, e.g. Lustre's "
                "'flock' option), so that two jobs can never write one run"
            ) from e
        yield
    finally:
        os.close(fd)


def clean_stale_tmp_files(path: Path) -> None:
    """Remove temporary files left by a writer that was killed mid-write."""
    for directory in (path, path / CHECKPOINT_DIR):
        if directory.is_dir():
            for f in directory.iterdir():
                if _TMP_RE.match(f.name):
                    with contextlib.suppress(OSError):
                        f.unlink()


def _config_diff(
    saved_kind: str, saved: dict[str, Any], kind: str, config: dict[str, Any]
) -> list[str]:
    if saved_kind != kind:
        return [f"it is a {saved_kind!r} run, not {kind!r}"]
    requested = json.loads(json.dumps(config))  # same normalisation as the saved file
    keys = sorted(set(saved) | set(requested))
    return [
        f"{k}: saved {saved.get(k, '<missing>')!r}, requested {requested.get(k, '<missing>')!r}"
        for k in keys
        if saved.get(k) != requested.get(k)
    ]


def _versions() -> dict[str, str]:
    import platform

    import torch

    from .._version import __version__

    return {
        "entk_fast": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_path(path: Path, step: int) -> Path:
    return path / CHECKPOINT_DIR / f"step-{step:06d}.pt"


def checkpoint_steps(path: Path) -> list[int]:
    """Steps of the checkpoint files in ``path/checkpoints``, ascending."""
    directory = path / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    steps = (_CHECKPOINT_RE.match(f.name) for f in directory.iterdir())
    return sorted(int(m.group(1)) for m in steps if m)


def save_checkpoint(path: Path, step: int, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (plus format tags) as the checkpoint of ``step``."""
    import torch

    full = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, "step": step, **payload}
    file = checkpoint_path(path, step)
    try:
        with atomic_open(file, "wb") as f:
            torch.save(full, f)
    except OSError as e:
        raise RunDirectoryError(f"cannot write checkpoint {file}: {e}") from e


def read_checkpoint(path: Path, step: int, *, kind: str) -> dict[str, Any]:
    """Load and check the checkpoint of ``step``; CheckpointError if missing or corrupt.

    Loading uses ``weights_only=True``: a checkpoint can hold tensors and plain containers
    only, so opening a run from elsewhere cannot execute code.
    """
    import torch

    file = checkpoint_path(path, step)
    if not file.is_file():
        available = checkpoint_steps(path)
        raise CheckpointError(
            f"no checkpoint for step {step} in {path} (available steps: {_short_list(available)})"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or garbled files
        raise CheckpointError(f"checkpoint {file} is corrupt or truncated: {e}") from e
    required = {"model": dict, "optimizer": dict, "history": dict, "step": int, "kind": str}
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CHECKPOINT_FORMAT
        or any(not isinstance(payload.get(k), t) for k, t in required.items())
    ):
        raise CheckpointError(f"{file} is not an entk-fast checkpoint")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format_version {payload['format_version']!r}; this entk-fast reads "
            f"version {FORMAT_VERSION}"
        )
    if payload["kind"] != kind or payload["step"] != step:
        raise CheckpointError(
            f"{file} holds step {payload['step']} of a {payload['kind']!r} run, expected step "
            f"{step} of a {kind!r} run"
        )
    return payload


def _short_list(values: list[int]) -> str:
    if not values:
        return "none"
    if len(values) <= 8:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:3]))}, ..., {', '.join(map(str, values[-3:]))}"


# --- reading a run ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Run:
    """A training run on disk, as returned by `load_run`.

    Attributes:
        path: the run directory.
        kind: the registered task, e.g. ``"tms"`` or ``"modadd"``.
        config: the run's config (`TMSConfig`,
            `ModAddConfig`, `TransformerConfig`).
        history: column name -> values per logged step (``"step"`` is int64, the rest float64);
            for ``"modadd"`` one step is one full-batch epoch.
        completed: whether training reached its last step.

    Examples:
        >>> import tempfile
        >>> from entk_fast.paper import TMSConfig, load_run, train_tms
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=20, checkpoint_every=10)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_tms(config, f"{tmp}/run", progress=False, plot=False)
        ...     run = load_run(f"{tmp}/run")
        ...     model = run.load_checkpoint(10)  # the TMS after step 10, in eval mode
        ...     run.kind, run.history["step"], [step for step, _ in run.iter_checkpoints()]
        ('tms', array([ 0, 10, 20]), [0, 10, 20])
        >>> model(run.dataset()).shape
        torch.Size([16, 5])
    """

    path: Path
    kind: str
    config: Any
    history: dict[str, np.ndarray]
    completed: bool

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps that have a checkpoint, ascending (read from disk on each access)."""
        return checkpoint_steps(self.path)

    def load_checkpoint(self, step: int | None = None) -> nn.Module:
        """The model at ``step`` (default: the latest checkpoint), on CPU, in eval mode.

        Raises:
            CheckpointError: there is no checkpoint (of ``step``), or it is corrupt or does
                not fit the run's model.
        """
        if step is None:
            steps = self.checkpoint_steps
            if not steps:
                raise CheckpointError(f"{self.path} has no checkpoints")
            step = steps[-1]
        payload = read_checkpoint(self.path, step, kind=self.kind)
        model = build_model(self.config)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {checkpoint_path(self.path, step)} does not fit the run's model: {e}"
            ) from e
        return model.eval()

    def iter_checkpoints(self, steps: list[int] | None = None) -> Iterator[tuple[int, nn.Module]]:
        """Yield ``(step, model)`` for each checkpoint (or each of ``steps``), ascending."""
        for step in self.checkpoint_steps if steps is None else steps:
            yield step, self.load_checkpoint(step)

    def dataset(self) -> Any:
        """The run's data, regenerated from its config (see ``config.dataset()``)."""
        return self.config.dataset()

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, kind={self.kind!r}, completed={self.completed})"


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open the run directory ``path`` written by ``train_tms``/``train_modadd`` or the CLI.

    Checkpoints are read only on demand (`Run.load_checkpoint`).

    Args:
        path: the run directory (``out`` of `training`).

    Returns:
        A `Run`: the config, the history (column -> array) and whether it completed.

    Raises:
        RunDirectoryError: ``path`` does not exist, is not a run directory, or holds an
            unreadable or invalid config or history.

    Examples:
        >>> import tempfile
        >>> from entk_fast.paper import TMSConfig, load_run, train_tms
        >>> config = TMSConfig(n_features=5, n_hidden=2, n_points=16, steps=20)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = train_tms(config, f"{tmp}/run", progress=False, plot=False)
        ...     run = load_run(f"{tmp}/run")
        >>> run.config == config, run.completed
        (True, True)
    """
    run_path = Path(path)
    if not run_path.exists():
        raise RunDirectoryError(f"run directory {run_path} does not exist")
    if not run_path.is_dir():
        raise RunDirectoryError(
            f"{run_path} is not a directory: a run is the directory that training wrote "
            f"(holding {CONFIG_FILE}, {HISTORY_FILE} and {CHECKPOINT_DIR}/)"
        )
    kind, fields = read_config_file(run_path)
    try:
        config = config_from_dict(kind, fields)
    except (ValueError, TypeError) as e:
        raise RunDirectoryError(f"{run_path / CONFIG_FILE} holds an invalid config: {e}") from e
    file = run_path / HISTORY_FILE
    try:
        raw = read_regular_bytes(file, MAX_HISTORY_BYTES, what="history")
        meta = json.loads(raw.decode("utf-8"))
        history = {k: np.asarray(v) for k, v in meta["history"].items()}
        completed = bool(meta["completed"])
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{run_path} has no {HISTORY_FILE} (training never started)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EntkError) as e:
        raise RunDirectoryError(f"cannot read {file}: {e}") from e
    return Run(path=run_path, kind=kind, config=config, history=history, completed=completed)
