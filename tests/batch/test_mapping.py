"""run_jobs / submit_jobs / read_jobs: a user's own function over checkpoints (the eNTK of a
tiny MLP, checked against a torch.func Jacobian) or any items (numpy closed forms), serially
and on a real 2-worker Dask LocalCluster: results equal the function called directly,
resume skips valid records and reruns changed, damaged and interrupted ones, failures are
recorded beside the finished jobs, futures come back at once with the records written by
the tasks themselves (once, even when a worker dies after writing), and bad arguments name
themselves."""

from __future__ import annotations

import doctest
import hashlib
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

import entk_fast as ef
from entk_fast._io import owner_tag
from entk_fast.batch import (
    JobResult,
    ResultStore,
    SubmittedJobs,
    open_client,
    read_jobs,
    run_jobs,
    submit_jobs,
)
from entk_fast.batch import mapping as mapping_mod
from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.results import EmpiricalNTK

# What the workers run goes there by value: a module-level function would be pickled by
# reference, and the workers cannot import this module under the name pytest gave it. The
# user's functions are made inside `_user_functions` (local functions travel by value); what
# they use from this module travels by value through this registration.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

RUNS = ("a", "b", "c")
NAMES = [f"{run}/model.pt" for run in RUNS]


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def inputs() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)


def load(path: str | os.PathLike[str]) -> TinyMLP:
    model = TinyMLP().double()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def reference_ntk(path: Path) -> np.ndarray:
    """J Jᵀ from torch.func's per-sample Jacobian (row n·C + c), shared with nothing."""
    model = load(path)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = inputs()
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    n, c = x.shape[0], 2
    j = torch.cat([jac[k].reshape(n * c, -1) for k in params], dim=1)
    return (j @ j.T).numpy()


def save_model(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(TinyMLP().double().state_dict(), path)


def _user_functions() -> tuple[Callable[..., Any], ...]:
    def ntk_of(path: str | os.PathLike[str]) -> tuple[dict[str, Any], EmpiricalNTK]:
        """The user's analysis: the flattened eNTK of one checkpoint, its trace a number."""
        ntk = ef.empirical_ntk(load(path), inputs())
        return {"trace": float(np.trace(ntk.kernel)), "order": ntk.kernel.shape[0]}, ntk

    def moments(x: list[float]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A numpy closed form: mean and variance, and the outer product as an array."""
        v = np.asarray(x, dtype=np.float64)
        return {"mean": v.mean(), "var": float(v.var())}, {"outer": np.outer(v, v)}

    def fails_below_zero(x: float) -> dict[str, float]:
        if x < 0:
            raise ValueError(f"negative input {x}")
        return {"sqrt": float(np.sqrt(x))}

    return ntk_of, moments, fails_below_zero


ntk_of, moments, fails_below_zero = _user_functions()


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "ckpts" / run / "model.pt" for run in RUNS]
    for seed, path in enumerate(paths):
        save_model(path, seed)
    return paths


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    with open_client(workers=2, dashboard=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _check_ntk_jobs(out: Path, checkpoints: list[Path]) -> dict[str, JobResult]:
    jobs = read_jobs(out)
    assert sorted(jobs) == NAMES
    for name, path in zip(NAMES, checkpoints, strict=True):
        expected = reference_ntk(path)
        job = jobs[name]
        stored = EmpiricalNTK.load(job.arrays_path)  # the object fn returned, as saved
        np.testing.assert_allclose(stored.kernel, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(job.arrays()["kernel"], expected, rtol=1e-12, atol=1e-12)
        assert job.result == {"trace": pytest.approx(np.trace(expected), rel=1e-12), "order": 8}
        record = job.record
        assert record["job"] == name
        assert record["inputs"] == {
            "item": {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
            "params": None,
        }
        assert record["provenance"]["file"] == str(path.resolve())
        assert record["provenance"]["fn"].endswith(".ntk_of")
        assert record["provenance"]["threads"] == {"rust": 1, "torch": 1}
        assert record["provenance"]["entk_fast"] == ef.__version__
    return jobs


# --- serially ---------------------------------------------------------------------------------


def test_serial_jobs_equal_the_function_called_directly_and_rerun_only_changed_inputs(
    checkpoints: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "res"
    report = run_jobs(ntk_of, checkpoints, out)  # default names: paths below the common folder
    assert (report.succeeded, report.skipped, report.failed) == (NAMES, [], [])
    assert report.workers == "serial"
    _check_ntk_jobs(out, checkpoints)
    saved = json.loads((out / "batch.json").read_text())
    assert saved["counts"] == {"succeeded": 3, "skipped": 0, "failed": 0, "recomputed": 0}
    assert not (out / "failures.json").exists()
    written = {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.*")}

    again = run_jobs(ntk_of, checkpoints, out)  # everything done: nothing recomputed
    assert (again.succeeded, again.skipped) == ([], NAMES)
    assert {p: p.stat().st_mtime_ns for p in (out / "jobs").rglob("*.*")} == written

    save_model(checkpoints[1], seed=7)  # retrained: b's bytes change, so does its kernel
    changed = run_jobs(ntk_of, checkpoints, out)
    assert changed.succeeded == changed.recomputed == ["b/model.pt"]
    assert changed.skipped == ["a/model.pt", "c/model.pt"]
    _check_ntk_jobs(out, checkpoints)

    params = run_jobs(ntk_of, checkpoints, out, params={"version": 2})  # fn changed: all rerun
    assert params.succeeded == params.recomputed == NAMES
    forced = run_jobs(ntk_of, checkpoints, out, params={"version": 2}, overwrite=True)
    assert forced.succeeded == NAMES


def test_items_of_any_kind_named_by_a_mapping_or_a_function(tmp_path: Path) -> None:
    data = {"short": [1.0, 2.0], "long": [1.0, 2.0, 3.0, 6.0]}
    report = run_jobs(moments, data, tmp_path / "m")
    assert report.succeeded == ["short", "long"]
    jobs = read_jobs(tmp_path / "m")
    for name, x in data.items():
        result, arrays = moments(x)  # the function called directly
        assert jobs[name].result == pytest.approx(result)
        np.testing.assert_array_equal(jobs[name].arrays()["outer"], arrays["outer"])
        assert jobs[name].record["inputs"] == {"item": x, "params": None}  # a JSON item: itself

    # an item that changes is rerun; names from a function; a name may hold folders
    report = run_jobs(moments, [[1.0, 2.0], [5.0]], tmp_path / "m", name=lambda x: f"n{len(x)}/x")
    assert report.succeeded == ["n2/x", "n1/x"]
    assert (tmp_path / "m" / "jobs" / "n1" / "x.json").is_file()
    assert run_jobs(moments, {"short": [1.0, 2.0, 9.0]}, tmp_path / "m").recomputed == ["short"]

    # arrays of any name (np.savez's own keywords too) and tensors; no arrays at all
    def odd_arrays(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"n": np.int64(n)}, {"file": np.arange(n), "allow_pickle": torch.ones(n)}

    run_jobs(odd_arrays, {"three": 3}, tmp_path / "o")
    job = read_jobs(tmp_path / "o")["three"]
    assert job.result == {"n": 3}
    assert set(job.arrays()) == {"file", "allow_pickle"}
    np.testing.assert_array_equal(job.arrays()["allow_pickle"], np.ones(3, dtype=np.float32))
    run_jobs(fails_below_zero, {"four": 4.0}, tmp_path / "o")
    assert read_jobs(tmp_path / "o")["four"].arrays_path is None
    assert read_jobs(tmp_path / "o")["four"].arrays() == {}


def test_an_interrupted_run_and_damaged_records_are_completed_by_the_next_one(
    tmp_path: Path,
) -> None:
    out = tmp_path / "res"
    items = {f"x{i}": [float(i), float(i) + 1.0] for i in range(5)}
    calls: list[str] = []

    def crash_at_x3(x: list[float]) -> Any:
        if x[0] == 3.0:
            raise KeyboardInterrupt  # the process is stopped mid-batch
        calls.append(str(x[0]))
        return moments(x)

    with pytest.raises(KeyboardInterrupt):
        run_jobs(crash_at_x3, items, out)
    assert sorted(read_jobs(out)) == ["x0", "x1", "x2"]
    assert json.loads((out / "batch.json").read_text())["interrupted"] is True

    # then the results folder is damaged: a truncated record, an arrays file that changed,
    # and a temporary file left by a writer killed mid-write
    record = out / "jobs" / "x0.json"
    record.write_text(record.read_text()[:40])
    arrays = out / "jobs" / "x1.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid  # a writer that is gone
    leftover = out / "jobs" / f".x4.json.{dead}-{owner_tag().split('-')[1]}.0123456789ab.tmp"
    leftover.write_text("{")
    assert sorted(read_jobs(out)) == ["x2"]

    calls.clear()
    with pytest.warns(RuntimeWarning, match=r"out: 2 stored results are damaged.*x0, x1"):
        report = run_jobs(crash_at_x3, {k: v for k, v in items.items() if k != "x3"}, out)
    assert report.skipped == ["x2"] and report.damaged == ["x0", "x1"]
    assert report.succeeded == ["x0", "x1", "x4"] and calls == ["0.0", "1.0", "4.0"]
    assert not leftover.exists()
    report = run_jobs(moments, items, out)
    assert (report.succeeded, report.skipped) == (["x3"], ["x0", "x1", "x2", "x4"])
    jobs = read_jobs(out)
    for name, x in items.items():
        np.testing.assert_array_equal(jobs[name].arrays()["outer"], moments(x)[1]["outer"])


def test_a_failing_job_is_recorded_with_its_traceback_and_the_others_are_kept(
    tmp_path: Path,
) -> None:
    out = tmp_path / "res"
    attempts: list[float] = []

    def flaky(x: float) -> dict[str, float]:
        attempts.append(x)
        return fails_below_zero(x)

    items = {"one": 1.0, "minus": -1.0, "four": 4.0}
    report = run_jobs(flaky, items, out, retries=1)
    assert report.failed == ["minus"] and report.succeeded == ["one", "four"]
    assert attempts.count(-1.0) == 2 and attempts.count(4.0) == 1  # retried once, then recorded
    entry = ResultStore(out).read_failures()["minus"]
    assert entry["error"] == "ValueError: negative input -1.0"
    assert "fails_below_zero" in entry["traceback"] and entry["attempts"] == 2
    assert "failed: minus" in report.summary()
    assert {k: j.result for k, j in read_jobs(out).items()} == {
        "four": {"sqrt": 2.0},
        "one": {"sqrt": 1.0},
    }

    # a function that returns no dict fails its job with an error naming fn
    bad = run_jobs(len, {"s": "abc"}, tmp_path / "len", retries=0)
    assert bad.failed == ["s"]
    error = ResultStore(tmp_path / "len").read_failures()["s"]["error"]
    assert error.startswith("InvalidTypeError: fn: returned int for job 's'")

    # fixed: the failed job succeeds, its failure is dropped, the others are skipped
    report = run_jobs(fails_below_zero, {**items, "minus": 9.0}, out)
    assert report.succeeded == ["minus"] and report.skipped == ["one", "four"]
    assert ResultStore(out).read_failures() == {}


def test_a_task_run_twice_by_its_scheduler_writes_its_record_once(tmp_path: Path) -> None:
    """The second run of one submitted task (its worker died after writing) returns the
    record written by the first without calling fn again; another submission recomputes."""
    calls: list[float] = []

    def counted(x: float) -> dict[str, float]:
        calls.append(x)
        return {"x": x}

    store = ResultStore(tmp_path / "res")
    spec = mapping_mod._JobSpec.make(counted, {"job": 2.0}, None, None, None, 0, 1, False)
    task = mapping_mod._Session(spec, store).tasks[0]
    first = mapping_mod._run_task(task)
    stat = first.path.stat()
    second = mapping_mod._run_task(task)
    assert calls == [2.0] and second.record == first.record
    assert (first.path.stat().st_ino, first.path.stat().st_mtime_ns) == (
        stat.st_ino,
        stat.st_mtime_ns,
    )
    other = mapping_mod._Session(spec, store).tasks  # a valid record: nothing to do
    assert other == []
    forced = mapping_mod._JobSpec.make(counted, {"job": 2.0}, None, None, None, 0, 1, True)
    mapping_mod._run_task(mapping_mod._Session(forced, store).tasks[0])
    assert calls == [2.0, 2.0]


# --- on a 2-worker local cluster --------------------------------------------------------------


def test_jobs_on_a_local_cluster_equal_the_function_called_directly(
    client: Any, checkpoints: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "res"
    missing = checkpoints[0].parent.parent / "d" / "model.pt"  # never written: a failed job
    report = run_jobs(ntk_of, [*checkpoints, missing], out, client=client, retries=1)
    assert sorted(report.succeeded) == NAMES and report.failed == ["d/model.pt"]
    assert "2 workers" in report.workers
    jobs = _check_ntk_jobs(out, checkpoints)
    worker_pids = set(client.run(os.getpid).values())
    assert {job.record["provenance"]["pid"] for job in jobs.values()} <= worker_pids
    entry = ResultStore(out).read_failures()["d/model.pt"]
    assert "No such file" in entry["error"] and entry["attempts"] == 2
    assert "ntk_of" in entry["traceback"]

    again = run_jobs(ntk_of, checkpoints, out, client=client)
    assert (again.succeeded, again.skipped) == ([], NAMES)


def test_submit_jobs_returns_futures_and_the_tasks_write_the_records(
    client: Any, checkpoints: list[Path], tmp_path: Path
) -> None:
    from distributed import wait

    out = tmp_path / "res"
    items = {name: path for name, path in zip(NAMES, checkpoints, strict=True)}
    submitted = submit_jobs(ntk_of, {**items, "bad": tmp_path / "nope.pt"}, out, client=client)
    assert isinstance(submitted, SubmittedJobs)
    assert sorted(submitted.futures) == sorted([*NAMES, "bad"]) and submitted.skipped == []
    wait(list(submitted.futures.values()))
    # before anyone waits on the handle, each finished task has written its record
    on_disk = read_jobs(out)
    assert sorted(on_disk) == NAMES
    for name in NAMES:
        result = submitted.futures[name].result()
        assert isinstance(result, JobResult) and result.record == on_disk[name].record
    with pytest.raises(FileNotFoundError):
        submitted.futures["bad"].result()
    with pytest.raises(InvalidArgumentError, match=r"^out: .* is in use by another"):
        run_jobs(ntk_of, items, out)  # the folder is held until the handle is waited on
    assert not (out / "batch.json").exists()

    report = submitted.wait()
    assert sorted(report.succeeded) == NAMES and report.failed == ["bad"]
    assert submitted.wait() is report
    assert json.loads((out / "batch.json").read_text())["failed"] == ["bad"]
    assert "bad" in ResultStore(out).read_failures()
    _check_ntk_jobs(out, checkpoints)

    resumed = submit_jobs(ntk_of, items, out, client=client)
    assert resumed.futures == {} and resumed.skipped == NAMES
    assert resumed.wait().skipped == NAMES


def test_cancelled_jobs_are_not_failures_and_a_worker_death_after_writing_reruns_nothing(
    client: Any, tmp_path: Path
) -> None:
    from distributed import Event
    from distributed.diagnostics.plugin import WorkerPlugin

    # cancel: the jobs held back by an event are cancelled, not recorded as failures
    gate = Event("entk-test-gate", client=client)

    def held(x: float) -> dict[str, float]:
        if x > 0:
            Event("entk-test-gate").wait(30)
        return {"x": x}

    submitted = submit_jobs(held, {"free": 0.0, "held": 1.0}, tmp_path / "c", client=client)
    submitted.futures["free"].result()
    report = submitted.cancel()
    gate.set()
    assert report.interrupted and report.succeeded == ["free"] and report.failed == []
    assert not (tmp_path / "c" / "failures.json").exists()

    # a worker that dies right after its task wrote the record: the scheduler reruns the
    # task elsewhere, which finds its own record and returns it without calling fn again
    log = tmp_path / "calls.log"
    marker = str(tmp_path / "killed")

    def logged(x: float) -> dict[str, float]:
        with open(log, "a") as f:
            f.write(f"{x} {os.getpid()}\n")
        return {"x": x}

    class KillAfterTask(WorkerPlugin):  # defined here: cloudpickle ships it by value
        name = "kill-after-task"

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if finish == "memory" and "-victim-" in str(key):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.close(fd)
                os._exit(1)

    client.register_plugin(KillAfterTask(), name="kill-after-task")
    try:
        report = run_jobs(logged, {"victim": 1.0, "other": 2.0}, tmp_path / "k", client=client)
    finally:
        client.unregister_worker_plugin("kill-after-task")
    assert Path(marker).exists()  # the worker did die after the task
    assert sorted(report.succeeded) == ["other", "victim"] and report.failed == []
    assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["1.0", "2.0"]
    assert read_jobs(tmp_path / "k")["victim"].result == {"x": 1.0}
    client.wait_for_workers(2, timeout=60)


def test_workers_start_a_local_cluster_only_when_jobs_are_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = run_jobs(moments, {"v": [1.0, 3.0]}, tmp_path / "w", workers=1)
    assert report.succeeded == ["v"] and "1 workers" in report.workers
    pids = {read_jobs(tmp_path / "w")["v"].record["provenance"]["pid"]}
    assert pids != {os.getpid()}  # computed in the worker process

    def no_cluster(**kwargs: Any) -> Any:
        raise AssertionError("a cluster was started for nothing")

    monkeypatch.setattr(mapping_mod, "open_client", no_cluster)
    assert run_jobs(moments, {"v": [1.0, 3.0]}, tmp_path / "w", workers=4).skipped == ["v"]


# --- arguments ----------------------------------------------------------------------------------


def test_bad_arguments_give_clear_errors_naming_them_and_write_nothing(
    tmp_path: Path, checkpoints: list[Path]
) -> None:
    out = tmp_path / "never"
    cases: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (InvalidTypeError, r"^fn: expected a function", {"fn": "ntk_of"}),
        (InvalidArgumentError, r"^items: no items", {"items": []}),
        (InvalidArgumentError, r"^items: no items", {"items": {}}),
        (InvalidTypeError, r"^items: expected a list of items", {"items": "a.pt"}),
        (InvalidTypeError, r"^items: expected a list of items", {"items": 3}),
        (InvalidTypeError, r"^items: a mapping's keys are the job names", {"items": {1: 2}}),
        (
            InvalidArgumentError,
            r"^name: 2 items are named 'a/model.pt'",
            {"items": [checkpoints[0], checkpoints[0], checkpoints[1]]},
        ),
        (
            InvalidArgumentError,
            r"^name: 2 items are named 'same'",
            {"items": [1, 2], "name": lambda x: "same"},
        ),
        (
            InvalidArgumentError,
            r"^name: 2 items are named 'a/b'",
            {"items": {"a/b": 1, "a//b": 2}},
        ),
        (InvalidArgumentError, r"^name: job name '\.\./up'", {"items": {"../up": 1}}),
        (InvalidArgumentError, r"^name: job name '/abs'", {"items": {"/abs": 1}}),
        (InvalidArgumentError, r"^name: job name ''", {"items": {"": 1}}),
        (InvalidArgumentError, r"^name: items of type int have no name", {"items": [1, 2]}),
        (InvalidTypeError, r"^name: expected a str", {"items": [1], "name": lambda x: x}),
        (InvalidTypeError, r"^name: expected a function", {"items": [1], "name": "x"}),
        (InvalidArgumentError, r"^name: items is a mapping", {"items": {"a": 1}, "name": str}),
        (InvalidTypeError, r"^fingerprint: expected JSON", {"fingerprint": lambda p: object()}),
        (InvalidTypeError, r"^params: expected a dict", {"params": [1, 2]}),
        (InvalidTypeError, r"^params: expected JSON", {"params": {"lr": float("nan")}}),
        (InvalidArgumentError, r"^retries must be an integer >= 0", {"retries": -1}),
        (InvalidArgumentError, r"^threads must be an integer >= 1", {"threads": 0}),
        (InvalidTypeError, r"^overwrite\b", {"overwrite": "yes"}),
        (InvalidTypeError, r"^client: expected a dask.distributed.Client", {"client": "tcp://x"}),
        (InvalidArgumentError, r"^workers must be an integer >= 1", {"workers": 0}),
    ]
    for error, message, changes in cases:
        kwargs: dict[str, Any] = {"fn": ntk_of, "items": checkpoints, **changes}
        fn, items = kwargs.pop("fn"), kwargs.pop("items")
        with pytest.raises(error, match=message):
            run_jobs(fn, items, out, **kwargs)
    with pytest.raises(InvalidArgumentError, match=r"^workers: a client's workers"):
        run_jobs(ntk_of, checkpoints, out, client=object(), workers=2)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match=r"^client: expected"):
        submit_jobs(ntk_of, checkpoints, out, client=None)  # type: ignore[arg-type]
    assert not out.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgumentError, match=r"^out: .* not a directory"):
        run_jobs(ntk_of, checkpoints, tmp_path / "file")
    with pytest.raises(InvalidArgumentError, match=r"^out: .* not a results folder"):
        read_jobs(tmp_path / "missing")


def test_default_names_of_paths(tmp_path: Path) -> None:
    names = mapping_mod._default_names
    assert names(["runs/a/ckpt.pt", "runs/b/ckpt.pt"]) == ["a/ckpt.pt", "b/ckpt.pt"]
    assert names([Path("/data/ckpt/1.pt"), "/data/ckpt/2.pt"]) == ["1.pt", "2.pt"]
    assert names(["only/one.pt"]) == ["one.pt"]
    assert names(["gpt2", "bert-base"]) == ["gpt2", "bert-base"]


# --- the docstring examples -------------------------------------------------------------------


@pytest.mark.parametrize(
    "test",
    [t for t in doctest.DocTestFinder().find(mapping_mod) if t.examples],
    ids=lambda t: t.name,
)
def test_docstring_example(test: doctest.DocTest) -> None:
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)


def test_every_public_name_has_an_example() -> None:
    missing = [
        name
        for name in mapping_mod.__all__
        if ">>>" not in (inspect.getdoc(getattr(mapping_mod, name)) or "")
        or "Examples:" not in (inspect.getdoc(getattr(mapping_mod, name)) or "")
    ]
    assert not missing
