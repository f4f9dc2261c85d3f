"""Where a batch runs: a ``dask.distributed`` client on a local cluster, an existing
scheduler, or a SLURM / PBS cluster through dask-jobqueue. No scheduling of our own.

Every worker runs one task at a time with one thread (``threads_per_worker=1``; the tasks also
set the Rust and torch pools to one thread), so N workers on a node use N cores.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._validate import check_int
from ..errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client

__all__ = [
    "CLUSTERS",
    "GLIBC_MALLOC_DEFAULTS",
    "dashboard_address",
    "open_client",
    "read_cluster_config",
    "require_dask",
]

#: ``--cluster`` names -> dask-jobqueue classes.
CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def require_dask() -> None:
    """Raise a clear error when dask.distributed is not installed."""
    try:
        importlib.import_module("distributed")
    except ImportError as e:
        raise InvalidArgumentError(
            "the batch commands need Dask: pip install 'dask[distributed]' "
            f"(or pip install 'entk-fast[batch]') ({e})"
        ) from None


def read_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue cluster class from a YAML or JSON file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgumentError(f"cluster_config: cannot read {file}: {e}") from None
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            yaml = importlib.import_module("yaml")  # PyYAML comes with dask
            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / ValueError: the message says where
        raise InvalidArgumentError(f"cluster_config: {file} is not valid YAML/JSON: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InvalidArgumentError(
            f"cluster_config: {file} must hold a mapping of keyword arguments "
            "(e.g. cores: 1, memory: 4GB, walltime: '01:00:00'), got "
            f"{type(data).__name__}"
        )
    return data


def _jobqueue_cluster(kind: str, config: dict[str, Any]) -> Any:
    try:
        jobqueue = importlib.import_module("dask_jobqueue")
    except ImportError:
        raise InvalidArgumentError(
            f"cluster: --cluster {kind} needs dask-jobqueue, which is not installed "
            "(pip install dask-jobqueue)"
        ) from None
    cls = getattr(jobqueue, CLUSTERS[kind])
    try:
        return cls(**config)
    except TypeError as e:
        raise InvalidArgumentError(f"cluster_config: not accepted by {cls.__name__}: {e}") from e


@contextlib.contextmanager
def open_client(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    cluster: str | None = None,
    cluster_config: str | os.PathLike[str] | None = None,
    dashboard: bool = True,
    local_directory: str | os.PathLike[str] | None = None,
) -> Iterator[Client]:
    """A connected ``distributed.Client``, closed (with the cluster it started) on exit.

    Args:
        workers: local cluster: worker processes (default: the usable cores); jobqueue
            cluster: how many workers to ask for (default 1). Not with ``scheduler``.
        scheduler: the address of a running scheduler (``tcp://host:8786``); its workers
            are used as they are.
        cluster: ``"slurm"`` or ``"pbs"``: workers are batch jobs submitted through
            dask-jobqueue, configured by ``cluster_config`` (YAML/JSON keyword arguments of
            ``SLURMCluster`` / ``PBSCluster``) or dask-jobqueue's own configuration.
        dashboard: start the local cluster's dashboard (port 8787 when free; needs bokeh).
            A local cluster (scheduler, workers, dashboard) listens on 127.0.0.1 only.
        local_directory: the local workers' scratch directory.
    """
    require_dask()
    from distributed import Client, LocalCluster

    if workers is not None:
        workers = check_int("workers", workers, minimum=1)
    if scheduler is not None and cluster is not None:
        raise InvalidArgumentError("scheduler: give either a scheduler address or --cluster")
    if scheduler is not None and workers is not None:
        raise InvalidArgumentError(
            "workers: a scheduler's workers are started elsewhere; drop workers (--workers) "
            "or the scheduler address"
        )
    if cluster_config is not None and cluster is None:
        raise InvalidArgumentError("cluster_config: only used with cluster ('slurm' or 'pbs')")
    if cluster is not None and cluster not in CLUSTERS:
        raise InvalidArgumentError(
            f"cluster: expected one of {', '.join(CLUSTERS)}, got {cluster!r}"
        )
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise InvalidArgumentError(f"scheduler: expected an address, got {scheduler!r}")
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as e:
            raise InvalidArgumentError(f"scheduler: cannot connect to {scheduler}: {e}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if cluster is not None:
        config = read_cluster_config(cluster_config) if cluster_config is not None else {}
        with _jobqueue_cluster(cluster, config) as jq:
            jq.scale(n=workers or 1)
            with Client(jq) as client:
                yield client
        return
    n = workers if workers is not None else _usable_cores()
    import dask

    # The nannies read this when they are made: the workers keep glibc's malloc defaults.
    with dask.config.set(GLIBC_MALLOC_DEFAULTS):
        local = LocalCluster(**_local_cluster_kwargs(n, dashboard, local_directory))
    with local, Client(local) as client:
        yield client


GLIBC_MALLOC_DEFAULTS: dict[str, None] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
"""The Dask setting under which a local cluster's workers start: without distributed's
``MALLOC_TRIM_THRESHOLD_=65536``. An explicit trim threshold turns off glibc's adaptive mmap
threshold, so every large array (Jacobians, kernels, eigenvectors) is a fresh mmap with its
page faults: the grokking sweep's tasks took 1.00 s instead of 0.65 s each (the serial loop
under the same variable took 1.00 s too). Workers of your own cluster get it by setting
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in their Dask config."""


#: Where a local cluster listens: the loopback interface only. Its scheduler, workers,
#: nannies and dashboard are reachable from this machine alone (an SSH tunnel shows the
#: dashboard elsewhere); the tasks unpickle what they receive, so nothing else may connect.
LOOPBACK = "127.0.0.1"


def _local_cluster_kwargs(
    n: int, dashboard: bool, local_directory: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """The keyword arguments of the ``LocalCluster`` that `open_client` starts."""
    return {
        "n_workers": n,
        "threads_per_worker": 1,
        "processes": True,
        "host": LOOPBACK,
        # without a dashboard the scheduler's HTTP server (health, metrics) still listens:
        # on any free port, not on 8787, which another cluster may hold
        "dashboard_address": _dashboard_address() if dashboard else f"{LOOPBACK}:0",
        "worker_dashboard_address": None,
        "local_directory": None if local_directory is None else str(local_directory),
    }


def _dashboard_address() -> str:
    """Port 8787 on the loopback when it is free, else any free port (two clusters on one
    machine, say a test run beside a batch, must not collide, nor warn)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, 8787))
        except OSError:
            return f"{LOOPBACK}:0"
    return f"{LOOPBACK}:8787"


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def dashboard_address(client: Client) -> str | None:
    """The dashboard's URL, or None when the scheduler serves none. Its pages need bokeh
    where the scheduler runs (a note says so when bokeh is missing here)."""
    with contextlib.suppress(Exception):
        if "dashboard" in client.scheduler_info().get("services", {}):
            link = str(client.dashboard_link)
            try:
                importlib.import_module("bokeh")
            except ImportError:
                link += " (its pages need bokeh: pip install bokeh)"
            return link
    return None
