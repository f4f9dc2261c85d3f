"""What every ``entk-fast reproduce`` section shares: its outcome (`Section`), progress
lines, trained-or-reused runs, config tags for run and cache names, and figure links.

Apart from `.reproduce` so that a section in its own module (`.reproduce_transformer`)
uses them without importing the module that runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InvalidArgumentError

__all__ = ["Log", "Section", "cached_spectrum", "config_tag", "figure_links", "trained_run"]


@dataclass
class Section:
    """One section's outcome: numbers, figures (name -> Figure), checks and timings."""

    numbers: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class Log:
    """Progress lines on stderr (a long step says what it is doing and how long it took)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


def config_tag(config: Any) -> str:
    """A short digest of a config: run and cache names change whenever the config does."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=3).hexdigest()


def trained_run(config: Any, path: Path, log: Log) -> Any:
    """The trained run in ``path``: reused when finished, resumed when interrupted."""
    from ..runs import load_run
    from ..training import train

    resume = (path / "config.json").exists()
    if resume:
        run = load_run(path)
        if run.completed and run.config == config:
            log(f"  reusing the finished run {path}")
            return run
    start = time.perf_counter()
    log(f"  training {type(config).__name__} into {path}" + (" (resuming)" if resume else ""))
    train(config, path, resume=resume, progress=False)
    log(f"  trained in {time.perf_counter() - start:.1f} s")
    return load_run(path)


def figure_links(report: dict[str, Any], prefix: str) -> list[str]:
    """Markdown image lines for the report's figures whose names start with ``prefix``."""
    return [
        f"![{name}]({file})\n"
        for name, file in report["figures"].items()
        if name.startswith(prefix)
    ]


def cached_spectrum(path: Path, compute: Callable[[], Any]) -> Any:
    """The spectrum saved at ``path``, or ``compute()`` saved there (a stale or foreign file is
    recomputed)."""
    from ...results import NTKSpectrum

    if path.exists():
        try:
            return NTKSpectrum.load(path)
        except InvalidArgumentError:
            pass  # a stale or foreign file: recompute and overwrite it
    spectrum = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    spectrum.save(path)
    return spectrum
