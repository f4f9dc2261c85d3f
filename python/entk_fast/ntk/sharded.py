"""The top-k eigenpairs of one eNTK with its products spread over Dask workers.

The samples are split into one contiguous shard per worker. Each worker holds the model and
its shard's operator — for one affine layer deep in a sequence model the cached-layer
products (`.layer_operator`: the layer's inputs and the suffix graph after it), else the kept
autograd graphs (`.operator`) — built on first use and kept in the worker's process under the
solve's token, so neither the model nor the activations travel again. With M_s the Jacobian
rows of shard s, K V = M (Mᵀ V) = Σ_s M_s (Σ_s' M_s'ᵀ V_s'), so a product of a block V is

1. one task a shard on the worker that holds it: its rows V_s in, the parameter-sized
   M_sᵀ V_s out (for a ``Linear`` layer d_out × d_in a vector);
2. the sum of those parts, a tree of tasks on the workers (the client never holds one);
3. one task a shard: the sum in, its rows M_s (Mᵀ V) of K V out to the client.

The Krylov solver (`.krylov`, the Rust core) runs in the client, as in one process, on the
same products: the eigenpairs are those of the single-process solve (sums in another order:
float64 round-off).

A worker that dies: Dask reruns its tasks on another worker, which builds the shard again from
the spec (scattered to every worker, so it survives the loss of any one); a product whose
tasks failed for good is run again from its V (a product is a pure function of V), at most
`RETRIES` times. Errors of the computation itself (bad inputs, non-finite Jacobians) are
raised as in one process. `info["distributed"]` reports the workers, shards, rebuilds and, per
product, the wall time split into the slowest shard's compute and the wait (scheduling and
transfers), and the bytes a product moves.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import EntkError, InvalidArgumentError, InvalidTypeError
from ..results import NTKSpectrum
from .krylov import krylov_shape, solve_topk, topk_spectrum
from .layer_operator import CachedLayerOperator, cached_layer_reason
from .operator import KernelOperator
from .plan import plan_matrix_free, work_budget
from .problem import Problem, prepare, slice_samples

__all__ = [
    "RETRIES",
    "DistributedProducts",
    "check_client",
    "distributed_reason",
    "distributed_topk",
    "live_workers",
]

#: Times a product is run again after its tasks failed for good (a lost worker's data).
RETRIES = 3
#: Parts summed by one task of the reduction tree.
FAN_IN = 4


def check_client(client: Any) -> Any:
    """``client`` as a connected dask.distributed Client with at least one worker."""
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - the batch extra installs it
        raise InvalidArgumentError(
            "client= needs dask.distributed: pip install 'entk-fast[batch]'"
        ) from exc
    if not isinstance(client, Client):
        raise InvalidTypeError(
            f"client must be a dask.distributed.Client, got {type(client).__name__}"
        )
    if client.status in ("closing", "closed", "failed"):
        raise InvalidArgumentError(f"client is {client.status}: open a new one")
    if not live_workers(client):
        raise InvalidArgumentError("client has no workers: start or scale its cluster first")
    return client


def live_workers(client: Any) -> list[str]:
    """The addresses of ``client``'s workers now, asked of the scheduler (the client's own
    ``scheduler_info()`` is a snapshot that can lag behind, even list none)."""
    return sorted(client.nthreads())


def distributed_reason(problem: Problem, cached_layer: bool) -> str | None:
    """None when the products of ``problem`` can be spread over workers, else why not."""
    if problem.n_samples2:
        return "a cross kernel has no top-k"
    if not cached_layer and problem.lone_autograd:
        return "the model's forward runs one sample at a time (not vmappable)"
    return None


# ---------------------------------------------------------------------------------------------
# Worker side: the shards this process holds, by (token, shard).


@dataclass
class _Shard:
    operator: CachedLayerOperator | KernelOperator
    pull_seconds: float = math.nan
    fresh: bool = True
    """Built since the client last heard of it (a first build or a rebuild)."""


_SHARDS: dict[tuple[str, int], _Shard] = {}
_MODELS: dict[str, nn.Module] = {}
_LOCK = threading.Lock()
#: One shard's work at a time in a worker process: the shards of one solve share its model,
#: whose forward hooks (the cached-layer products) must not see another shard's forward.
_RUN = threading.Lock()
#: Rows of V larger than this are scattered to their worker rather than sent in the task.
EMBED_BYTES = 2**20


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


#: The share of a worker's Dask memory limit its shard may plan for when ``max_memory`` is not
#: given: below the limit's 60 % "spill" and 80 % "pause" thresholds (memory held by a task's
#: own cache is unmanaged: at 80 % the worker stops running tasks, at 95 % it is restarted).
WORKER_MEMORY_SHARE = 0.5


def _shard_memory(max_memory: Any) -> Any:
    """The shard's budget: ``max_memory`` when given, else half the worker's memory limit
    (several workers of one machine each see all of its free memory)."""
    if max_memory is not None:
        return max_memory
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):
        return None
    return None if not limit else int(WORKER_MEMORY_SHARE * limit)


def _build(spec: dict[str, Any], token: str, index: int) -> _Shard:
    """The shard's operator on this worker: its samples' Problem and products, as one process
    would build them for the whole kernel."""
    threads = _worker_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    model = _MODELS.get(token)
    if model is None:
        model = pickle.loads(spec["model"])  # cloudpickle output loads with plain pickle
        model.eval()
        _MODELS[token] = model
    start, stop = spec["bounds"][index]
    positions = spec["positions"]
    try:
        problem = prepare(
            model,
            slice_samples(spec["inputs"], start, stop),
            positions=None if positions is None else positions[start:stop],
            sample_offset=start,  # messages name the user's samples, not the shard's
            **spec["options"],
        )
    except EntkError as exc:  # the client's probe passed: this process sees another model
        raise type(exc)(f"the worker holding samples {start}..{stop - 1}: {exc}") from exc
    k, width, basis_blocks = spec["k"], spec["width"], spec["basis_blocks"]
    budget = work_budget(_shard_memory(spec["max_memory"]), 0, "a shard's products")
    memory = plan_matrix_free(
        problem, k, width, basis_blocks, budget, cached_layer=spec["cached_layer"]
    )
    operator: CachedLayerOperator | KernelOperator
    if spec["cached_layer"]:
        operator = CachedLayerOperator(
            problem, width, memory.cached_transient, keep_bytes=memory.room
        )
    else:
        operator = KernelOperator(problem, memory.chunk, memory.columns, keep_bytes=memory.room)
    return _Shard(operator)


def _shard(spec: dict[str, Any], token: str, index: int) -> _Shard:
    """The shard held here, built now if this worker has none (first use, or its worker
    died; the shard's ``fresh`` flag tells the client)."""
    key = (token, index)
    with _LOCK:
        found = _SHARDS.get(key)
    if found is not None:
        return found
    shard = _build(spec, token, index)
    with _LOCK:
        _SHARDS[key] = shard
    return shard


def _pull(spec: dict[str, Any], token: str, index: int, rows: np.ndarray) -> list[np.ndarray]:
    """Task: M_sᵀ V_s for the shard's rows V_s (R_s, b) of the block."""
    with _RUN:
        shard = _shard(spec, token, index)
        start = time.perf_counter()
        parts = shard.operator.pull(rows)
        shard.pull_seconds = time.perf_counter() - start
    return parts


def _add(*parts: list[np.ndarray]) -> list[np.ndarray]:
    """Task: the elementwise sum of lists of parts (accumulated in float64, returned in the
    parts' own dtype, the one the products take)."""
    total = [np.array(p, dtype=np.float64) for p in parts[0]]
    for other in parts[1:]:
        for acc, p in zip(total, other, strict=True):
            acc += p
    return [acc.astype(p.dtype, copy=False) for acc, p in zip(total, parts[0], strict=True)]


def _push(spec: dict[str, Any], token: str, index: int, total: list[np.ndarray]) -> dict[str, Any]:
    """Task: the shard's rows M_s W of K V for the summed parts W, with its timings."""
    with _RUN:
        shard = _shard(spec, token, index)
        start = time.perf_counter()
        rows = shard.operator.push(total)
        seconds = time.perf_counter() - start
        pulled, shard.pull_seconds = shard.pull_seconds, math.nan
        built, shard.fresh = shard.fresh, False
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):  # pragma: no cover - always on a worker
        worker = None
    return {
        "rows": rows,
        "compute": pulled + seconds,
        "built": built,
        "worker": worker,
        "kept_bytes": int(shard.operator.kept_bytes),
    }


def _drop(token: str) -> int:
    """Run on every worker at the end: forget the solve's shards and model."""
    with _LOCK:
        keys = [key for key in _SHARDS if key[0] == token]
        for key in keys:
            del _SHARDS[key]
        _MODELS.pop(token, None)
    return len(keys)


# ---------------------------------------------------------------------------------------------
# Client side.


def _retryable() -> tuple[type[BaseException], ...]:
    """Failures of the cluster (not of the computation): a lost worker, cancelled data."""
    from concurrent.futures import CancelledError

    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (KilledWorker, FutureCancelledError, CancelledError, CommClosedError, OSError)


class DistributedProducts:
    """K V over a Dask cluster (see the module docstring): call it with V (R, b)."""

    def __init__(
        self,
        client: Any,
        model: nn.Module,
        inputs: Any,
        positions: Any,
        options: dict[str, Any],
        problem: Problem,
        *,
        k: int,
        width: int,
        basis_blocks: int,
        cached_layer: bool,
        max_memory: Any,
    ) -> None:
        import cloudpickle  # type: ignore[import-untyped]

        self.client = client
        self.problem = problem
        n = problem.n_samples
        workers = live_workers(client)
        n_shards = min(len(workers), n)
        edges = np.linspace(0, n, n_shards + 1).round().astype(int)
        self.bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        self.rows = problem.kernel_rows_per_sample
        self.assigned = [workers[i % len(workers)] for i in range(n_shards)]
        blob = cloudpickle.dumps(model)
        self.token = f"{hashlib.sha256(blob).hexdigest()[:16]}-{uuid.uuid4().hex[:8]}"
        spec = {
            "model": blob,
            "inputs": inputs,
            "positions": None if positions is None else torch.as_tensor(positions),
            "options": options,
            "bounds": self.bounds,
            "k": k,
            "width": width,
            "basis_blocks": basis_blocks,
            "cached_layer": cached_layer,
            "max_memory": max_memory,
        }
        # Replicated on every worker: a shard can be rebuilt wherever its worker died.
        (self.spec,) = client.scatter([spec], broadcast=True, hash=False)
        self.n_products = 0
        self.builds = 0
        self.retries = 0
        self.walls: list[float] = []
        self.computes: list[float] = []
        self.part_bytes = 0
        self.kept_bytes = [0] * len(self.bounds)

    def build(self) -> float:
        """Build every shard on its worker now (the first product would otherwise); returns
        the seconds it took."""
        start = time.perf_counter()
        futures = [
            self._on_shard(_shard_info, i, key=f"entk-build-{self.token}-{i}")
            for i in range(len(self.bounds))
        ]
        for i, info in enumerate(self.client.gather(futures)):
            self.builds += int(info["built"])
            self.assigned[i] = info["worker"] or self.assigned[i]
        return time.perf_counter() - start

    def _on_shard(self, fn: Any, index: int, *args: Any, key: str) -> Any:
        """``fn(spec, token, index, *args)`` as a task on the worker holding shard ``index``
        (elsewhere if that worker is gone: the shard is then rebuilt there)."""
        return self.client.submit(
            fn,
            self.spec,
            self.token,
            index,
            *args,
            workers=[self.assigned[index]],
            allow_other_workers=True,
            pure=False,
            key=key,
        )

    def __call__(self, block: np.ndarray) -> np.ndarray:
        for attempt in range(RETRIES + 1):
            try:
                return self._product(block)
            except EntkError:
                raise
            except _retryable() as exc:
                if attempt == RETRIES:
                    raise EntkError(
                        f"a distributed product failed {RETRIES + 1} times (the cluster keeps "
                        f"losing workers or data): {type(exc).__name__}"
                    ) from exc
                self.retries += 1
                self._reassign()
        raise AssertionError("unreachable")  # pragma: no cover

    def _reassign(self) -> None:
        """Shards of workers that left go to the live workers holding the fewest shards."""
        live = live_workers(self.client)
        if not live:
            raise EntkError("the cluster has no workers left")
        for i, worker in enumerate(self.assigned):
            if worker not in live:
                load = {w: self.assigned.count(w) for w in live}
                self.assigned[i] = min(live, key=lambda w: (load[w], w))

    def _product(self, block: np.ndarray) -> np.ndarray:
        client, token, n = self.client, self.token, self.n_products
        start = time.perf_counter()
        block = np.asarray(block)
        pulls = []
        for i, (a, b) in enumerate(self.bounds):
            rows: Any = np.ascontiguousarray(block[a * self.rows : b * self.rows])
            if rows.nbytes > EMBED_BYTES:  # not inside the task graph (Dask warns past 10 MB)
                rows = client.scatter(rows, workers=[self.assigned[i]], hash=False)
            pulls.append(self._on_shard(_pull, i, rows, key=f"entk-pull-{token}-{n}-{i}"))
        level = 0
        while len(pulls) > 1:
            pulls = [
                client.submit(
                    _add,
                    *pulls[j : j + FAN_IN],
                    pure=False,
                    key=f"entk-sum-{token}-{n}-{level}-{j}",
                )
                for j in range(0, len(pulls), FAN_IN)
            ]
            level += 1
        total = pulls[0]
        pushes = [
            self._on_shard(_push, i, total, key=f"entk-push-{token}-{n}-{i}")
            for i in range(len(self.bounds))
        ]
        results = client.gather(pushes)
        if not self.part_bytes:  # a vector's parts, measured once
            nbytes = client.submit(_nbytes, total, pure=False, key=f"entk-size-{token}")
            self.part_bytes = int(nbytes.result()) // max(1, block.shape[1])
        del total, pulls, pushes
        out = np.empty((block.shape[0], block.shape[1]), dtype=np.float64)
        compute = 0.0
        for i, ((a, b), result) in enumerate(zip(self.bounds, results, strict=True)):
            out[a * self.rows : b * self.rows] = result["rows"]
            self.builds += int(result["built"])
            self.assigned[i] = result["worker"] or self.assigned[i]
            compute = max(compute, result["compute"])
            self.kept_bytes[i] = result["kept_bytes"]
        self.n_products += 1
        self.walls.append(time.perf_counter() - start)
        self.computes.append(compute)
        return out

    def bytes_per_product(self, width: int) -> int:
        """What a product of ``width`` vectors moves at most: V's rows out and K V's back
        (client ↔ workers, float64), each shard's parts to the reduction and the sum back to
        each shard (worker ↔ worker; less where a part is already where it is summed)."""
        vectors = 2 * self.problem.kernel_size * width * 8
        return int(vectors + 2 * len(self.bounds) * self.part_bytes * width)

    def close(self) -> None:
        """Forget the shards on every worker (their memory is freed)."""
        try:
            self.client.run(_drop, self.token)
        except _retryable():  # pragma: no cover - a worker gone at the end holds nothing
            pass
        self.client.cancel([self.spec])

    def report(self, width: int) -> dict[str, Any]:
        """``info["distributed"]``: the cluster, the shards and the time per product."""
        walls = np.array(self.walls) if self.walls else np.zeros(1)
        computes = np.array(self.computes) if self.computes else np.zeros(1)
        computes = np.where(np.isfinite(computes), computes, walls)
        return {
            "workers": len(live_workers(self.client)),
            "shards": len(self.bounds),
            "bounds": self.bounds,
            "products": self.n_products,
            "builds": self.builds,
            "rebuilds": max(0, self.builds - len(self.bounds)),
            "retries": self.retries,
            "seconds_per_product": float(np.median(walls)),
            "compute_per_product": float(np.median(computes)),
            "wait_per_product": float(np.median(walls - computes)),
            "part_bytes_per_vector": self.part_bytes,
            "kept_bytes_per_shard": max(self.kept_bytes),
            "bytes_per_product": self.bytes_per_product(width),
        }


def _shard_info(spec: dict[str, Any], token: str, index: int) -> dict[str, Any]:
    """Task: build (or find) the shard; where it is and whether it was built."""
    from distributed import get_worker

    with _RUN:
        shard = _shard(spec, token, index)
        built, shard.fresh = shard.fresh, False
    return {"built": built, "worker": get_worker().address}


def _nbytes(parts: list[np.ndarray]) -> int:
    return sum(int(p.nbytes) for p in parts)


def distributed_topk(
    client: Any,
    model: nn.Module,
    inputs: Any,
    problem: Problem,
    *,
    k: int,
    options: dict[str, Any],
    positions: Any,
    max_memory: Any,
    tol: float | None,
    maxiter: int | None,
    block: int | None,
    seed: int,
    progress: bool | None,
) -> NTKSpectrum:
    """`entk_fast.entk_topk` with ``client=``: the top ``k`` of ``problem`` (prepared in the
    client from ``model``, ``inputs``, ``positions`` and ``options``) with its products on
    ``client``'s workers."""
    size = problem.kernel_size
    if k >= size:
        raise InvalidArgumentError(
            f"k = {k} must be smaller than the kernel's order {size} for the matrix-free solver"
        )
    cached_reason = cached_layer_reason(problem)
    cached = cached_reason is None
    why_not = distributed_reason(problem, cached)
    if why_not is not None:
        raise InvalidArgumentError(f"client= cannot spread this eNTK's products: {why_not}")
    width, basis_blocks = krylov_shape(problem, k, block, cached)
    # the client holds the Krylov basis (checked as in one process); each worker its shard
    work_budget(max_memory, size * k * problem.itemsize, f"the {size}×{k} eigenvector block")
    products = DistributedProducts(
        client,
        model,
        inputs,
        positions,
        options,
        problem,
        k=k,
        width=width,
        basis_blocks=basis_blocks,
        cached_layer=cached,
        max_memory=max_memory,
    )
    try:
        build_seconds = products.build()
        values, vectors, info = solve_topk(
            problem,
            k,
            products,
            width=width,
            basis_blocks=basis_blocks,
            tol=tol,
            maxiter=maxiter,
            seed=seed,
            progress=progress,
        )
    finally:
        products.close()
    return topk_spectrum(
        problem,
        values,
        vectors,
        {
            **info,
            "products": "cached_layer" if cached else "autograd",
            "cached_layer_reason": cached_reason,
            "block": width,
            "distributed": {**products.report(width), "build_seconds": build_seconds},
        },
    )
