"""Progress bars for long computations: shown only when asked for and stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr, disabled unless ``enabled`` and stderr is a TTY."""
    show = bool(enabled) and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, file=sys.stderr)
