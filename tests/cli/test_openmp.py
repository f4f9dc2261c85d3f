"""The command line's shorter OpenMP spin (`entk_fast._openmp`): set for its own process
before torch is imported, never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entk_fast._openmp import SHORT_SPIN, SPIN_VARIABLE, USER_CHOICES, shorten_openmp_spin

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


def test_sets_the_spin_count_when_nothing_is_chosen_and_torch_is_not_loaded() -> None:
    env = {"PATH": "/bin"}
    assert shorten_openmp_spin(env, modules={}) is True
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "30000"}
    assert SHORT_SPIN == "30000" and SPIN_VARIABLE == "GOMP_SPINCOUNT"


@pytest.mark.parametrize("name", USER_CHOICES)
def test_leaves_the_users_choice(name: str) -> None:
    env = {name: "PASSIVE" if name == "OMP_WAIT_POLICY" else "5"}
    before = dict(env)
    assert shorten_openmp_spin(env, modules={}) is False
    assert env == before


def test_does_nothing_once_torch_is_imported() -> None:
    # libgomp has read its settings when torch loaded it: the variable would change nothing
    env: dict[str, str] = {}
    assert shorten_openmp_spin(env, modules={"torch": object()}) is False
    assert env == {}


def _spin_seen_by_cli(extra: dict[str, str]) -> tuple[str, bool]:
    """(GOMP_SPINCOUNT in a fresh process after ``entk-fast --version``, whether torch was
    imported before main() ran)."""
    env = {k: v for k, v in os.environ.items() if k not in USER_CHOICES}
    env["PYTHONPATH"] = os.pathsep.join([str(PYTHON_DIR), env.get("PYTHONPATH", "")])
    env.update(extra)
    code = (
        "import os, sys\n"
        "from entk_fast.cli import main\n"
        "before = 'torch' in sys.modules\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    value, before = out.stdout.strip().splitlines()[-1].split()
    return value, before == "True"


def test_the_command_line_sets_it_before_torch_loads() -> None:
    value, torch_before = _spin_seen_by_cli({})
    assert value == SHORT_SPIN
    assert not torch_before  # so libgomp reads it when the subcommands import torch


def test_the_command_line_keeps_the_users_value() -> None:
    assert _spin_seen_by_cli({"GOMP_SPINCOUNT": "1234"})[0] == "1234"
    assert _spin_seen_by_cli({"OMP_WAIT_POLICY": "PASSIVE"})[0] == "None"
