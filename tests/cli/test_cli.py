"""The entk-fast CLI: train commands, help, error reporting, resume, subcommand plug-ins."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from entk_fast.cli import build_parser, main
from entk_fast.paper import ModAddConfig, train_modadd
from entk_fast.paper.runs import load_run

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("model", ["tms", "modadd"])
def test_help_documents_every_option(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", model, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    sub = _subparser(build_parser(), "train", model)
    for action in sub._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text
    for flag in ("--seed", "--checkpoint-every", "--resume", "--out", "(default: "):
        assert flag in text
    assert ("--steps" if model == "tms" else "--epochs") in text


def test_train_modadd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "modadd"
    argv = ["train", "modadd", "--p", "7", "--hidden", "32", "--epochs", "30", "--seed", "3"]
    rc = main([*argv, "--checkpoint-every", "15", "--out", str(out), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert f"run directory: {out}" in stdout and "test accuracy first above 50%" in stdout
    run = load_run(out)
    assert run.config == ModAddConfig(p=7, hidden=32, epochs=30, seed=3, checkpoint_every=15)
    assert run.checkpoint_steps == [0, 15, 30]
    assert (out / "training_curve.png").is_file()


def test_train_tms_bar_is_quiet_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tms-10-09"
    argv = ["train", "tms", "--hidden", "10", "--sparsity", "0.9", "--steps", "40"]
    assert main([*argv, "--log-every", "20", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "40/40" not in captured.err  # stderr is not a TTY here: no bar in logs
    assert "reconstructed features" in captured.out
    run = load_run(out)
    assert (run.config.n_hidden, run.config.sparsity, run.config.steps) == (10, 0.9, 40)
    assert run.history["step"].tolist() == [0, 20, 40]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["modadd", "--p", "1"], "p must be an integer >= 2, got 1"),
        (["modadd", "--lr", "-0.1"], "lr must be in (0, inf), got -0.1"),
        (["tms", "--sparsity", "1.0"], "sparsity must be in [0, 1), got 1.0"),
        (["tms", "--sparsity", "-0.5"], "sparsity must be in [0, 1)"),
        (["tms", "--threads", "0"], "threads must be an integer >= 1"),
    ],
)
def test_invalid_values_are_reported_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entk-fast: error: ") and fragment in err
    assert "Traceback" not in err
    assert not out.exists()


def test_existing_different_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    base = ["train", "modadd", "--hidden", "8", "--epochs", "3", "--no-progress", "--out", str(out)]
    assert main([*base, "--p", "5"]) == 0
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    capsys.readouterr()
    assert main([*base, "--p", "7"]) == 2
    assert "already holds a different run (p: saved 5, requested 7)" in capsys.readouterr().err
    assert main([*base, "--p", "5"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


def test_resume_takes_the_saved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ModAddConfig(p=7, hidden=16, epochs=30)
    reference = train_modadd(cfg)

    def stop(step: int, total: int, metrics: object) -> None:
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_modadd(cfg, tmp_path / "run", progress=stop)
    resume = ["train", "modadd", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]
    assert main([*resume, "--p", "11"]) == 2
    assert "--p 11 (the saved run has 7)" in capsys.readouterr().err
    assert main([*resume, "--p", "7"]) == 0  # options that agree with the run are fine
    model = load_run(tmp_path / "run").load_checkpoint()
    for a, b in zip(model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert main(["train", "tms", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "holds a 'modadd' run" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_a_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import entk_fast.paper.training

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(entk_fast.paper.training, "train", interrupted)
    assert main(["train", "modadd", "--out", str(tmp_path / "r"), "--no-progress"]) == 130
    assert f"--out {tmp_path / 'r'} --resume" in capsys.readouterr().err


def test_missing_demo_module_does_not_break_train(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "entk_fast.cli.demo", None)  # import now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    capsys.readouterr()
    assert main(["demo"]) == 2
    assert "the 'demo' command is unavailable" in capsys.readouterr().err


def test_subcommands_plug_in_through_add_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        demo = subparsers.add_parser("demo", help="a demo")
        demo.add_argument("--n", type=int, default=1)
        demo.set_defaults(func=lambda args: seen.append(args.n) or 0)

    fake = types.ModuleType("entk_fast.cli.demo")
    fake.add_parser = add_parser  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "entk_fast.cli.demo", fake)
    assert main(["demo", "--n", "4"]) == 0
    assert seen == [4]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().err
    assert main(["train"]) == 2


def test_console_script_is_declared() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["entk-fast"] == "entk_fast.cli:main"


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_real_sigint_and_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """A separate process is interrupted with Ctrl-C, resumed, killed with SIGKILL mid-run,
    and resumed again; it ends bit-identical to an uninterrupted run."""
    cfg = ModAddConfig(hidden=128, epochs=300, checkpoint_every=5)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PYTHON_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-c", "import sys; from entk_fast.cli import main; sys.exit(main())"]
    argv = ["train", "modadd", "--hidden", "128", "--epochs", "300", "--checkpoint-every", "5"]
    argv.append("--no-progress")

    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cmd, *argv, "--out", str(out), *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_checkpoint(proc: subprocess.Popen[str], step: int) -> None:
        target = out / "checkpoints" / f"step-{step:06d}.pt"
        deadline = time.monotonic() + 120
        while not target.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.002)

    proc = start()
    wait_for_checkpoint(proc, 10)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not load_run(out).completed

    proc = start("--resume")
    wait_for_checkpoint(proc, 60)
    proc.kill()
    proc.communicate(timeout=60)
    assert not load_run(out).completed

    assert main([*argv, "--out", str(out), "--resume"]) == 0
    reference = train_modadd(cfg)
    run = load_run(out)
    assert run.completed
    for a, b in zip(run.load_checkpoint().parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (run.history["test_acc"] == reference.history["test_acc"]).all()


def test_training_progress_bar_draws_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    from entk_fast.paper.training import tqdm_progress

    update = tqdm_progress("train tms", disable=False)
    for step in (0, 20, 40):
        update(step, 40, {"train_loss": 0.5})
    assert "40/40" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "entk_fast", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.startswith("entk-fast ")


def test_runtime_failures_exit_1_and_usage_errors_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import entk_fast.paper.training
    from entk_fast.errors import MemoryBudgetError

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryBudgetError("max_memory = 1 kB is too small")

    monkeypatch.setattr(entk_fast.paper.training, "train", out_of_memory)
    assert main(["train", "modadd", "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    assert "max_memory = 1 kB is too small" in capsys.readouterr().err
    assert main(["train", "modadd", "--p", "0", "--out", str(tmp_path / "s")]) == 2
    assert "p must be an integer >= 2" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint_and_resumes_bit_identically(tmp_path: Path) -> None:
    """SLURM's time limit sends SIGTERM: training saves the step it finished, exits 143 with a
    resume hint, and the resumed run ends bit-identical to an uninterrupted one."""
    cfg = ModAddConfig(hidden=64, epochs=400, checkpoint_every=50)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PYTHON_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-c", "import sys; from entk_fast.cli import main; sys.exit(main())"]
    argv = ["train", "modadd", "--hidden", "64", "--epochs", "400", "--checkpoint-every", "50"]
    argv += ["--no-progress", "--out", str(out)]
    proc = subprocess.Popen([*cmd, *argv], env=env, stderr=subprocess.PIPE, text=True)
    first = out / "checkpoints" / "step-000000.pt"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # pragma: no cover - finished before the signal arrived
        pytest.skip("training finished before SIGTERM arrived")
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "--resume" in err and "Traceback" not in err
    run = load_run(out)
    assert not run.completed
    last = run.checkpoint_steps[-1]
    assert 0 < last < 400  # the step it finished, saved on the way out
    assert main([*argv, "--resume"]) == 0
    reference = train_modadd(cfg)
    model = load_run(out).load_checkpoint()
    for a, b in zip(model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_verbose_logs_and_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    out = tmp_path / "run"
    args = ["train", "modadd", "--p", "5", "--hidden", "8", "--epochs", "20", "--out", str(out)]
    try:
        assert main(["-v", *args, "--no-progress", "--json"]) == 0
    finally:
        logger = logging.getLogger("entk_fast")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["kind"] == "modadd" and summary["final"]["step"] == 20
    assert 0.0 <= summary["final"]["test_acc"] <= 1.0
    assert "entk_fast: train modadd: step 10/20" in captured.err
    assert main([*args[:-2], "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert "entk_fast:" not in capsys.readouterr().err  # quiet by default


@pytest.mark.parametrize(
    "command",
    [
        ("train", "modadd"),
        ("train", "tms"),
        ("demo",),
        ("batch",),
        ("batch-summary",),
        ("spectrum",),
        ("reproduce",),
    ],
)
def test_summary_commands_offer_json(command: tuple[str, ...]) -> None:
    help_text = _subparser(build_parser(), *command).format_help()
    assert "--json" in help_text and "one JSON object on stdout" in " ".join(help_text.split())
