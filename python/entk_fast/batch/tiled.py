"""A kernel too big for one process: assembled tile by tile on Dask workers into a chunked
on-disk array, and its top-k spectrum by block products over the stored chunks.

Each task computes one tile K(X_a, X_b) through the public tile seam
(``empirical_ntk(model, x_a, x_b)``; the diagonal tiles as the square kernel K(X_a, X_a)),
only for a ≤ b, and writes it and its mirror K(X_b, X_a) = K(X_a, X_b)ᵀ into the store: a
Zarr array whose chunks are the tiles (one file per chunk, so workers never write the same
file), or, without Zarr, a ``.npy`` file written through memory maps. The array is built
under a temporary name and renamed onto ``out_path`` only when every tile is written, so
``out_path`` is never a partial kernel. The temporary name carries the writer's pid and
host; a later call for the same ``out_path`` removes the partial arrays of writers that were
killed. ``overwrite=True`` replaces only a file, or a folder that is a kernel stored by
`tiled_kernel` (its metadata says so): never another folder. A full disk is a
`StorageError` naming ``out_path``, with the partial array removed.

Limits (honest ones):

* every worker holds the whole model and the inputs (they are broadcast once), and computes
  Jacobians of a tile's samples: the tile size bounds a task's memory, not the model's;
* the stored kernel has (N·C)² entries for the flattened reduction (N² for trace /
  mean_pairs): 8 bytes each in float64, e.g. 80 GB for N·C = 100 000;
* the workers must see ``out_path``'s folder (one machine, or a shared file system); the
  ``.npy`` fallback needs workers on one machine (memory maps of one file from several
  nodes are not safe on NFS), Zarr's chunk files work from any node;
* `stored_topk` reads the whole kernel once per block product (tens of products for
  a top-k), in this process, one row block at a time: it is I/O bound, and holds one row
  block (rows × N·C) plus the Krylov basis in memory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import linalg
from .._io import (
    atomic_write_json,
    fsync_dir,
    owner_tag,
    read_regular_bytes,
    storage_error,
    written_by_dead_process,
)
from .._validate import check_choice, check_int
from .._version import __version__
from ..errors import EntkError, InvalidArgumentError
from ..reductions import reduction_of

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client
    from torch import nn

    from ..results import NTKSpectrum

__all__ = [
    "StoredKernel",
    "open_stored_kernel",
    "stored_kernel_meta",
    "stored_topk",
    "tiled_kernel",
]

FORMATS = ("auto", "zarr", "npy")
#: The ``format`` of a stored kernel's metadata (Zarr attributes, or the ``.npy``'s
#: ``NAME.npy.json`` next to it).
KERNEL_FORMAT = "entk-fast-tiled-kernel"


@dataclass(frozen=True)
class StoredKernel:
    """A kernel written by `tiled_kernel`: (order, order), row = n·C + c (flattened)
    or n (trace / mean_pairs)."""

    path: Path
    format: str
    order: int
    n_samples: int
    n_outputs: int
    reduction: str
    tile: int
    dtype: str
    info: dict[str, Any] = field(default_factory=dict)

    def array(self) -> Any:
        """The stored array, read-only (a Zarr array or a numpy memmap)."""
        return open_stored_kernel(self.path)

    def load(self) -> np.ndarray:
        """The whole kernel in memory (only for kernels that fit)."""
        return np.asarray(self.array()[:, :])

    def topk(self, k: int, **kwargs: Any) -> NTKSpectrum:
        """`stored_topk` of this kernel (``client=`` spreads its products over workers)."""
        return stored_topk(self.path, k, **kwargs)


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        return None
    return zarr


def _slice(x: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of ``x`` (`entk_fast.ntk.problem.slice_samples`)."""
    from ..ntk.problem import slice_samples

    return slice_samples(x, start, stop)


def _join(first: Any, second: Any) -> Any:
    """Two slices of ``x`` as one batch (``first`` then ``second``)."""
    import torch

    if isinstance(first, tuple):
        return tuple(torch.cat(pair) for pair in zip(first, second, strict=True))
    if isinstance(first, Mapping):
        from ..ntk.problem import split_keywords

        values, keys, constants = split_keywords(first, "x")
        joined = {k: torch.cat((v, second[k])) for k, v in zip(keys, values, strict=True)}
        return {**joined, **dict(constants)}
    return torch.cat((first, second))


def _n_samples(x: Any) -> int:
    if isinstance(x, Mapping):
        from ..ntk.problem import split_keywords

        x = split_keywords(x, "x")[0][0]
    first = x[0] if isinstance(x, tuple) and x else x
    shape = getattr(first, "shape", None)
    if not shape:
        raise InvalidArgumentError(
            "x: expected a tensor (N, ...), a tuple of tensors sharing dim 0 or a dict of "
            "keyword inputs"
        )
    return int(shape[0])


def _positions_array(positions: Any, n: int) -> Any:
    import torch

    pos = torch.as_tensor(positions)
    if pos.dim() != 1 or int(pos.shape[0]) != n:
        raise InvalidArgumentError(
            f"positions: expected one read position a sample, shape ({n},), got {tuple(pos.shape)}"
        )
    return pos


def _n_outputs(model: nn.Module, x: Any, positions: Any, options: dict[str, Any]) -> int:
    """C, the outputs a sample has, from the kernel of the first sample (which also checks
    every option before any tile runs)."""
    from ..ntk import empirical_ntk

    first = _slice(x, 0, 1)
    where = None if positions is None else positions[:1]
    return empirical_ntk(model, first, positions=where, progress=False, **options).n_outputs


#: Models unpickled on this worker, by the sha256 of their pickle (the last few only).
_MODELS: dict[str, nn.Module] = {}


def _model_of(model: nn.Module | tuple[str, bytes]) -> nn.Module:
    """The model itself, or the model a ``(sha256, cloudpickle bytes)`` pair holds (Dask's
    own serialisation of an nn.Module turns its hook dicts into plain dicts, which breaks
    forward hooks; a pickle keeps the module intact)."""
    if not isinstance(model, tuple):
        return model
    token, blob = model
    found = _MODELS.get(token)
    if found is None:
        import pickle

        found = pickle.loads(blob)  # cloudpickle output loads with plain pickle
        while len(_MODELS) >= 2:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[token] = found
    return found


def _kernel_tile(
    model: nn.Module | tuple[str, bytes],
    x: Any,
    positions: Any,
    a: tuple[int, int],
    b: tuple[int, int],
    scale: int,
    path: str,
    fmt: str,
    options: dict[str, Any],
    threads: int | None,
) -> tuple[int, int]:
    """One task: the tile K(X[a], X[b]) (and its mirror) written into the array at ``path``."""
    from ..ntk import empirical_ntk
    from .execute import pinned_threads

    model = _model_of(model)
    with pinned_threads(threads):
        xa = _slice(x, *a)
        if a == b:
            where = None if positions is None else positions[a[0] : a[1]]
            tile = empirical_ntk(model, xa, positions=where, progress=False, **options).kernel
        elif positions is None:
            tile = empirical_ntk(model, xa, _slice(x, *b), progress=False, **options).kernel
        else:
            # the cross kernel takes no positions: the off-diagonal block of the pair's square
            import torch

            where = torch.cat((positions[a[0] : a[1]], positions[b[0] : b[1]]))
            both = _join(xa, _slice(x, *b))
            square = empirical_ntk(model, both, positions=where, progress=False, **options)
            split = (a[1] - a[0]) * scale
            tile = square.kernel[:split, split:]
        rows = slice(a[0] * scale, a[1] * scale)
        cols = slice(b[0] * scale, b[1] * scale)
        if fmt == "zarr":
            array = _zarr().open_array(path, mode="r+")
            array[rows, cols] = tile
            if a != b:
                array[cols, rows] = tile.T
        else:
            mm = np.load(path, mmap_mode="r+")
            mm[rows, cols] = tile
            if a != b:
                mm[cols, rows] = tile.T
            mm.flush()
            del mm
    return a[0], b[0]


def tiled_kernel(
    model: nn.Module,
    x: Any,
    out_path: str | os.PathLike[str],
    *,
    tile: int = 1024,
    client: Client | None = None,
    reduction: str = "trace",
    output_metric: Any = None,
    params: Iterable[str] | str | None = None,
    dtype: Any = "float64",
    output_fn: Callable[[Any], Any] | None = None,
    positions: Any = None,
    layerwise: bool = False,
    format: str = "auto",
    retries: int = 1,
    threads: int | None = 1,
    overwrite: bool = False,
) -> StoredKernel:
    """Assemble the eNTK of ``model`` on ``x`` tile by tile into an on-disk array.

    Args:
        model: the network, as in `entk_fast.empirical_ntk` (the tiles are its cross kernels).
        x: the inputs, as in `entk_fast.empirical_ntk`: a tensor (N, ...), a tuple of
            tensors sharing dim 0, or a dict of keyword inputs (``input_ids``,
            ``attention_mask``, ...) whose tensors with N rows are split into tiles and whose
            other values are passed to every tile as they are.
        reduction: ``"trace"``, ``"mean_pairs"`` or ``"flattened"``, as in `empirical_ntk`.
        output_metric: the output metric, as in `empirical_ntk`.
        params: the parameters to differentiate, as in `empirical_ntk`.
        dtype: the kernel's dtype, as in `empirical_ntk`.
        output_fn: maps the model's output to a tensor (N, ...), as in `empirical_ntk`
            (a Hugging Face model's ``lambda o: o.last_hidden_state``). It must be picklable
            by cloudpickle to reach Dask workers (a lambda is).
        positions: one read position a sample (N,), as in `empirical_ntk`. A tile K(X_a, X_b)
            with a ≠ b is then the off-diagonal block of the square kernel of X_a and X_b
            together (the cross kernel takes no positions): about twice a plain tile's work.
        layerwise: not stored: a group's kernel is `tiled_kernel` with ``params=`` that
            group's parameters (one call a group); True raises `InvalidArgumentError`
            saying so.
        out_path: where the kernel goes: a Zarr directory, or a ``.npy`` file.
        tile: samples per tile side; one task computes a tile of tile × tile samples
            ((tile·C)² entries flattened). Its Jacobians bound a worker's memory.
        client: a ``dask.distributed.Client``; None computes the tiles in this process.
            The workers must see ``out_path``'s folder.
        format: ``"zarr"``, ``"npy"`` or ``"auto"`` (Zarr when installed, else npy).
        retries: extra attempts of a failed tile task.
        threads: Rust and torch threads in each task (None: unchanged).
        overwrite: replace an existing ``out_path``: a file, or a folder holding a kernel
            stored by this function; any other folder is refused (never deleted).

    Returns:
        A `StoredKernel`. The array appears at ``out_path`` only once every tile is
        written (it is assembled under a temporary name, then renamed); on an error the
        temporary array is removed and the error propagates.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    tile = check_int("tile", tile, minimum=1)
    retries = check_int("retries", retries, minimum=0)
    reduction_of(reduction)
    fmt = check_choice("format", format, FORMATS)
    if fmt == "auto":
        fmt = "zarr" if _zarr() is not None else "npy"
    elif fmt == "zarr" and _zarr() is None:
        raise InvalidArgumentError("format: 'zarr' needs the zarr package (pip install zarr)")
    target = Path(out_path)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise InvalidArgumentError(
                f"out_path: {target} exists; pass overwrite=True to replace it"
            )
        if target.is_dir() and not target.is_symlink() and not is_stored_kernel(target):
            raise InvalidArgumentError(
                f"out_path: {target} is a folder that holds no kernel stored by tiled_kernel "
                "(no entk-fast kernel metadata); overwrite=True replaces only such a kernel "
                "or a file, never another folder: remove it yourself or choose another path"
            )
    if not target.parent.is_dir():
        raise InvalidArgumentError(f"out_path: the folder {target.parent} does not exist")
    if layerwise:
        raise InvalidArgumentError(
            "layerwise: tiled_kernel stores one kernel; a group's kernel is tiled_kernel with "
            "params= that group's parameters (one call a group, each its own out_path)"
        )
    _remove_dead_partials(target)
    n = _n_samples(x)
    np_dtype = _float_dtype(dtype)
    options = {
        "reduction": reduction,
        "output_metric": output_metric,
        "params": params,
        "dtype": str(np_dtype),
        "output_fn": output_fn,
    }
    if positions is not None:
        positions = _positions_array(positions, n)
    c = _n_outputs(model, x, positions, options)
    scale = reduction_of(reduction).kernel_order(1, c)
    order = n * scale
    ranges = [(s, min(s + tile, n)) for s in range(0, n, tile)]
    pairs = [(a, b) for i, a in enumerate(ranges) for b in ranges[i:]]
    tmp = target.with_name(f".{target.name}.{owner_tag()}.{secrets.token_hex(6)}.partial")
    start = time.perf_counter()
    try:
        _create(tmp, fmt, order, tile * scale, np_dtype)
        if client is None:
            for a, b in pairs:
                _kernel_tile(model, x, positions, a, b, scale, str(tmp), fmt, options, threads)
        else:
            _run_tiles(
                client, model, x, positions, pairs, scale, str(tmp), fmt, options, threads, retries
            )
        meta = {
            "format": KERNEL_FORMAT,
            "order": order,
            "n_samples": n,
            "n_outputs": c,
            "reduction": reduction,
            "tile": tile,
            "dtype": str(np_dtype),
            "entk_fast": __version__,
            "tiles": len(pairs),
            "seconds": time.perf_counter() - start,
        }
        _finalise(tmp, target, fmt, meta, overwrite)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and (full := storage_error(e, target)) is not e:
            raise full from e
        raise
    return StoredKernel(
        target, fmt, order, n, c, reduction, tile, str(np_dtype), {"tiles": len(pairs)}
    )


def is_stored_kernel(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a kernel written by `tiled_kernel`: a Zarr folder whose
    attributes, or a ``.npy`` file whose ``NAME.json`` next to it, say
    ``format: entk-fast-tiled-kernel``."""
    return bool(stored_kernel_meta(path))


def _remove_dead_partials(target: Path) -> list[Path]:
    """Remove the partial arrays of ``target`` left by writers that were killed (their pid,
    in the name, no longer runs on this host); a live writer's stay. Returns those removed."""
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.\d+-[0-9a-f]{{8}}\.[0-9a-f]{{12}}\.partial$"
    )
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            if pattern.match(entry.name) and written_by_dead_process(entry.name):
                with contextlib.suppress(OSError):
                    _remove(entry)
                    removed.append(entry)
    return removed


def _float_dtype(dtype: Any) -> np.dtype:
    name = str(dtype).removeprefix("torch.")
    try:
        dt = np.dtype(name)
    except TypeError:
        dt = None
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        raise InvalidArgumentError(f"dtype: expected float32 or float64, got {dtype!r}")
    return dt


def _create(path: Path, fmt: str, order: int, chunk: int, dtype: np.dtype) -> None:
    if fmt == "zarr":
        zarr = _zarr()
        zarr.create_array(
            store=str(path),
            shape=(order, order),
            chunks=(min(chunk, order), min(chunk, order)),
            dtype=dtype,
            compressors=None,  # kernel entries do not compress; skip the cost
            fill_value=np.nan,  # an unwritten tile would read as NaN, never as zeros
        )
    else:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(order, order))
        del mm  # a sparse file: reserve its blocks first, so a full disk is an error here
        _preallocate(path)  # and not a SIGBUS when the memory map's pages are written
        mm = np.load(path, mmap_mode="r+")
        mm[...] = np.nan
        mm.flush()
        del mm


def _preallocate(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as e:  # a file system without fallocate: write as before
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
    finally:
        os.close(fd)


def _run_tiles(
    client: Client,
    model: nn.Module,
    x: Any,
    positions: Any,
    pairs: list[tuple[tuple[int, int], tuple[int, int]]],
    scale: int,
    path: str,
    fmt: str,
    options: dict[str, Any],
    threads: int | None,
    retries: int,
) -> None:
    from distributed import wait

    # One copy of the model and inputs per worker, not one per task. cloudpickle (a Dask
    # dependency) also ships a model class defined in a script's __main__, and output_fn.
    blob = importlib.import_module("cloudpickle").dumps(model)
    model_f = client.scatter((hashlib.sha256(blob).hexdigest(), blob), broadcast=True)
    x_f = client.scatter(x, broadcast=True)
    futures = [
        client.submit(
            _kernel_tile,
            model_f,
            x_f,
            positions,
            a,
            b,
            scale,
            path,
            fmt,
            options,
            threads,
            retries=retries,
            pure=False,
        )
        for a, b in pairs
    ]
    try:
        wait(futures)
        for future in futures:
            if future.status != "finished":
                future.result()  # raises the task's error, with its remote traceback
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        raise
    finally:
        for future in [model_f, x_f, *futures]:
            with contextlib.suppress(Exception):
                future.release()


def _finalise(tmp: Path, target: Path, fmt: str, meta: dict[str, Any], overwrite: bool) -> None:
    if fmt == "zarr":
        array = _zarr().open_array(str(tmp), mode="r+")
        array.attrs.update(meta)
        for f in tmp.rglob("*"):  # make every chunk durable before the rename publishes them
            if f.is_file():
                _fsync_file(f)
    else:
        _fsync_file(tmp)
        atomic_write_json(target.with_name(target.name + ".json"), meta)
    if overwrite:
        _remove(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def open_stored_kernel(path: str | os.PathLike[str]) -> Any:
    """The kernel array at ``path`` (a Zarr directory or a ``.npy`` file), read-only."""
    p = Path(path)
    if p.is_dir():
        zarr = _zarr()
        if zarr is None:
            raise InvalidArgumentError(f"path: {p} is a Zarr array; reading it needs zarr")
        try:
            array = zarr.open_array(str(p), mode="r")
        except Exception as e:  # zarr raises several types for a folder that is no array
            raise InvalidArgumentError(f"path: {p} is not a Zarr array: {e}") from None
    elif p.is_file():
        try:
            array = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"path: {p} is not a .npy array: {e}") from None
    else:
        raise InvalidArgumentError(f"path: {p} does not exist")
    shape = tuple(array.shape)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise InvalidArgumentError(f"path: expected a square kernel, got shape {shape}")
    if np.dtype(array.dtype) not in (np.dtype("float32"), np.dtype("float64")):
        raise InvalidArgumentError(f"path: expected float32/float64, got {array.dtype}")
    return array


def stored_kernel_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata `tiled_kernel` stored with the kernel at ``path`` (order, n_samples,
    n_outputs, reduction, tile, dtype, ...); empty for an array stored otherwise."""
    p = Path(path)
    if p.is_dir():  # Zarr 3 keeps the attributes in zarr.json, Zarr 2 in .zattrs
        files = [(p / "zarr.json", "attributes"), (p / ".zattrs", None)]
    else:  # a .npy file: NAME.npy.json beside it
        files = [(p.with_name(p.name + ".json"), None)]
    for file, key in files:
        try:
            data = json.loads(read_regular_bytes(file, 16 << 20).decode("utf-8"))
        except (OSError, ValueError, EntkError):
            continue
        if isinstance(data, dict) and key is not None:
            data = data.get(key)
        if isinstance(data, dict) and data.get("format") == KERNEL_FORMAT:
            return data
    return {}


def _row_block_product(path: str, r0: int, r1: int, v: np.ndarray) -> tuple[np.ndarray, int]:
    """One task of a distributed product: rows ``r0:r1`` of the stored kernel times ``v``, and
    the bytes read (the worker opens the store itself: nothing kernel-sized is sent)."""
    array = open_stored_kernel(path)
    part = np.asarray(array[r0:r1, :], dtype=v.dtype)
    if not np.all(np.isfinite(part)):
        raise InvalidArgumentError(
            f"path: rows {r0}..{r1 - 1} of the stored kernel hold non-finite values "
            "(an unwritten tile?)"
        )
    return part @ v, part.nbytes


def stored_topk(
    path: str | os.PathLike[str],
    k: int,
    *,
    rows: int | None = None,
    block: int | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    seed: int = 0,
    client: Client | None = None,
) -> NTKSpectrum:
    """Top-k eigenpairs of a stored symmetric kernel by block Krylov products over its chunks.

    Each product K @ V reads the kernel one row block at a time (``rows`` rows, default the
    Zarr chunk's, or about 64 MB of a ``.npy``) and multiplies it in memory; the iteration is
    `entk_fast.linalg.eigh_topk_operator`, in this process. With ``client`` (a
    ``dask.distributed.Client`` whose workers see ``path``), the row blocks of every product
    are read and multiplied on the workers: V (order × block) goes to each task, each returns
    its rows of K V, and nothing kernel-sized crosses the network.

    Args:
        path: a kernel stored by `tiled_kernel` (or any square float array, Zarr or ``.npy``).
        k: the number of eigenpairs, 1 ≤ k ≤ the kernel's order.
        rows: rows a product reads at once (a task's rows with ``client``).
        block: vectors a product takes, as in `entk_fast.linalg.eigh_topk_operator`.
        tol: the relative residual target, as there.
        maxiter: the restart limit, as there.
        seed: the random start block's seed.
        client: spread each product's row blocks over Dask workers (None: in this process).

    Returns:
        An `NTKSpectrum` (``method="stored"``): eigenvalues (k,) descending, eigenvectors
        (order, k); its ``n_samples``, ``n_outputs`` and ``reduction`` come from the stored
        metadata (a plain array: order samples, one output, ``"trace"``).
        ``info["n_matvec"]`` counts products, ``info["bytes_read"]`` the bytes read from the
        store, ``info["tasks"]`` the Dask tasks (0 without a client).

    Raises:
        InvalidArgumentError: ``path`` is not a square float kernel, ``k`` is out of range,
            or a row block holds non-finite values (an unwritten tile).

    Examples:
        >>> import numpy as np, tempfile, os
        >>> from entk_fast.batch import stored_topk
        >>> path = os.path.join(tempfile.mkdtemp(), "k.npy")
        >>> np.save(path, np.diag([5.0, 3.0, 1.0, 0.5]))
        >>> spec = stored_topk(path, 2)
        >>> spec.eigenvalues.round(6).tolist(), spec.method
        ([5.0, 3.0], 'stored')
    """
    from ..results import NTKSpectrum

    array = open_stored_kernel(path)
    order = int(array.shape[0])
    k = check_int("k", k, minimum=1)
    if k > order:
        raise InvalidArgumentError(f"k must be in [1, {order}] (the kernel's order), got {k}")
    dt = np.dtype(array.dtype)
    if rows is None:
        chunks = getattr(array, "chunks", None)
        rows = int(chunks[0]) if chunks else max(1, (64 << 20) // (order * dt.itemsize))
    rows = check_int("rows", rows, minimum=1)
    spans = [(r0, min(r0 + rows, order)) for r0 in range(0, order, rows)]
    totals = {"bytes": 0, "tasks": 0}
    where = str(Path(path).resolve())

    def matmat(v: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(v, dtype=dt)
        if client is None:
            parts = [_row_block_product(where, r0, r1, v) for r0, r1 in spans]
        else:
            v_future = client.scatter(v, broadcast=True)
            futures = [
                client.submit(_row_block_product, where, r0, r1, v_future, pure=False)
                for r0, r1 in spans
            ]
            try:
                parts = client.gather(futures)
            finally:
                for future in [v_future, *futures]:
                    with contextlib.suppress(Exception):
                        future.release()
            totals["tasks"] += len(spans)
        totals["bytes"] += sum(nbytes for _, nbytes in parts)
        return np.concatenate([block for block, _ in parts])

    values, vectors, info = linalg.eigh_topk_operator(
        matmat, order, k, dtype=dt, block=block, tol=tol, maxiter=maxiter, seed=seed
    )
    meta = stored_kernel_meta(path)
    return NTKSpectrum(
        eigenvalues=values,
        eigenvectors=vectors,
        method="stored",
        n_samples=int(meta.get("n_samples", order)),
        n_outputs=int(meta.get("n_outputs", 1)),
        reduction=str(meta.get("reduction", "trace")),
        info={
            **dict(info),
            "bytes_read": totals["bytes"],
            "rows": rows,
            "tasks": totals["tasks"],
            "path": where,
        },
    )
