"""Cluster-safe resources: cgroup memory limits shape the plan, and the environment's thread
count (RAYON_NUM_THREADS, OMP_NUM_THREADS, SLURM_CPUS_PER_TASK) sizes the Rust pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entk_fast import MemoryBudgetError, empirical_ntk
from entk_fast._resources import Memory, allowed_cpus, cgroup_memory
from entk_fast.ntk import plan


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_an_ancestor(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(tmp_path / "proc", "0::/job/step\n")
    _write(root / "job" / "memory.max", "1000000000\n")
    _write(root / "job" / "memory.current", "200000000\n")
    _write(root / "job" / "step" / "memory.max", "max\n")
    _write(root / "job" / "step" / "memory.current", "150000000\n")
    found = cgroup_memory(root, tmp_path / "proc")
    assert found is not None and found.available == 800_000_000
    assert "v2" in found.source and str(root / "job") in found.source


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(tmp_path / "proc", "4:memory:/slurm/job_7\n3:cpuset:/\n")
    _write(root / "memory" / "slurm" / "job_7" / "memory.limit_in_bytes", "4294967296\n")
    _write(root / "memory" / "slurm" / "job_7" / "memory.usage_in_bytes", "294967296\n")
    _write(root / "memory" / "memory.limit_in_bytes", str(2**63 - 4096))  # no limit
    found = cgroup_memory(root, tmp_path / "proc")
    assert found is not None and found.available == 4_000_000_000 and "v1" in found.source
    _write(tmp_path / "proc2", "0::/\n")
    _write(root / "memory.max", "max\n")
    assert cgroup_memory(root, tmp_path / "proc2") is None
    assert cgroup_memory(root, tmp_path / "missing") is None


def test_a_cgroup_limit_below_free_ram_changes_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    free = plan.work_budget(None, 0, "nothing")
    limit = Memory(256 * 2**20, "the cgroup v2 limit of /sys/fs/cgroup/job")
    monkeypatch.setattr(plan, "available_memory", lambda: limit)
    budget = plan.work_budget(None, 0, "nothing")
    assert budget < free and budget == 128 * 2**20
    assert "half of the cgroup v2 limit of /sys/fs/cgroup/job" in budget.describe()
    model = torch.nn.Linear(3, 2).double()
    x = torch.randn(8000, 3, dtype=torch.float64)  # a (16000)² flattened kernel: 2 GB
    with pytest.raises(MemoryBudgetError, match="cgroup v2 limit"):
        empirical_ntk(model, x, progress=False)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"RAYON_NUM_THREADS": "1"}, 1),
        ({"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "2"}, 1),
        ({"SLURM_CPUS_PER_TASK": "1"}, 1),
        ({"RAYON_NUM_THREADS": "4096"}, None),  # capped at the CPUs this process may use
        ({"RAYON_NUM_THREADS": "x"}, None),  # not a count: the default
    ],
)
def test_rust_threads_follow_the_environment(
    variables: dict[str, str], expected: int | None
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")
    }
    env.update(variables)
    code = "import entk_fast as ef; print(ef.get_num_threads()); ef.set_num_threads(); print(ef.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    want = allowed_cpus() if expected is None else expected
    assert [int(v) for v in out] == [want, want]
