"""_progress: in a Jupyter kernel without ipywidgets the bars are text, with no tqdm warning
(tqdm.auto warns "IProgress not found" on import there, even when no bar is ever shown)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tqdm.std import tqdm

from entk_fast import _progress


def test_importing_the_package_parts_does_not_import_tqdm_auto() -> None:
    code = (
        "import sys, entk_fast._progress, entk_fast.paper.training\n"
        "sys.exit(any(m in sys.modules for m in ('tqdm.auto', 'tqdm.autonotebook')))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_kernel_without_ipywidgets_gets_the_text_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "interactive", lambda: True)
    monkeypatch.setattr(_progress.importlib.util, "find_spec", lambda name: None)
    assert _progress.bar_class() is tqdm


def test_disabled_bar_is_disabled() -> None:
    bar = _progress.progress_bar(False, 10, "x")
    assert bar.disable
