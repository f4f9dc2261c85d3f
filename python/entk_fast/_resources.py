"""What this process may use: memory under its cgroup limit, and threads from the environment.

Under SLURM (``--mem``), in a container or any cgroup with a memory limit, the free RAM that
``psutil`` reports belongs to the whole node; planning with it gets the job OOM-killed instead
of a clear ``MemoryBudgetError``. The memory available here is the smaller of the node's free
RAM and (limit − usage) of this process's cgroup and its ancestors (cgroup v2, or v1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "Memory",
    "allowed_cpus",
    "available_memory",
    "cgroup_memory",
    "threads_from_environment",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# Variables that say how many threads this process should use, in order of precedence.
THREAD_VARIABLES = ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")


@dataclass(frozen=True)
class Memory:
    """Bytes available, and where the figure came from (for messages)."""

    available: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_memory(root: Path = CGROUP_ROOT, proc: Path = PROC_CGROUP) -> Memory | None:
    """The tightest (limit − usage) of this process's memory cgroup and its ancestors.

    cgroup v2 (``0::/path`` in /proc/self/cgroup: ``memory.max``, ``memory.current``) or v1
    (the ``memory`` controller: ``memory.limit_in_bytes``, ``memory.usage_in_bytes``); None
    when no limit applies or none can be read.
    """
    try:
        lines = proc.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    best: Memory | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            base, limit_file, usage_file, kind = root, "memory.max", "memory.current", "v2"
        elif "memory" in controllers.split(","):
            base = root / "memory"
            limit_file, usage_file, kind = "memory.limit_in_bytes", "memory.usage_in_bytes", "v1"
        else:
            continue
        directory = base / rel.lstrip("/")
        while True:
            limit = _read_int(directory / limit_file)
            # v1 reports "no limit" as a huge number (page-aligned LONG_MAX)
            if limit is not None and limit < 2**60:
                usage = _read_int(directory / usage_file) or 0
                free = max(0, limit - usage)
                if best is None or free < best.available:
                    best = Memory(free, f"the cgroup {kind} limit of {directory}")
            if directory == base or directory.parent == directory:
                break
            directory = directory.parent
    return best


def available_memory() -> Memory:
    """Bytes this process can still allocate: free RAM, or less under a cgroup limit."""
    free = Memory(int(psutil.virtual_memory().available), "the free RAM")
    limited = cgroup_memory()
    return limited if limited is not None and limited.available < free.available else free


def threads_from_environment() -> int | None:
    """The thread count that RAYON_NUM_THREADS, OMP_NUM_THREADS or SLURM_CPUS_PER_TASK set
    (the first that is a positive integer), capped at the CPUs this process may run on."""
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), allowed_cpus())
    return None


def allowed_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
