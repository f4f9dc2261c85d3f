"""Reliability of training and run directories: resuming past a corrupt checkpoint, load_run on a
file, thread-count validation before any work, and tests that fail when AdamW's weight decay
or ``--no-plot`` is ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from entk_fast.cli import main
from entk_fast.errors import CheckpointError, InvalidArgumentError, RunDirectoryError
from entk_fast.paper.runs import load_run
from entk_fast.paper.tasks.modadd import ModAddConfig
from entk_fast.paper.tasks.registry import build_model
from entk_fast.paper.tasks.tms import TMSConfig
from entk_fast.paper.training import MAX_THREADS, train_modadd, train_tms

SMALL = ModAddConfig(p=11, hidden=32, epochs=40, checkpoint_every=10)


def _interrupt_at(step: int):  # type: ignore[no-untyped-def]
    def progress(s: int, total: int, metrics: object) -> None:
        if s == step:
            raise KeyboardInterrupt

    return progress


def _snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


CORRUPTIONS = {
    "truncated": lambda data: data[:1000],
    "garbage": lambda data: b"\x00garbage" * 50,
    "empty": lambda data: b"",
    "flipped": lambda data: data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:],
}


def _interrupted_run(tmp_path: Path) -> Path:
    with pytest.raises(KeyboardInterrupt):
        train_modadd(SMALL, tmp_path / "run", progress=_interrupt_at(25))
    run = tmp_path / "run"
    assert load_run(run).checkpoint_steps == [0, 10, 20]
    return run


# --- a corrupt latest checkpoint -------------------------------------------------------------


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_resume_falls_back_past_a_corrupt_latest_checkpoint(tmp_path: Path, how: str) -> None:
    reference = train_modadd(SMALL, tmp_path / "ref", plot=False)
    run = _interrupted_run(tmp_path)
    latest = run / "checkpoints" / "step-000020.pt"
    latest.write_bytes(CORRUPTIONS[how](latest.read_bytes()))
    with pytest.warns(UserWarning, match=r"resumed from step 10.*step-000020\.pt") as record:
        resumed = train_modadd(SMALL, run, resume=True, plot=False)
    assert len(record) == 1
    # Steps 11..20 are recomputed: the run ends bit-identical, the bad file rewritten.
    _assert_same_state(resumed.model, reference.model)
    for column, values in reference.history.items():
        assert np.array_equal(resumed.history[column], values), column
    done, ref = load_run(run), load_run(tmp_path / "ref")
    assert done.completed and done.checkpoint_steps == ref.checkpoint_steps
    for step in ref.checkpoint_steps:
        _assert_same_state(done.load_checkpoint(step), ref.load_checkpoint(step))


def test_resume_skips_every_corrupt_checkpoint_down_to_a_good_one(tmp_path: Path) -> None:
    reference = train_modadd(SMALL, plot=False)
    run = _interrupted_run(tmp_path)
    for step in (10, 20):
        (run / "checkpoints" / f"step-{step:06d}.pt").write_bytes(b"bad")
    with pytest.warns(UserWarning, match=r"2 unusable.*step 0.*step-000020.*step-000010"):
        resumed = train_modadd(SMALL, run, resume=True, plot=False)
    _assert_same_state(resumed.model, reference.model)


def test_resume_without_a_usable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    run = _interrupted_run(tmp_path)
    for step in (0, 10, 20):
        (run / "checkpoints" / f"step-{step:06d}.pt").write_bytes(b"bad")
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint.*step-000000.*Train again"):
        train_modadd(SMALL, run, resume=True, plot=False)
    assert _snapshot(run) == before


def test_resume_through_the_cli_warns_and_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _interrupted_run(tmp_path)
    (run / "checkpoints" / "step-000020.pt").write_bytes(b"")
    argv = ["train", "modadd", "--out", str(run), "--resume", "--no-progress", "--no-plot"]
    with pytest.warns(UserWarning, match="step-000020.pt"):
        assert main(argv) == 0
    assert load_run(run).completed


def test_load_run_on_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "run.pt"
    file.write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match=r"run\.pt is not a directory"):
        load_run(file)
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_run(tmp_path / "missing")


# --- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [100_000, MAX_THREADS + 1, 0, -3])
def test_absurd_thread_counts_are_refused_before_any_work(tmp_path: Path, threads: int) -> None:
    before = torch.get_num_threads()
    out = tmp_path / "run"
    with pytest.raises(InvalidArgumentError, match="threads must be an integer"):
        train_tms(TMSConfig(n_hidden=4, steps=5), out, threads=threads)
    with pytest.raises(InvalidArgumentError, match="threads must be an integer"):
        train_modadd(ModAddConfig(p=5, hidden=8, epochs=2), out, threads=threads)
    assert not out.exists()
    assert torch.get_num_threads() == before


def test_absurd_thread_count_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "tms", "--steps", "5", "--threads", "100000", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"threads must be an integer in [1, {MAX_THREADS}], got 100000" in err
    assert "Traceback" not in err and not out.exists()


def test_a_valid_thread_count_trains() -> None:
    result = train_tms(TMSConfig(n_hidden=4, steps=3), threads=2)
    assert result.history["step"].tolist()[-1] == 3


# --- AdamW weight decay -----------------------------------------------------------------------


def _adamw_reference_step(config: ModAddConfig) -> dict[str, torch.Tensor]:
    """One AdamW step from the run's initialisation, written out (Loshchilov & Hutter):
    θ ← θ(1 − lr·λ) − lr·m̂/(√v̂ + ε), with m̂ = g and v̂ = g² after the first step."""
    model = build_model(config)
    data = config.dataset()
    x, y = data.inputs[data.train_idx], data.targets[data.train_idx]
    loss = F.mse_loss(model(x), y)
    names = [name for name, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, list(model.parameters()))
    out = {}
    for name, p, g in zip(names, model.parameters(), grads, strict=True):
        p = p.detach().double()
        g = g.double()
        decayed = p * (1 - config.lr * config.weight_decay)
        out[name] = decayed - config.lr * g / (g.abs() + 1e-8)
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_one_epoch_is_one_adamw_step_with_weight_decay(weight_decay: float) -> None:
    config = ModAddConfig(p=5, hidden=16, epochs=1, lr=0.05, weight_decay=weight_decay)
    trained = dict(train_modadd(config).model.named_parameters())
    expected = _adamw_reference_step(config)
    assert expected.keys() == trained.keys()
    for name, value in expected.items():
        got = trained[name].detach().double()
        np.testing.assert_allclose(got.numpy(), value.numpy(), rtol=1e-5, atol=1e-6)


def test_weight_decay_changes_the_weights_by_the_decay_factor() -> None:
    """After a few epochs the weights with decay 0.5 differ from those without, and after one
    epoch exactly by the decoupled factor (1 − lr·λ) applied to the initial weights."""
    base = ModAddConfig(p=5, hidden=16, epochs=5, lr=0.05, weight_decay=0.0)
    decayed = ModAddConfig(p=5, hidden=16, epochs=5, lr=0.05, weight_decay=0.5)
    a = train_modadd(base).model.state_dict()
    b = train_modadd(decayed).model.state_dict()
    for name in a:
        assert not torch.allclose(a[name], b[name], rtol=1e-3, atol=0), name
    one_a = train_modadd(ModAddConfig(p=5, hidden=16, epochs=1, weight_decay=0.0)).model
    one_b = train_modadd(ModAddConfig(p=5, hidden=16, epochs=1, weight_decay=0.5)).model
    init = build_model(ModAddConfig(p=5, hidden=16))
    factor = 0.05 * 0.5
    for (name, pa), pb, p0 in zip(
        one_a.named_parameters(), one_b.parameters(), init.parameters(), strict=True
    ):
        torch.testing.assert_close(pa - pb, factor * p0.detach(), rtol=1e-4, atol=1e-6, msg=name)


# --- --no-plot --------------------------------------------------------------------------------


def test_no_plot_writes_no_training_curve(tmp_path: Path) -> None:
    argv = ["train", "modadd", "--p", "5", "--hidden", "8", "--epochs", "3", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "plain"), "--no-plot"]) == 0
    assert main([*argv, "--out", str(tmp_path / "plotted")]) == 0
    assert not (tmp_path / "plain" / "training_curve.png").exists()
    png = (tmp_path / "plotted" / "training_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    names = {f.name for f in (tmp_path / "plain").iterdir()}
    assert names == {"config.json", "history.json", "checkpoints", ".lock"}
    assert math.isfinite(float(load_run(tmp_path / "plain").history["train_loss"][-1]))
    train_modadd(ModAddConfig(p=5, hidden=8, epochs=2), tmp_path / "api", plot=False)
    assert not (tmp_path / "api" / "training_curve.png").exists()
