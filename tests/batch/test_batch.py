"""Batch analysis on a real Dask LocalCluster (2 worker processes, 1 thread each, loopback):
results equal the analyses run directly; a killed worker, an interrupted batch and a corrupt
checkpoint lose nothing; resume recomputes only missing or changed jobs; the tiled on-disk
kernel equals empirical_ntk and its top-k equals numpy's; the CLI commands."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from entk_fast import __version__
from entk_fast._io import sigterm_as_interrupt
from entk_fast.analysis import block_overlaps
from entk_fast.batch import (
    JobId,
    ResultStore,
    open_client,
    run_batch,
    run_checkpoint,
    stored_topk,
    summarize,
    tiled_kernel,
)
from entk_fast.cli.batch import add_batch_parser, add_summary_parser
from entk_fast.cli.spectrum import add_spectrum_parser
from entk_fast.errors import InvalidArgumentError
from entk_fast.ntk import empirical_ntk
from entk_fast.ntk.spectrum import entk_spectrum
from entk_fast.paper.runs import load_run
from entk_fast.paper.tasks.modadd import ModAddConfig
from entk_fast.paper.tasks.tms import TMSConfig
from entk_fast.paper.training import train_modadd, train_tms
from entk_fast.results import NTKSpectrum

P = 7
N_STEPS = 5  # checkpoints 0, 10, 20, 30, 40
RUNS = ("seed0", "seed1")
N_JOBS = len(RUNS) * N_STEPS * 2  # spectrum + overlaps
BLOCKS = [(2, 2 * P - 1), (2 * P, 4 * P - 3)]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed, name in enumerate(RUNS):
        config = ModAddConfig(p=P, hidden=32, epochs=40, checkpoint_every=10, seed=seed)
        train_modadd(config, root / name, plot=False)
    return root


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    with open_client(workers=2, dashboard=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def reference(runs_dir: Path) -> dict[tuple[str, int], Any]:
    """The analyses computed directly (no batch code): top-49 spectrum and block overlaps."""
    out = {}
    for name in RUNS:
        run = load_run(runs_dir / name)
        x = run.dataset().inputs
        for step in run.checkpoint_steps:
            spec = entk_spectrum(
                run.load_checkpoint(step),
                x,
                k=P * P,
                reduction="trace",
                dtype="float64",
                progress=False,
            )
            out[(name, step)] = (spec, block_overlaps(spec.eigenvectors, P, BLOCKS))
    assert len(out) == len(RUNS) * N_STEPS
    return out


def _records(out: Path) -> dict[str, dict[str, Any]]:
    return {r["job"]: r for r in ResultStore(out).iter_records()}


def _check_against_reference(out: Path, runs_dir: Path, reference: dict[Any, Any]) -> None:
    records = _records(out)
    assert len(records) == N_JOBS
    for (name, step), (spec, overlaps) in reference.items():
        rec = records[f"{name}/step-{step:06d}/spectrum"]
        stored = NTKSpectrum.load(out / "jobs" / name / rec["arrays"]["file"])
        scale = spec.eigenvalues[0]
        np.testing.assert_allclose(stored.eigenvalues, spec.eigenvalues, rtol=0, atol=1e-10 * scale)
        # eigenvectors up to the rotation inside degenerate pairs: the projector on the
        # first 4p − 3 (a cliff) agrees
        va, vb = stored.eigenvectors[:, : 4 * P - 3], spec.eigenvectors[:, : 4 * P - 3]
        np.testing.assert_allclose(va @ va.T, vb @ vb.T, atol=1e-9)
        np.testing.assert_allclose(rec["result"]["leading_eigenvalues"], spec.eigenvalues[:8])
        over = records[f"{name}/step-{step:06d}/overlaps"]["result"]["blocks"]
        for block, families in overlaps.items():
            for family, value in families.items():
                assert abs(over[block][family] - value) <= 1e-10, (name, step, block, family)
        # provenance: the checkpoint's sha256, the config, the version, the parameters
        file = runs_dir / name / "checkpoints" / f"step-{step:06d}.pt"
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        run = load_run(runs_dir / name)
        for analysis in ("spectrum", "overlaps"):
            r = records[f"{name}/step-{step:06d}/{analysis}"]
            assert r["inputs"]["checkpoint_sha256"] == sha
            assert r["inputs"]["config"] == dataclasses.asdict(run.config)
            assert r["provenance"]["entk_fast"] == __version__
            assert r["provenance"]["threads"] == {"rust": 1, "torch": 1}
        assert rec["inputs"]["params"]["k"] == 200 and rec["result"]["k"] == P * P
        i = int(np.flatnonzero(run.history["step"] == step)[0])
        assert rec["metrics"]["test_acc"] == run.history["test_acc"][i]


def test_batch_on_local_cluster_equals_the_analyses_run_directly(
    client: Any, runs_dir: Path, reference: dict[Any, Any], tmp_path: Path
) -> None:
    report = run_batch(runs_dir, tmp_path / "res", client=client)
    assert (len(report.succeeded), len(report.skipped), len(report.failed)) == (N_JOBS, 0, 0)
    assert "2 workers" in report.workers
    _check_against_reference(tmp_path / "res", runs_dir, reference)
    # the serial path (no Dask) writes the same numbers
    serial = run_batch(runs_dir, tmp_path / "serial", client=None)
    assert len(serial.succeeded) == N_JOBS
    a, b = _records(tmp_path / "res"), _records(tmp_path / "serial")
    assert a.keys() == b.keys()
    for job in a:
        assert a[job]["inputs"] == b[job]["inputs"]
        ra, rb = a[job]["result"], b[job]["result"]
        if job.endswith("overlaps"):
            for block in ra["blocks"]:
                for fam in ra["blocks"][block]:
                    assert abs(ra["blocks"][block][fam] - rb["blocks"][block][fam]) <= 1e-10
    saved = json.loads((tmp_path / "res" / "batch.json").read_text())
    assert saved["counts"] == {"succeeded": N_JOBS, "skipped": 0, "failed": 0, "recomputed": 0}
    assert not (tmp_path / "res" / "failures.json").exists()  # never a failure to record


def test_a_worker_killed_mid_task_loses_no_job(
    client: Any, runs_dir: Path, reference: dict[Any, Any], tmp_path: Path
) -> None:
    """A worker process dies (os._exit) the first time it starts one checkpoint's task; the
    nanny restarts it, the scheduler reruns the task, and every job completes."""
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = str(tmp_path / "killed")

    class KillOnce(WorkerPlugin):  # defined here: cloudpickle ships it by value
        name = "kill-once"

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if finish == "executing" and "seed1/step-000020" in str(key):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)

    pids_before = set(client.run(os.getpid).values())
    client.register_plugin(KillOnce(), name="kill-once")
    try:
        report = run_batch(runs_dir, tmp_path / "res", client=client, retries=0)
    finally:
        client.unregister_worker_plugin("kill-once")
    killed = int(Path(marker).read_text())
    assert killed in pids_before  # one of the two workers really died mid-task
    assert (len(report.succeeded), len(report.failed)) == (N_JOBS, 0)
    _check_against_reference(tmp_path / "res", runs_dir, reference)
    client.wait_for_workers(2, timeout=60)
    pids_after = set(client.run(os.getpid).values())
    assert killed not in pids_after and len(pids_after) == 2


def test_a_second_invocation_after_an_interrupted_one_computes_only_the_missing_jobs(
    client: Any, runs_dir: Path, reference: dict[Any, Any], tmp_path: Path
) -> None:
    out = tmp_path / "res"
    finished: list[str] = []

    def stop_after_three_tasks(jobs: list[Any], ok: bool) -> None:
        finished.extend(j.name for j in jobs)
        if len(finished) >= 6:  # three checkpoints, two jobs each
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(runs_dir, out, client=client, on_result=stop_after_three_tasks)
    on_disk = set(_records(out))
    assert on_disk == set(finished) and len(on_disk) == 6
    assert json.loads((out / "batch.json").read_text())["interrupted"] is True

    report = run_batch(runs_dir, out, client=client)
    assert sorted(report.skipped) == sorted(on_disk)
    assert len(report.succeeded) == N_JOBS - 6 and not set(report.succeeded) & on_disk
    assert not report.failed and not report.recomputed
    _check_against_reference(out, runs_dir, reference)

    # nothing left: a third invocation computes nothing
    again = run_batch(runs_dir, out, client=client)
    assert (len(again.succeeded), len(again.skipped)) == (0, N_JOBS)


def test_changed_inputs_are_recomputed_and_only_they(runs_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    out = tmp_path / "res"
    assert len(run_batch(runs, out).succeeded) == N_JOBS
    # a checkpoint whose weights changed (a valid file with other bytes)
    file = runs / "seed0" / "checkpoints" / "step-000030.pt"
    payload = torch.load(file, weights_only=True)
    payload["model"]["W1.weight"] += 0.01
    torch.save(payload, file)
    report = run_batch(runs, out)
    changed = ["seed0/step-000030/overlaps", "seed0/step-000030/spectrum"]
    assert sorted(report.succeeded) == changed and sorted(report.recomputed) == changed
    assert len(report.skipped) == N_JOBS - 2
    new_sha = hashlib.sha256(file.read_bytes()).hexdigest()
    assert _records(out)[changed[1]]["inputs"]["checkpoint_sha256"] == new_sha
    # another k changes the spectrum jobs' parameters only
    report = run_batch(runs, out, k=20)
    assert sorted(report.succeeded) == sorted(j for j in _records(out) if j.endswith("spectrum"))
    assert len(report.skipped) == N_JOBS // 2
    assert NTKSpectrum.load(out / "jobs/seed1/step-000040.spectrum.npz").eigenvalues.size == 20
    # a damaged arrays file is detected by its hash, reported and recomputed
    npz = out / "jobs/seed1/step-000010.spectrum.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.warns(RuntimeWarning, match="1 stored results are damaged"):
        report = run_batch(runs, out, k=20)
    assert report.succeeded == ["seed1/step-000010/spectrum"]
    assert report.damaged == ["seed1/step-000010/spectrum"] and not report.recomputed


def test_a_corrupt_checkpoint_is_one_recorded_failure_and_everything_else_completes(
    client: Any, runs_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    file = runs / "seed1" / "checkpoints" / "step-000020.pt"
    good = file.read_bytes()
    file.write_bytes(good[: len(good) // 2])
    out = tmp_path / "res"
    report = run_batch(runs, out, "spectrum", client=client, retries=1)
    assert report.failed == ["seed1/step-000020/spectrum"]
    assert len(report.succeeded) == len(RUNS) * N_STEPS - 1
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert list(failures) == ["seed1/step-000020/spectrum"]
    entry = failures["seed1/step-000020/spectrum"]
    assert entry["error"].startswith("CheckpointError") and "corrupt or truncated" in entry["error"]
    assert "Traceback" in entry["traceback"] and "load_checkpoint" in entry["traceback"]
    assert entry["run"] == "seed1" and entry["step"] == 20
    assert len(_records(out)) == len(RUNS) * N_STEPS - 1
    assert "1 failed" in report.summary() and "seed1/step-000020/spectrum" in report.summary()
    # repaired: the re-run computes that job only and clears its failure
    file.write_bytes(good)
    again = run_batch(runs, out, "spectrum", client=client)
    assert again.succeeded == ["seed1/step-000020/spectrum"] and not again.failed
    assert json.loads((out / "failures.json").read_text())["failures"] == {}


def test_a_tms_run_gets_the_flattened_spectrum_and_no_overlaps(tmp_path: Path) -> None:
    config = TMSConfig(n_features=5, n_hidden=2, n_points=12, steps=20, checkpoint_every=10)
    train_tms(config, tmp_path / "runs" / "tms", plot=False)
    report = run_batch(tmp_path / "runs", tmp_path / "res")
    assert sorted(report.succeeded) == [f"tms/step-{s:06d}/spectrum" for s in (0, 10, 20)]
    assert report.not_applicable == ["tms: overlaps (not defined for tms runs)"]
    run = load_run(tmp_path / "runs" / "tms")
    ref = entk_spectrum(
        run.load_checkpoint(20),
        run.dataset(),
        k=60,
        reduction="flattened",
        dtype="float64",
        progress=False,
    )
    stored = NTKSpectrum.load(tmp_path / "res" / "jobs" / "tms" / "step-000020.spectrum.npz")
    assert stored.reduction == "flattened" and stored.method == ref.method
    np.testing.assert_allclose(stored.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=1e-12)


def test_an_unreadable_run_is_recorded_and_the_others_run(runs_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir, runs)
    (runs / "seed0" / "config.json").write_text("{not json", encoding="utf-8")
    report = run_batch(runs, tmp_path / "res", "overlaps")
    assert report.failed == ["seed0/*"]
    assert len(report.succeeded) == N_STEPS
    failures = json.loads((tmp_path / "res" / "failures.json").read_text())["failures"]
    assert "RunDirectoryError" in failures["seed0/*"]["error"]


# --- tiled kernel -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reduction", "fmt", "tile"), [("flattened", "zarr", 16), ("trace", "npy", 10)]
)
def test_tiled_kernel_on_the_cluster_equals_empirical_ntk_and_its_topk_equals_eigh(
    client: Any, runs_dir: Path, tmp_path: Path, reduction: str, fmt: str, tile: int
) -> None:
    if fmt == "zarr":
        pytest.importorskip("zarr")
    run = load_run(runs_dir / "seed0")
    model, x = run.load_checkpoint(40), run.dataset().inputs
    path = tmp_path / ("k.zarr" if fmt == "zarr" else "k.npy")
    stored = tiled_kernel(model, x, path, tile=tile, client=client, reduction=reduction, format=fmt)
    n_tiles = -(-P * P // tile)
    assert stored.info["tiles"] == n_tiles * (n_tiles + 1) // 2
    assert stored.format == fmt and path.exists()
    assert not list(tmp_path.glob(".*partial"))
    dense = empirical_ntk(model, x, reduction=reduction, dtype="float64", progress=False).kernel
    kernel = stored.load()
    assert kernel.shape == dense.shape == (stored.order, stored.order)
    assert np.abs(kernel - dense).max() <= 1e-12 * np.abs(dense).max()
    np.testing.assert_array_equal(kernel, kernel.T)  # mirrored tiles: exactly symmetric

    k = 6
    spec = stored_topk(path, k, rows=tile, client=client if reduction == "trace" else None)
    values, vectors, info = spec.eigenvalues, spec.eigenvectors, spec.info
    assert spec.method == "stored" and spec.reduction == reduction
    assert (spec.n_samples, spec.n_outputs) == (stored.n_samples, stored.n_outputs)
    row_blocks = -(-stored.order // tile)
    if reduction == "trace":  # each product: one Dask task per row block
        assert info["tasks"] > 0 and info["tasks"] % row_blocks == 0
    else:
        assert info["tasks"] == 0
    all_values, all_vectors = np.linalg.eigh(dense)
    ref_values, ref_vectors = all_values[::-1][:k], all_vectors[:, ::-1][:, :k]
    np.testing.assert_allclose(values, ref_values, rtol=1e-10)
    residual = dense @ vectors - vectors * values
    assert np.abs(residual).max() <= 1e-8 * ref_values[0]
    assert all_values[::-1][k - 1] > 1.001 * all_values[::-1][k]  # the top-k span is unique
    np.testing.assert_allclose(vectors @ vectors.T, ref_vectors @ ref_vectors.T, atol=1e-8)
    assert info["n_matvec"] >= 1 and info["bytes_read"] >= kernel.nbytes


def test_tiled_kernel_serial_refuses_bad_arguments_and_keeps_no_partial_file(
    runs_dir: Path, tmp_path: Path
) -> None:
    run = load_run(runs_dir / "seed1")
    model, x = run.load_checkpoint(10), run.dataset().inputs
    path = tmp_path / "k.npy"
    stored = tiled_kernel(model, x, path, tile=20, format="npy")  # no client: in process
    dense = empirical_ntk(model, x, reduction="trace", dtype="float64", progress=False).kernel
    assert np.abs(stored.load() - dense).max() <= 1e-12 * np.abs(dense).max()
    with pytest.raises(InvalidArgumentError, match="out_path.*exists"):
        tiled_kernel(model, x, path, tile=20)
    with pytest.raises(InvalidArgumentError, match="tile"):
        tiled_kernel(model, x, tmp_path / "other.npy", tile=0)
    with pytest.raises(InvalidArgumentError, match="format"):
        tiled_kernel(model, x, tmp_path / "other.npy", format="hdf5")
    with pytest.raises(InvalidArgumentError, match="k must be"):
        stored_topk(path, P * P + 1)

    # a task that fails (here: every tile, an unknown parameter) leaves nothing behind
    with pytest.raises(InvalidArgumentError, match="nope"):
        tiled_kernel(model, x, tmp_path / "boom.npy", tile=20, params=["nope"])
    assert not (tmp_path / "boom.npy").exists()
    assert not list(tmp_path.glob(".*partial"))


# --- CLI ------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="entk-fast")
    sub = parser.add_subparsers()
    add_batch_parser(sub)
    add_summary_parser(sub)
    add_spectrum_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_batch_summary_and_spectrum(
    client: Any, runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    address = client.scheduler.address
    assert (
        _cli(["batch", str(runs_dir), "--out", str(out), "--scheduler", address, "--no-progress"])
        == 0
    )
    captured = capsys.readouterr()
    assert f"{N_JOBS} succeeded" in captured.out and "dask scheduler" in captured.err
    records = _records(out)

    assert _cli(["batch-summary", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seed0" in text and "seed1" in text and f"last batch: {N_JOBS} succeeded" in text
    rows = (out / "curves.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:5] == ["run", "step", "block", "family", "overlap"]
    assert len(rows) - 1 == len(RUNS) * N_STEPS * 2 * 4
    for line in rows[1:]:
        run, step, block, family, overlap, *_ = line.split(",")
        rec = records[f"{run}/step-{int(step):06d}/overlaps"]
        assert float(overlap) == rec["result"]["blocks"][block][family]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = summarize(out)
    final = records["seed0/step-000040/overlaps"]["result"]["blocks"]["2-13"]["a"]
    assert summary.runs["seed0"].final("2-13", "a") == final
    assert _cli(["batch-summary", str(out), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # one object, nothing else on stdout
    assert document["n_results"] == N_JOBS and document["failures"] == {}
    assert document["runs"]["seed0"]["final_overlaps"]["2-13"]["a"] == final
    assert document["last_batch"]["counts"]["succeeded"] == N_JOBS
    assert document["curves"]["csv"] == str(out / "curves.csv")

    # one checkpoint through `spectrum` (a job-array task): the same record into a folder ...
    run0 = runs_dir / "seed0"
    assert (
        _cli(
            [
                "spectrum",
                str(run0),
                "--step",
                "20",
                "--out",
                str(tmp_path / "arr"),
                "--analysis",
                "spectrum,overlaps",
                "--json",
            ]
        )
        == 0
    )
    document = json.loads(capsys.readouterr().out)
    assert document["computed"] is True and document["step"] == 20
    printed = document["records"]
    assert [r["job"] for r in printed] == [
        "seed0/step-000020/spectrum",
        "seed0/step-000020/overlaps",
    ]
    for rec in printed:
        batch_rec = records[rec["job"]]
        assert rec["inputs"] == batch_rec["inputs"]
        if rec["analysis"] == "overlaps":
            for block, fams in rec["result"]["blocks"].items():
                for fam, value in fams.items():
                    assert abs(value - batch_rec["result"]["blocks"][block][fam]) <= 1e-10
    # ... that `batch` then reuses (the job-array results and a batch share one store)
    assert (tmp_path / "arr" / "jobs" / "seed0" / "step-000020.spectrum.npz").is_file()
    again = run_batch(runs_dir, tmp_path / "arr", client=client)
    assert sorted(again.skipped) == sorted(r["job"] for r in printed)
    # ... or into one .json file (+ .npz), reused when unchanged
    file = tmp_path / "one.json"
    assert _cli(["spectrum", str(run0), "--step", "40", "--out", str(file)]) == 0
    assert "computed" in capsys.readouterr().out
    saved = json.loads(file.read_text())
    assert saved["inputs"] == records["seed0/step-000040/spectrum"]["inputs"]
    spec = NTKSpectrum.load(tmp_path / "one.npz")
    np.testing.assert_allclose(spec.eigenvalues[:8], saved["result"]["leading_eigenvalues"])
    assert _cli(["spectrum", str(run0), "--step", "40", "--out", str(file)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_runs_without_dask_and_reports_failures_with_exit_status_1(
    runs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(runs_dir / "seed0", runs / "seed0")
    (runs / "seed0" / "checkpoints" / "step-000000.pt").write_bytes(b"garbage")
    out = tmp_path / "res"
    status = _cli(
        [
            "batch",
            str(runs),
            "--out",
            str(out),
            "--workers",
            "0",
            "--analysis",
            "overlaps",
            "--retries",
            "0",
            "--no-progress",
        ]
    )
    assert status == 1
    printed = capsys.readouterr().out
    assert f"{N_STEPS - 1} succeeded" in printed and "1 failed" in printed
    assert "seed0/step-000000/overlaps" in printed
    assert _cli(["batch-summary", str(out), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "1 failed jobs" in text and "CheckpointError" in text
    # --json: the same report as one JSON object on stdout; the narration goes to stderr
    argv = ["batch", str(runs), "--out", str(out), "--workers", "0", "--analysis", "overlaps"]
    assert _cli([*argv, "--retries", "0", "--no-progress", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["counts"] == {
        "succeeded": 0,
        "skipped": N_STEPS - 1,
        "failed": 1,
        "recomputed": 0,
    }
    assert report["failed"] == ["seed0/step-000000/overlaps"]
    assert "running in this process" in captured.err
    assert _cli(["batch-summary", str(out), "--no-plot", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["curves"] is None
    assert document["failures"]["seed0/step-000000/overlaps"].startswith("CheckpointError")


def test_bad_arguments_give_clear_errors(runs_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="analysis: unknown 'eigen'"):
        run_batch(runs_dir, tmp_path / "r", "spectrum,eigen")
    with pytest.raises(InvalidArgumentError, match="runs_dir: no run directories"):
        run_batch(tmp_path, tmp_path / "r")
    with pytest.raises(InvalidArgumentError, match="runs_dir: .* is not a directory"):
        run_batch(tmp_path / "missing", tmp_path / "r")
    with pytest.raises(InvalidArgumentError, match="k must be an integer >= 1"):
        run_batch(runs_dir, tmp_path / "r", k=0)
    with pytest.raises(InvalidArgumentError, match="step: run seed0 has no checkpoint"):
        run_checkpoint(runs_dir / "seed0", 15, tmp_path / "r")
    with pytest.raises(InvalidArgumentError, match="out: a .json file holds one analysis"):
        run_checkpoint(runs_dir / "seed0", 10, tmp_path / "x.json", "spectrum,overlaps")
    with pytest.raises(InvalidArgumentError, match="workers: a scheduler"):
        with open_client(workers=2, scheduler="tcp://127.0.0.1:1"):
            pass
    config = tmp_path / "slurm.yaml"
    config.write_text("cores: 1\nmemory: 4GB\nwalltime: '00:30:00'\n", encoding="utf-8")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidArgumentError, match="needs dask-jobqueue"):
            with open_client(cluster="slurm", cluster_config=config):
                pass
    config.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="cluster_config: .* must hold a mapping"):
        with open_client(cluster="slurm", cluster_config=config):
            pass
    with pytest.raises(InvalidArgumentError, match="cluster: expected one of slurm, pbs"):
        with open_client(cluster="lsf"):
            pass


_CLI_SCRIPT = """
import sys
from entk_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_batch_keeps_every_finished_result(tmp_path: Path) -> None:
    """SLURM's time limit sends SIGTERM: the batch stops with exit status 143 (128 + 15, as
    ``train`` does), its report says interrupted, the results written so far are complete,
    and the next invocation computes only the rest."""
    import subprocess
    import sys

    config = ModAddConfig(p=11, hidden=64, epochs=300, checkpoint_every=3)
    train_modadd(config, tmp_path / "runs" / "long", plot=False)
    out = tmp_path / "res"
    argv = [sys.executable, "-c", _CLI_SCRIPT, "batch", str(tmp_path / "runs"), "--out", str(out)]
    proc = subprocess.Popen([*argv, "--workers", "0", "--analysis", "spectrum", "--no-progress"])
    deadline = time.monotonic() + 60
    while len(list(out.glob("jobs/long/*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    report = json.loads((out / "batch.json").read_text())
    assert report["interrupted"] is True
    done = set(_records(out))
    assert 3 <= len(done) < 101 and len(done) == report["counts"]["succeeded"]
    for job in done:  # complete: record and arrays agree
        assert ResultStore(out).valid_record(
            JobId("long", int(job.split("/")[1][5:]), "spectrum"), _records(out)[job]["inputs"]
        )
    again = run_batch(tmp_path / "runs", out, "spectrum")
    assert sorted(again.skipped) == sorted(done) and len(again.succeeded) == 101 - len(done)


def test_sigterm_stops_a_batch_like_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted by the handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_tiled_kernel_of_a_hugging_face_model_with_dict_inputs_and_positions(
    client: Any, tmp_path: Path
) -> None:
    """Everything empirical_ntk takes reaches the tiles: a dict of keyword inputs (its padded
    mask split with the samples), output_fn (a lambda, shipped to the workers), positions (the
    cross tiles as blocks of the pair's square kernel), params; and the stored kernel equals
    empirical_ntk's on the whole batch."""
    pytest.importorskip("transformers")
    from tiny_models import tiny_bert

    torch.manual_seed(0)
    model = tiny_bert(layers=1).double().eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (7, 5), generator=gen)
    mask = torch.ones(7, 5, dtype=torch.long)
    mask[2, 3:] = 0
    mask[5, 2:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "output_hidden_states": False}
    positions = mask.sum(dim=1) - 1
    options: dict[str, Any] = {
        "reduction": "flattened",
        "params": "encoder.layer.0.output.dense.weight",
        "output_fn": lambda o: o.last_hidden_state,
        "positions": positions,
    }
    dense = empirical_ntk(model, inputs, dtype="float64", progress=False, **options).kernel
    for where, run_on in ((tmp_path / "k.npy", client), (tmp_path / "serial.npy", None)):
        stored = tiled_kernel(model, inputs, where, tile=3, client=run_on, format="npy", **options)
        assert stored.n_outputs == 8 and stored.order == 7 * 8
        kernel = stored.load()
        assert np.abs(kernel - dense).max() <= 1e-10 * np.abs(dense).max()
    with pytest.raises(InvalidArgumentError, match="layerwise.*params="):
        tiled_kernel(model, inputs, tmp_path / "lw.npy", layerwise=True, **options)
    with pytest.raises(InvalidArgumentError, match=r"positions: expected .* shape \(7,\)"):
        tiled_kernel(model, inputs, tmp_path / "p.npy", **{**options, "positions": positions[:3]})
