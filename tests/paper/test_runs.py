"""Run directories: atomic writes, checkpoints, bit-identical resume, load_run, and errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from entk_fast._io import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text
from entk_fast.errors import CheckpointError, InvalidArgumentError, RunDirectoryError
from entk_fast.paper.runs import load_run, run_lock
from entk_fast.paper.tasks.modadd import ModAddConfig
from entk_fast.paper.tasks.registry import build_model
from entk_fast.paper.tasks.tms import TMSConfig
from entk_fast.paper.training import train_modadd, train_tms

SMALL = ModAddConfig(p=11, hidden=32, epochs=40, checkpoint_every=10)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def _interrupt_at(step: int):  # type: ignore[no-untyped-def]
    def progress(s: int, total: int, metrics: object) -> None:
        if s == step:
            raise KeyboardInterrupt

    return progress


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _assert_same_history(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# --- atomic writes ----------------------------------------------------------------------------


def test_atomic_writers_write_and_leave_no_temporary_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]
    atomic_write_bytes(tmp_path / "a.bin", b"new")  # replaces an existing file
    assert (tmp_path / "a.bin").read_bytes() == b"new"


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, exc: type[BaseException]) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(exc), atomic_open(target) as f:
        f.write(b"half of the new con")
        raise exc
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


@pytest.mark.skipif(os.name != "posix", reason="umask semantics")
def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_atomic_open_rejects_other_modes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="mode"), atomic_open(tmp_path / "f", "a"):
        pass


# --- layout, load_run ---------------------------------------------------------------------------


def test_run_directory_layout_and_load_run(tmp_path: Path) -> None:
    cfg = ModAddConfig(p=7, hidden=16, epochs=25, checkpoint_every=10)
    result = train_modadd(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.kind == "modadd" and run.completed
    assert run.config == cfg
    assert run.checkpoint_steps == [0, 10, 20, 25]
    _assert_same_history(run.history, result.history)
    assert run.history["step"].dtype == np.int64
    _assert_same_state(run.load_checkpoint(), result.model)
    _assert_same_state(run.load_checkpoint(0), build_model(cfg))  # step 0 is the initialisation
    steps = []
    for step, model in run.iter_checkpoints():
        steps.append(step)
        assert not model.training
    assert steps == [0, 10, 20, 25]
    assert torch.equal(run.dataset().train_idx, cfg.dataset().train_idx)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["kind"] == "modadd" and meta["config"]["p"] == 7
    assert (tmp_path / "run" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="file is not a directory"):
        load_run(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirectoryError, match="not an entk-fast run directory"):
        load_run(tmp_path / "empty")
    train_modadd(ModAddConfig(p=5, hidden=8, epochs=2), tmp_path / "run", plot=False)
    config_file = tmp_path / "run" / "config.json"
    meta = json.loads(config_file.read_text())
    meta["config"]["p"] = 1
    config_file.write_text(json.dumps(meta))
    with pytest.raises(RunDirectoryError, match="invalid config: p must be an integer >= 2"):
        load_run(tmp_path / "run")
    config_file.write_text("{not json")
    with pytest.raises(RunDirectoryError, match="cannot read"):
        load_run(tmp_path / "run")


# --- resume -----------------------------------------------------------------------------------


def test_modadd_resume_is_bit_identical(tmp_path: Path) -> None:
    reference = train_modadd(SMALL, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        train_modadd(SMALL, tmp_path / "run", progress=_interrupt_at(27))
    partial = load_run(tmp_path / "run")
    assert partial.checkpoint_steps == [0, 10, 20] and not partial.completed
    assert partial.history["step"][-1] == 20
    resumed = train_modadd(SMALL, tmp_path / "run", resume=True)
    _assert_same_state(resumed.model, reference.model)
    _assert_same_history(resumed.history, reference.history)
    run, ref = load_run(tmp_path / "run"), load_run(tmp_path / "ref")
    assert run.completed and run.checkpoint_steps == ref.checkpoint_steps
    for step in ref.checkpoint_steps:
        _assert_same_state(run.load_checkpoint(step), ref.load_checkpoint(step))


def test_tms_resume_is_bit_identical(tmp_path: Path) -> None:
    cfg = TMSConfig(n_hidden=4, steps=60, checkpoint_every=20, log_every=5)
    reference = train_tms(cfg, plot=False)
    with pytest.raises(KeyboardInterrupt):
        train_tms(cfg, tmp_path / "run", progress=_interrupt_at(45))
    resumed = train_tms(cfg, tmp_path / "run", resume=True)
    _assert_same_state(resumed.model, reference.model)
    _assert_same_history(resumed.history, reference.history)


def test_resume_with_checkpoint_and_log_intervals_out_of_step(tmp_path: Path) -> None:
    # checkpoints at 4, 8, ...; history rows at 3, 6, 9, ...: the step-8 checkpoint's last row is 6
    cfg = TMSConfig(
        n_features=5, n_hidden=2, n_points=20, steps=30, checkpoint_every=4, log_every=3
    )
    reference = train_tms(cfg, plot=False)
    with pytest.raises(KeyboardInterrupt):
        train_tms(cfg, tmp_path / "run", progress=_interrupt_at(10), plot=False)
    resumed = train_tms(cfg, tmp_path / "run", resume=True, plot=False)
    _assert_same_state(resumed.model, reference.model)
    _assert_same_history(resumed.history, reference.history)


def test_refused_resume_leaves_a_live_writers_temporary_files(tmp_path: Path) -> None:
    from entk_fast.paper.runs import run_lock

    cfg = ModAddConfig(p=5, hidden=8, epochs=10, checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        train_modadd(cfg, tmp_path / "run", progress=_interrupt_at(7), plot=False)
    in_flight = tmp_path / "run" / "checkpoints" / ".step-000010.pt.0123456789ab.tmp"
    in_flight.write_bytes(b"being written")
    with run_lock(tmp_path / "run"):  # another process is training this run
        with pytest.raises(RunDirectoryError, match="in use by another training process"):
            train_modadd(cfg, tmp_path / "run", resume=True, plot=False)
    assert in_flight.read_bytes() == b"being written"


def test_resuming_a_completed_run_changes_nothing(tmp_path: Path) -> None:
    cfg = ModAddConfig(p=5, hidden=8, epochs=10, checkpoint_every=5)
    first = train_modadd(cfg, tmp_path / "run")
    before = _snapshot(tmp_path / "run" / "checkpoints")
    again = train_modadd(cfg, tmp_path / "run", resume=True)
    assert _snapshot(tmp_path / "run" / "checkpoints") == before
    _assert_same_state(again.model, first.model)


def test_resume_removes_stale_temporary_files(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train_modadd(SMALL, tmp_path / "run", progress=_interrupt_at(15))
    stale = tmp_path / "run" / "checkpoints" / ".step-000020.pt.0123456789ab.tmp"
    stale.write_bytes(b"torn")
    train_modadd(SMALL, tmp_path / "run", resume=True)
    assert not stale.exists()


# --- errors: nothing is overwritten -------------------------------------------------------------


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train_modadd(SMALL, tmp_path / "run", progress=_interrupt_at(25))
    ckpt = tmp_path / "run" / "checkpoints" / "step-000020.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="step-000020.pt is corrupt or truncated"):
        load_run(tmp_path / "run").load_checkpoint(20)
    # Resuming past a corrupt checkpoint: tests/paper/test_runs_reliability.py.
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(tmp_path / "run").load_checkpoint(20)
    torch.save({"weights": torch.zeros(3)}, ckpt)  # a valid torch file, but not ours
    with pytest.raises(CheckpointError, match="not an entk-fast checkpoint"):
        load_run(tmp_path / "run").load_checkpoint(20)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    train_modadd(ModAddConfig(p=5, hidden=8, epochs=20), tmp_path / "run", plot=False)
    run = load_run(tmp_path / "run")
    with pytest.raises(
        CheckpointError, match=r"no checkpoint for step 5 .*available steps: 0, 10, 20"
    ):
        run.load_checkpoint(5)


def test_checkpoint_of_another_model_is_rejected(tmp_path: Path) -> None:
    train_modadd(ModAddConfig(p=5, hidden=8, epochs=2), tmp_path / "a", plot=False)
    train_modadd(ModAddConfig(p=5, hidden=16, epochs=2), tmp_path / "b", plot=False)
    src = tmp_path / "b" / "checkpoints" / "step-000002.pt"
    (tmp_path / "a" / "checkpoints" / "step-000002.pt").write_bytes(src.read_bytes())
    with pytest.raises(CheckpointError, match="does not fit the run's model"):
        load_run(tmp_path / "a").load_checkpoint(2)


def test_a_different_run_in_the_output_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_modadd(ModAddConfig(p=7, hidden=8, epochs=3), out, plot=False)
    before = _snapshot(out)
    other = ModAddConfig(p=11, hidden=8, epochs=3)
    for resume in (False, True):
        with pytest.raises(RunDirectoryError, match="different run .*p: saved 7, requested 11"):
            train_modadd(other, out, resume=resume)
    with pytest.raises(RunDirectoryError, match="'modadd' run, not 'tms'"):
        train_tms(TMSConfig(steps=2), out)
    with pytest.raises(RunDirectoryError, match="already holds this run; pass resume=True"):
        train_modadd(ModAddConfig(p=7, hidden=8, epochs=3), out)
    assert _snapshot(out) == before


def test_foreign_or_invalid_output_paths_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(RunDirectoryError, match="not empty and is not an entk-fast run"):
        train_tms(TMSConfig(steps=2), foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunDirectoryError, match="is not a directory"):
        train_tms(TMSConfig(steps=2), a_file)
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        train_tms(TMSConfig(steps=2), tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()
    # an empty directory is fine
    (tmp_path / "empty").mkdir()
    train_tms(TMSConfig(steps=2), tmp_path / "empty", plot=False)


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_run_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_modadd(SMALL, out, progress=_interrupt_at(15))
    with run_lock(out):  # as if another process were training this run
        with pytest.raises(RunDirectoryError, match="in use by another training process"):
            train_modadd(SMALL, out, resume=True)
    assert load_run(out).checkpoint_steps == [0, 10]
    train_modadd(SMALL, out, resume=True)  # the lock is released again


def test_a_file_system_without_locks_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunDirectoryError, match="does not support file locks.*No locks available"):
        train_modadd(ModAddConfig(p=5, hidden=8, epochs=2), tmp_path / "run")
