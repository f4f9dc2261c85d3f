"""Progress bars: progress=None (default) shows one only when interactive (a terminal or
Jupyter), True always, False never."""

from __future__ import annotations

import sys

import pytest
import torch
from ntk_reference import MLP

from entk_fast import empirical_ntk, entk_topk


@pytest.fixture
def case() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return MLP(3, (4,), 2).double().eval(), torch.randn(5, 3, dtype=torch.float64)


def test_silent_without_terminal_by_default(
    case: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x = case
    empirical_ntk(model, x)
    entk_topk(model, x, 2)
    assert capsys.readouterr().err == ""


def test_true_shows_a_bar_even_without_terminal(
    case: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    model, x = case
    empirical_ntk(model, x, progress=True, structured=False)
    assert "eNTK" in capsys.readouterr().err


def test_shown_in_a_jupyter_kernel(
    case: tuple, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    fake = types.ModuleType("IPython")
    shell = types.SimpleNamespace(kernel=object())
    fake.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    model, x = case
    empirical_ntk(model, x, structured=False)
    assert "eNTK" in capsys.readouterr().err


def test_shown_on_a_terminal_unless_disabled(
    case: tuple, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = case
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    empirical_ntk(model, x, structured=False)
    assert "eNTK" in capsys.readouterr().err
    empirical_ntk(model, x, progress=False, structured=False)
    assert capsys.readouterr().err == ""
