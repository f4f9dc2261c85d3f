"""``cluster="slurm"`` end to end on one machine: dask-jobqueue writes the job scripts and
submits them with ``sbatch``; a stand-in ``sbatch`` (on PATH for the test) runs each script in
the background as SLURM would run it on a node, and ``scancel`` stops it. The distributed
eigen-solve then runs on those workers and finds the single-process eigenpairs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import entk_fast as ef

pytest.importorskip("dask_jobqueue")

from entk_fast.batch.cluster import open_client  # noqa: E402

SBATCH = """#!/usr/bin/env bash
# sbatch reads the script at submission (the caller deletes it): run a copy, in its own
# session so that scancel stops the whole job, and answer as sbatch does.
script="${@: -1}"
copy="$(mktemp "$FAKE_SLURM_DIR/job.XXXXXX")"
cp "$script" "$copy"
setsid bash "$copy" > "$copy.log" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null || kill -TERM "$job" 2>/dev/null; done
exit 0
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("scancel", SCANCEL), ("squeue", "#!/bin/sh\n")):
        path = bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path))
    config = tmp_path / "slurm.yaml"
    config.write_text(
        "cores: 1\nprocesses: 1\nmemory: 2GB\nwalltime: '00:10:00'\ninterface: lo\n",
        encoding="utf-8",
    )
    return config


def test_the_distributed_solve_on_slurm_workers(fake_slurm: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(41, 5, dtype=torch.float64)
    ref = ef.entk_topk(model, x, 4, structured=False)
    with open_client(cluster="slurm", cluster_config=fake_slurm, workers=2) as client:
        script = client.cluster.job_script()
        client.wait_for_workers(2, timeout=120)
        got = ef.entk_topk(model, x, 4, client=client)
    assert "#SBATCH --cpus-per-task=1" in script and "--nthreads 1" in script
    assert got.info["distributed"]["shards"] == 2
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-10)
    overlap = np.abs(np.sum(got.eigenvectors * ref.eigenvectors, axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-10)
