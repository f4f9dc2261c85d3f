"""Progress bars for long computations: ``True`` shows one, ``False`` never, ``None`` (the
default) when someone is watching — a terminal on stderr or a Jupyter kernel."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["interactive", "progress_bar"]


def interactive() -> bool:
    """Whether stderr is a terminal or the code runs in a Jupyter (IPython) kernel."""
    if sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None) if shell is not None else None
    kernel = get() if callable(get) else None
    return kernel is not None and hasattr(kernel, "kernel")


def progress_bar(enabled: bool | None, total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar (a widget in Jupyter, text on stderr elsewhere), shown as ``enabled`` says."""
    show = interactive() if enabled is None else bool(enabled)
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, file=sys.stderr)
