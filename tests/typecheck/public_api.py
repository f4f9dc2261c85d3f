# pyright: strict, reportAny=error
"""A user's code against the public API, type-checked by pyright (basedpyright) in CI.

Never run: `.ci/run` checks it statically in strict mode with basedpyright's reportAny, so a
public function, class or attribute that pyright sees as Any or cannot type (a missing
annotation, a lazy export it cannot follow) fails CI, and ``assert_type`` pins what the main entry points return. tests/test_typing.py
checks that no name in ``entk_fast.__all__`` is Any or Unknown, for mypy and for pyright.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from typing_extensions import assert_type

import entk_fast as ef
from entk_fast import paper, toys
from entk_fast.analysis import feature_cliffs, spectral_cliffs
from entk_fast.batch import run_batch, summarize
from entk_fast.linalg import FloatArray, TopkInfo
from entk_fast.ntk.estimate import MethodEstimate, SpectrumPlan


def linear_algebra(j: NDArray[np.float64], n: int) -> tuple[FloatArray, ...]:
    k = ef.linalg.gram(j)
    ef.linalg.gram_accumulate(k, j, alpha=0.5)
    cross = ef.linalg.gram_cross(j, j)
    values, vectors = ef.linalg.eigh(k)
    top_values, top_vectors, info = ef.linalg.eigh_topk(k, 4, return_info=True)
    assert_type(info, TopkInfo)
    op_values, _, _ = ef.linalg.eigh_topk_operator(lambda v: k @ v, n, 2)
    angles: NDArray[np.float64] = ef.linalg.principal_angles(vectors, top_vectors)
    ef.set_num_threads(2)
    threads: int = ef.get_num_threads()
    overlap: float = ef.linalg.subspace_overlap(vectors, top_vectors)
    del threads, overlap
    return values, top_values, op_values, cross, angles


def kernels(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[int, float]]:
    ntk = ef.empirical_ntk(model, x, reduction="trace", layerwise=True)
    assert_type(ntk, ef.EmpiricalNTK)
    kernel: np.ndarray = ntk.kernel
    layers: dict[str, np.ndarray] = ntk.layer_kernels
    spec = ef.entk_spectrum(model, x, k=10)
    assert_type(spec, ef.NTKSpectrum)
    top = ef.entk_topk(model, x, k=4, reduction="mean_pairs")
    eigenvalues: np.ndarray = top.eigenvalues
    spec.save(Path("spec.npz"))
    again = ef.NTKSpectrum.load("spec.npz")
    ntk.save("k.npz")
    assert_type(ef.EmpiricalNTK.load("k.npz"), ef.EmpiricalNTK)
    cliffs = spectral_cliffs(spec.eigenvalues, top=3)
    report = feature_cliffs(spec.eigenvalues)
    del kernel, layers, eigenvalues, again, cliffs, report
    return spec.gaps(top=3)


def planning(model: torch.nn.Module, x: torch.Tensor) -> str:
    plan = ef.entk_plan(model, x, k=10, max_memory="4GB")
    assert_type(plan, SpectrumPlan)
    method: str | None = plan.method
    dense = plan["dense"]
    assert_type(dense, MethodEstimate)
    seconds: float | None = dense.seconds
    memory: int | None = dense.memory
    paths: dict[str, str] = dict(dense.paths)
    forward: float = plan.calibration.forward
    del method, seconds, memory, paths, forward
    return str(plan)


def training(out: Path) -> int:
    result = paper.train_modadd(paper.ModAddConfig(p=7, epochs=2), None, progress=False)
    model: torch.nn.Module = result.model
    tms = toys.TMS(5, 2)
    importance: torch.Tensor = toys.tms_importance(5)
    points: torch.Tensor = toys.tms_dataset(5, 10)
    data = toys.modadd_dataset(7)
    run = paper.load_run(out)
    assert_type(run, paper.Run)
    steps: list[int] = run.checkpoint_steps
    mlp = toys.ModAddMLP(7, hidden=8)
    paper.train_tms(paper.TMSConfig(steps=1), None, progress=False, plot=False)
    del model, tms, importance, points, data, mlp
    return len(steps)


def batch(runs: Path, out: Path) -> str:
    report = run_batch(runs, out, client=None)
    return report.summary() + summarize(out).text()


def errors() -> tuple[type[ValueError], type[TypeError], type[Exception], str]:
    return ef.InvalidArgumentError, ef.InvalidTypeError, ef.EntkError, ef.__version__
