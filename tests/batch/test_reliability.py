"""Reliability of the batch commands, the results store and saved results: what they read
(regular files only, bounded, checked against their headers), what they delete (only what
they wrote, or what a dead writer left), how they share a results folder (one batch at a
time, runs never mixed by name), how they fail (a full disk, a damaged record, a signal)
and what the CLI prints when they do."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from entk_fast._io import atomic_write_json, owner_tag
from entk_fast.batch import ResultStore, file_sha256, find_runs, run_batch, summarize
from entk_fast.batch import cluster as cluster_mod
from entk_fast.batch.store import JobId
from entk_fast.batch.tiled import tiled_kernel
from entk_fast.cli import interrupt_status, main
from entk_fast.errors import EntkError, InvalidArgumentError, SignalInterrupt, StorageError
from entk_fast.paper.tasks.modadd import ModAddConfig
from entk_fast.paper.training import Terminated, train_modadd
from entk_fast.results import EmpiricalNTK, NTKSpectrum

P = 5
STEPS = (0, 10, 20)


@pytest.fixture(scope="module")
def one_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small modadd run with checkpoints at steps 0, 10, 20."""
    path = tmp_path_factory.mktemp("runs") / "run"
    train_modadd(ModAddConfig(p=P, hidden=16, epochs=20, checkpoint_every=10), path, plot=False)
    return path


def _copy_run(run: Path, dest: Path, *, seed: int | None = None) -> Path:
    shutil.copytree(run, dest)
    if seed is not None:  # another run: the config differs (its checkpoints are reused)
        config = json.loads((dest / "config.json").read_text())
        config["config"]["seed"] = seed
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tmp_name(target: str, pid: int, suffix: str = "tmp") -> str:
    host = owner_tag().split("-")[1]
    return f".{target}.{pid}-{host}.0123456789ab.{suffix}"


def _in_thread(fn: Any, timeout: float) -> Any:
    """``fn()`` in a daemon thread; fails the test (instead of hanging it) past ``timeout``."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["error"] = e

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _no_tmp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith((".tmp", ".partial"))]


# --- the local cluster listens on loopback only -----------------------------------------------


def test_local_cluster_binds_scheduler_workers_and_dashboard_to_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import distributed

    seen: dict[str, Any] = {}

    class Refused(Exception):
        pass

    def fake_cluster(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise Refused

    monkeypatch.setattr(distributed, "LocalCluster", fake_cluster)
    with pytest.raises(Refused), cluster_mod.open_client(workers=1, dashboard=True):
        pass
    assert seen["host"] == "127.0.0.1"
    assert seen["dashboard_address"].startswith("127.0.0.1:")
    assert seen.get("worker_dashboard_address") is None


def test_a_real_local_cluster_and_a_run_folder_with_a_comma_and_a_space(
    one_run: Path, tmp_path: Path
) -> None:
    """Every address of a local cluster is on 127.0.0.1; run folders named with a comma or
    a space are analysed on it (names and task keys cope)."""
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "a,b")
    _copy_run(one_run, runs / "my run", seed=1)
    with cluster_mod.open_client(workers=1, dashboard=True) as client:
        client.wait_for_workers(1, timeout=60)
        info = client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert info["workers"] and all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        link = cluster_mod.dashboard_address(client)
        assert link is None or "127.0.0.1" in link
        report = run_batch(runs, tmp_path / "res", "spectrum", client=client)
    assert not report.failed
    assert sorted({name.split("/step")[0] for name in report.succeeded}) == ["a,b", "my run"]


def test_a_run_folder_with_a_comma_or_a_space_does_not_abort_a_serial_batch(
    one_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "lr 0.1, wd 1")
    _copy_run(one_run, runs / "plain", seed=1)
    out = tmp_path / "res"
    args = ["batch", str(runs), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main([*args, "--analysis", "overlaps"]) == 0
    assert summarize(out).runs.keys() == {"lr 0.1, wd 1", "plain"}
    assert main(["batch-summary", str(out), "--no-plot"]) == 0
    assert "lr 0.1, wd 1" in capsys.readouterr().out


# --- checkpoints: regular files only, bounded ---------------------------------------------------


def test_a_checkpoint_symlinked_to_dev_zero_is_a_failed_job_not_an_endless_read(
    one_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(one_run, tmp_path / "runs" / "run")
    ckpt = run / "checkpoints" / "step-000010.pt"
    ckpt.unlink()
    ckpt.symlink_to("/dev/zero")
    out = tmp_path / "res"
    report = _in_thread(lambda: run_batch(run.parent, out, "spectrum", retries=0), 120)
    assert report.failed == ["run/step-000010/spectrum"]
    assert len(report.succeeded) == len(STEPS) - 1
    error = ResultStore(out).read_failures()["run/step-000010/spectrum"]["error"]
    assert "not a regular file" in error and "step-000010.pt" in error


def test_a_checkpoint_that_is_a_fifo_does_not_block_the_batch(
    one_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(one_run, tmp_path / "runs" / "run")
    ckpt = run / "checkpoints" / "step-000020.pt"
    ckpt.unlink()
    os.mkfifo(ckpt)
    report = _in_thread(lambda: run_batch(run.parent, tmp_path / "res", "spectrum"), 120)
    assert report.failed == ["run/step-000020/spectrum"]


def test_a_checkpoint_symlinked_to_a_regular_file_is_followed(
    one_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(one_run, tmp_path / "runs" / "run")
    ckpt = run / "checkpoints" / "step-000020.pt"
    kept = tmp_path / "elsewhere.pt"
    ckpt.rename(kept)
    ckpt.symlink_to(kept)
    report = run_batch(run.parent, tmp_path / "res", "spectrum")
    assert not report.failed and len(report.succeeded) == len(STEPS)


def test_a_run_whose_history_is_a_symlink_to_dev_zero_is_one_recorded_failure(
    one_run: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "good")
    bad = _copy_run(one_run, runs / "bad", seed=2)
    (bad / "history.json").unlink()
    (bad / "history.json").symlink_to("/dev/zero")
    report = _in_thread(lambda: run_batch(runs, tmp_path / "res", "spectrum"), 120)
    assert report.failed == ["bad/*"] and len(report.succeeded) == len(STEPS)
    error = ResultStore(tmp_path / "res").read_failures()["bad/*"]["error"]
    assert "history.json" in error and "not a regular file" in error


def test_file_sha256_reads_regular_files_only_and_honours_its_cap(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"x" * 1000)
    assert file_sha256(file) == file_sha256(file, max_bytes=1000)
    with pytest.raises(InvalidArgumentError, match="checkpoint: .* more than the 999"):
        file_sha256(file, max_bytes=999, what="checkpoint")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        file_sha256("/dev/zero")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        file_sha256(tmp_path)


# --- run folders reached through symlinks -----------------------------------------------------


def test_symlinked_run_folders_are_followed_and_loops_and_broken_links_reported(
    one_run: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "real")
    elsewhere = _copy_run(one_run, tmp_path / "elsewhere" / "linked-target", seed=3)
    (runs / "group").mkdir()
    (runs / "group" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (runs / "group" / "again").symlink_to(runs / "real", target_is_directory=True)
    (runs / "group" / "loop").symlink_to(runs, target_is_directory=True)
    (runs / "broken").symlink_to(tmp_path / "missing", target_is_directory=True)
    with pytest.warns(RuntimeWarning) as caught:
        found = find_runs(runs)
    assert found == {"group/linked": runs / "group" / "linked", "real": runs / "real"}
    notes = " | ".join(str(w.message) for w in caught)
    assert "group/again is real again" in notes and "group/loop is RUNS_DIR again" in notes
    assert "broken is a broken symlink" in notes
    with pytest.warns(RuntimeWarning):
        report = run_batch(runs, tmp_path / "res", "spectrum")
    assert len(report.succeeded) == 2 * len(STEPS) and not report.failed
    record = ResultStore(tmp_path / "res").read_record(JobId("group/linked", 10, "spectrum"))
    assert record is not None
    assert record["provenance"]["run_path"] == str(elsewhere.resolve())


# --- saved results: checked against their header, bounded ---------------------------------------


def _spectrum(n: int = 6, c: int = 2, k: int = 3) -> NTKSpectrum:
    rng = np.random.default_rng(0)
    return NTKSpectrum(
        eigenvalues=np.sort(rng.random(k))[::-1].copy(),
        eigenvectors=rng.standard_normal((n * c, k)),
        method="dense",
        n_samples=n,
        n_outputs=c,
        reduction="flattened",
    )


def _rewrite(path: Path, **replace: np.ndarray | None) -> None:
    """Replace (or with None drop) arrays of a saved result, keeping its header."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    for name, value in replace.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    np.savez(path, **arrays)


def test_a_saved_spectrum_whose_arrays_contradict_its_header_is_refused(tmp_path: Path) -> None:
    spec = _spectrum()
    path = tmp_path / "s.npz"
    spec.save(path)
    assert NTKSpectrum.load(path).eigenvectors.shape == (12, 3)

    _rewrite(path, eigenvectors=np.zeros((10, 3)))  # rows ≠ N·C of the header
    with pytest.raises(InvalidArgumentError, match=r"eigenvectors.*\(10, 3\).*\(12, 'k'\)"):
        NTKSpectrum.load(path)
    spec.save(path)
    _rewrite(path, eigenvalues=np.zeros(4))  # 4 values for 3 vectors
    with pytest.raises(InvalidArgumentError, match="do not belong together"):
        NTKSpectrum.load(path)
    spec.save(path)
    _rewrite(path, eigenvectors=np.zeros((12, 3), dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match="dtype int64"):
        NTKSpectrum.load(path)
    spec.save(path)
    _rewrite(path, extra=np.zeros(3))
    with pytest.raises(InvalidArgumentError, match="does not name.*extra"):
        NTKSpectrum.load(path)
    spec.save(path)
    _rewrite(path, eigenvalues=None)
    with pytest.raises(InvalidArgumentError, match="lacks the array 'eigenvalues'"):
        NTKSpectrum.load(path)


def test_a_saved_kernel_whose_arrays_contradict_its_header_is_refused(tmp_path: Path) -> None:
    ntk = EmpiricalNTK(
        kernel=np.eye(4),
        layer_kernels={"a": np.eye(4) / 2, "b": np.eye(4) / 2},
        n_samples=4,
        n_outputs=3,
        reduction="trace",
        parameter_groups={"a": ("a.weight",), "b": ("b.weight",)},
        output_metric=None,
    )
    path = tmp_path / "k.npz"
    ntk.save(path)
    assert EmpiricalNTK.load(path).kernel.shape == (4, 4)
    _rewrite(path, kernel=np.eye(5))
    with pytest.raises(InvalidArgumentError, match=r"'kernel' has shape \(5, 5\).*\(4, 4\)"):
        EmpiricalNTK.load(path)
    ntk.save(path)
    _rewrite(path, layer_1=None)
    with pytest.raises(InvalidArgumentError, match="lacks the array 'layer_1'"):
        EmpiricalNTK.load(path)
    ntk.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(str(arrays["__entk_fast_meta__"]))
    header["reduction"] = "flattened"  # a flattened kernel would be (12, 12)
    arrays["__entk_fast_meta__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    with pytest.raises(InvalidArgumentError, match=r"\(12, 12\)"):
        EmpiricalNTK.load(path)
    # the kind is checked: a kernel file is no spectrum
    ntk.save(path)
    with pytest.raises(InvalidArgumentError, match="not a 'entk-fast-spectrum'"):
        NTKSpectrum.load(path)


def _compressed_bomb(path: Path, spec: NTKSpectrum, megabytes: int) -> None:
    """A spectrum file whose eigenvectors member inflates to ``megabytes`` of zeros."""
    spec.save(path)
    with np.load(path) as data:
        meta = data["__entk_fast_meta__"]
    rows = megabytes * (1 << 20) // 8 // 3
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in (("__entk_fast_meta__", meta), ("eigenvalues", spec.eigenvalues)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, value)
            zf.writestr(name + ".npy", buffer.getvalue())
        with zf.open("eigenvectors.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (rows, 3)}
            np.lib.format.write_array_header_1_0(f, header)
            block = bytes(1 << 20)
            left = rows * 3 * 8
            while left:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))


def test_a_compressed_member_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    _compressed_bomb(path, _spectrum(), megabytes=160)
    assert path.stat().st_size < 1 << 20  # well under a MiB on disk
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgumentError, match="declares .* bytes .* more than"):
            NTKSpectrum.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    # an explicit, larger bound is honoured: the header is then what refuses the array
    with pytest.raises(InvalidArgumentError, match="eigenvectors"):
        NTKSpectrum.load(path, max_bytes=1 << 30)


def test_a_member_whose_header_claims_more_than_its_zip_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lie.npz"
    spec = _spectrum()
    spec.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    buffer.write(arrays["eigenvectors"].tobytes())
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("__entk_fast_meta__", "eigenvalues"):
            inner = io.BytesIO()
            np.lib.format.write_array(inner, arrays[name])
            zf.writestr(name + ".npy", inner.getvalue())
        zf.writestr("eigenvectors.npy", buffer.getvalue())
    with pytest.raises(InvalidArgumentError, match="header of eigenvectors declares"):
        NTKSpectrum.load(path)


# --- the store's temporary files and its lock ----------------------------------------------------


def test_a_batch_removes_only_temporary_files_of_dead_writers(
    one_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res"
    folder = out / "jobs" / "run"
    folder.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": _tmp_name("step-000010.spectrum.json", _dead_pid()),
            "live": _tmp_name("step-000020.spectrum.json", live.pid),
            "unknown": ".step-000000.spectrum.json.0123456789ab.tmp",  # no owner in the name
        }
        for name in names.values():
            (folder / name).write_text("partial")
        run_batch(one_run.parent, out, "spectrum")
        left = {p.name for p in folder.iterdir()}
        assert names["dead"] not in left
        assert names["live"] in left and names["unknown"] in left
    finally:
        live.kill()
        live.wait()


def test_a_second_batch_on_the_same_out_is_refused_and_the_lock_dies_with_its_holder(
    one_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '.batch.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, b'pid %d' % os.getpid())\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InvalidArgumentError, match=r"out: .* in use by another"):
            run_batch(one_run.parent, out, "spectrum")
        assert not (out / "jobs").exists()
        argv = ["batch", str(one_run.parent), "--out", str(out), "--workers", "0", "--json"]
        assert main(argv) == 2
        error = json.loads(capsys.readouterr().out)
        assert error["type"] == "InvalidArgumentError" and f"pid {holder.pid}" in error["error"]
    finally:
        holder.kill()  # a crash: the OS releases its lock
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    report = run_batch(one_run.parent, out, "spectrum")
    assert len(report.succeeded) == len(STEPS)
    with ResultStore(out).batch_lock():  # released again when the batch ended
        pass


# --- spectrum --out: only its own files, runs never mixed by name ------------------------------


def test_spectrum_out_json_without_arrays_keeps_an_unrelated_npz(
    one_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "X.json"
    unrelated = tmp_path / "X.npz"
    unrelated.write_bytes(b"someone else's arrays")
    argv = ["spectrum", str(one_run), "--step", "10", "--out", str(out), "--analysis"]
    assert main([*argv, "overlaps"]) == 0
    assert unrelated.read_bytes() == b"someone else's arrays"
    assert json.loads(out.read_text())["analysis"] == "overlaps"
    # the arrays of the record it replaces are its own: those are removed
    assert main([*argv, "spectrum"]) == 0
    assert NTKSpectrum.load(unrelated).n_samples == P * P
    assert main([*argv, "overlaps"]) == 0
    assert not unrelated.exists()


def test_runs_that_share_a_folder_name_keep_their_own_results(
    one_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "seed0" / "modadd", seed=0)
    _copy_run(one_run, runs / "seed1" / "modadd", seed=1)
    out = tmp_path / "res"
    monkeypatch.chdir(runs)  # relative paths: named by them
    for seed in (0, 1):
        argv = ["spectrum", f"seed{seed}/modadd", "--step", "20", "--out", str(out)]
        assert main(argv) == 0
    summary = summarize(out)
    assert sorted(summary.runs) == ["seed0/modadd", "seed1/modadd"]
    configs = {r["run"]: r["inputs"]["config"]["seed"] for r in ResultStore(out).iter_records()}
    assert configs == {"seed0/modadd": 0, "seed1/modadd": 1}
    # absolute paths: both named "modadd"; the second is refused, not mixed with the first
    other = tmp_path / "res2"
    assert main(["spectrum", str(runs / "seed0/modadd"), "--step", "20", "--out", str(other)]) == 0
    with pytest.raises(InvalidArgumentError, match="name: .*'modadd'.*another run"):
        run_batch(runs / "seed1" / "modadd", other, "spectrum")
    argv = ["spectrum", str(runs / "seed1/modadd"), "--step", "20", "--out", str(other)]
    assert main(argv) == 2
    assert main([*argv, "--name", "seed1/modadd"]) == 0
    assert sorted(summarize(other).runs) == ["modadd", "seed1/modadd"]


# --- tiled kernels: overwrite only a kernel, stale partials removed, a full disk ----------------


def _tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2), torch.randn(6, 3)


def test_tiled_kernel_overwrite_refuses_a_folder_that_is_no_stored_kernel(tmp_path: Path) -> None:
    model, x = _tiny()
    target = tmp_path / "kernel.npy"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="out_path: .* no kernel stored"):
        tiled_kernel(model, x, target, tile=4, format="npy", overwrite=True)
    assert (target / "precious.txt").read_text() == "keep me"
    assert _no_tmp_files(tmp_path)
    # a folder that is a stored kernel (its Zarr metadata says so) is replaced
    shutil.rmtree(target)
    target.mkdir()
    (target / "zarr.json").write_text(
        json.dumps({"attributes": {"format": "entk-fast-tiled-kernel"}})
    )
    stored = tiled_kernel(model, x, target, tile=4, format="npy", overwrite=True)
    assert target.is_file() and stored.load().shape == (6, 6)
    # and a stored .npy kernel too
    again = tiled_kernel(model, x, target, tile=4, format="npy", overwrite=True)
    np.testing.assert_array_equal(again.load(), stored.load())


def test_tiled_kernel_removes_the_partials_of_killed_writers_only(tmp_path: Path) -> None:
    model, x = _tiny()
    target = tmp_path / "kernel.npy"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_file = tmp_path / _tmp_name("kernel.npy", _dead_pid(), "partial")
        dead_dir = tmp_path / _tmp_name("kernel.npy", _dead_pid(), "partial").replace(
            "0123456789ab", "ba9876543210"
        )
        live_one = tmp_path / _tmp_name("kernel.npy", live.pid, "partial")
        other_target = tmp_path / _tmp_name("other.npy", _dead_pid(), "partial")
        dead_file.write_bytes(b"x")
        dead_dir.mkdir()
        (dead_dir / "c0").write_bytes(b"x")
        live_one.write_bytes(b"x")
        other_target.write_bytes(b"x")
        tiled_kernel(model, x, target, tile=4, format="npy")
        assert not dead_file.exists() and not dead_dir.exists()
        assert live_one.exists() and other_target.exists()
    finally:
        live.kill()
        live.wait()


def _full_disk(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_tiled_kernel_on_a_full_disk_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = _tiny()
    target = tmp_path / "kernel.npy"
    monkeypatch.setattr(os, "posix_fallocate", _full_disk)
    with pytest.raises(StorageError, match=f"cannot write {target}: No space left"):
        tiled_kernel(model, x, target, tile=4, format="npy")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "a.json"
    atomic_write_json(file, {"old": True})
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(StorageError, match=f"cannot write {file}: No space left") as info:
        atomic_write_json(file, {"old": False})
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert json.loads(file.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_batch_on_a_full_disk_stops_with_a_clear_error_and_a_consistent_store(
    one_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = tmp_path / "res"
    run_batch(one_run.parent, out, "spectrum")
    before = {p.name: p.read_bytes() for p in (out / "jobs" / "run").iterdir()}
    capsys.readouterr()
    monkeypatch.setattr(os, "fsync", _full_disk)
    argv = ["batch", str(one_run.parent), "--out", str(out), "--workers", "0", "--force"]
    assert main([*argv, "--no-progress", "--analysis", "spectrum", "--json"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    error = json.loads(captured.out)
    assert error["type"] == "StorageError" and "No space left on device" in error["error"]
    assert str(out / "jobs" / "run") in error["error"]
    monkeypatch.undo()
    assert _no_tmp_files(out)
    assert {p.name: p.read_bytes() for p in (out / "jobs" / "run").iterdir()} == before
    again = run_batch(one_run.parent, out, "spectrum")
    assert len(again.skipped) == len(STEPS)


# --- damaged records ----------------------------------------------------------------------------


def test_damaged_records_are_reported_and_recomputed_not_a_crash(
    one_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    run_batch(one_run.parent, out)
    folder = out / "jobs" / "run"

    def edit(name: str, change: Any) -> None:
        record = json.loads((folder / name).read_text())
        change(record)
        (folder / name).write_text(json.dumps(record))

    edit("step-000000.spectrum.json", lambda r: r.update(arrays="garbage"))
    edit("step-000010.spectrum.json", lambda r: r.pop("arrays"))
    edit("step-000020.spectrum.json", lambda r: r.update(arrays={"file": "../x", "sha256": 1}))
    edit("step-000010.overlaps.json", lambda r: r.update(result=[1, 2]))
    edit("step-000020.overlaps.json", lambda r: r.update(step="twenty"))

    with pytest.warns(RuntimeWarning, match="damaged records left out"):
        summary = summarize(out)
    assert summary.runs["run"].steps["overlaps"] == [0]
    with pytest.warns(RuntimeWarning, match="damaged records left out"):
        assert main(["batch-summary", str(out), "--no-plot"]) == 0
    capsys.readouterr()

    with pytest.warns(RuntimeWarning, match="5 stored results are damaged"):
        report = run_batch(one_run.parent, out)
    assert sorted(report.succeeded) == sorted(report.damaged) and len(report.damaged) == 5
    assert len(report.skipped) == 2 * len(STEPS) - 5
    again = run_batch(one_run.parent, out)
    assert len(again.skipped) == 2 * len(STEPS) and not again.damaged
    assert summarize(out).runs["run"].steps["overlaps"] == list(STEPS)


# --- the CLI: JSON errors and exit statuses -----------------------------------------------------


def test_json_errors_print_one_json_object_and_keep_the_exit_status(
    one_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(argv: list[str]) -> tuple[int, dict[str, Any]]:
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's usage errors
            status = int(e.code or 0)
        out = capsys.readouterr().out
        assert len(out.splitlines()) == 1, out
        return status, json.loads(out)

    status, error = run(["batch", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--json"])
    assert status == 2 and error["type"] == "InvalidArgumentError"
    assert "runs_dir" in error["error"]
    status, error = run(["batch", str(one_run), "--json"])  # --out missing
    assert status == 2 and "--out" in error["error"] and error["type"] == "ArgumentError"
    status, error = run(
        ["spectrum", str(one_run), "--step", "7", "--out", str(tmp_path / "r"), "--json"]
    )
    assert status == 2 and "step" in error["error"]
    status, error = run(["batch-summary", str(tmp_path / "nowhere"), "--json"])
    assert status == 2 and "results" in error["error"]
    status, error = run(["train", "modadd", "--p", "-3", "--out", str(tmp_path / "t"), "--json"])
    assert status == 2 and error["type"] == "InvalidArgumentError"
    # without --json, stdout stays empty on an error
    assert main(["batch-summary", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().out == ""


def test_every_command_exits_128_plus_the_signal_number(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert interrupt_status(KeyboardInterrupt()) == 130
    assert interrupt_status(SignalInterrupt(signal.SIGTERM)) == 143
    assert interrupt_status(Terminated(5)) == 143
    assert isinstance(Terminated(5), SignalInterrupt) and not isinstance(
        SignalInterrupt(15), EntkError
    )
    import entk_fast.cli.batch as batch_cli

    def stopped_by(exc: BaseException) -> Any:
        def func(args: Any) -> int:
            raise exc

        return func

    for exc, status in ((KeyboardInterrupt(), 130), (SignalInterrupt(signal.SIGTERM), 143)):
        monkeypatch.setattr(batch_cli, "_run_summary", stopped_by(exc))
        assert main(["batch-summary", "x", "--json"]) == status
        assert json.loads(capsys.readouterr().out)["type"] in (
            "KeyboardInterrupt",
            "SignalInterrupt",
        )


def test_sigterm_during_any_command_exits_143(tmp_path: Path) -> None:
    """A real SIGTERM to ``entk-fast batch-summary`` (stopped while it runs): 143, not a
    raw signal death or 130."""
    script = (
        "import os, signal, sys, time\n"
        "import entk_fast.batch.summary as s\n"
        "from entk_fast.cli import main\n"
        "def slow(out):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "s.summarize = slow\n"
        "sys.exit(main(['batch-summary', sys.argv[1], '--no-plot']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 143, proc.stderr
    assert "terminated" in proc.stderr and "Traceback" not in proc.stderr


def test_a_busy_dashboard_port_gives_the_local_cluster_another_one() -> None:
    """Two local clusters on one machine (a test run beside a batch) must not collide on the
    dashboard's port 8787: the second takes a free port instead (and does not warn)."""
    import socket

    from entk_fast.batch import cluster

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        try:
            busy.bind((cluster.LOOPBACK, 8787))
        except OSError:
            pytest.skip("port 8787 is in use by something else already")
        busy.listen()
        assert cluster._local_cluster_kwargs(1, True, None)["dashboard_address"].endswith(":0")
    assert cluster._local_cluster_kwargs(1, False, None)["dashboard_address"] == "127.0.0.1:0"


def test_local_workers_keep_glibc_malloc_defaults() -> None:
    """distributed's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which turns off
    glibc's adaptive mmap threshold and made every task ~1.5x slower than the serial loop; the
    local cluster's workers start without it (a fresh process: a nanny also writes it into
    its own process's environment, which later clusters there would inherit)."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from entk_fast.batch import open_client\n"
        "if __name__ == '__main__':\n"
        "    with open_client(workers=1, dashboard=False) as client:\n"
        "        seen = client.run(lambda: os.environ.get('MALLOC_TRIM_THRESHOLD_'))\n"
        "    print(sorted(seen.values()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None]"
