"""Progress bars for long computations: ``True`` shows one, ``False`` never, ``None`` (the
default) when someone is watching — a terminal on stderr or a Jupyter kernel."""

from __future__ import annotations

import importlib.util
import sys

from tqdm.std import tqdm

__all__ = ["bar_class", "interactive", "progress_bar"]


def interactive() -> bool:
    """Whether stderr is a terminal or the code runs in a Jupyter (IPython) kernel."""
    if sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None) if shell is not None else None
    kernel = get() if callable(get) else None
    return kernel is not None and hasattr(kernel, "kernel")


def bar_class() -> type[tqdm]:
    """tqdm's widget bar in a Jupyter kernel that has ipywidgets, its text bar elsewhere (a
    kernel without ipywidgets gets text too, not tqdm's "IProgress not found" warning)."""
    if interactive() and not sys.stderr.isatty() and importlib.util.find_spec("ipywidgets"):
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    return tqdm


def progress_bar(enabled: bool | None, total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar (a widget in Jupyter, text on stderr elsewhere), shown as ``enabled`` says."""
    show = interactive() if enabled is None else bool(enabled)
    if not show:
        return tqdm(total=total, disable=True)
    return bar_class()(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)
