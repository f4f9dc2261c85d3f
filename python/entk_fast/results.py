"""The result types: ``EmpiricalNTK`` (a kernel) and ``NTKSpectrum`` (its top eigenpairs).

Both know the row layout of flattened kernels (row = n·C + c, sample-major; J. Lin, arXiv
2510.00468, the flattened eNTK), reshape eigenvectors to (N, C) and back, and save to / load
from a numpy ``.npz`` file holding the arrays and a JSON header (what the result is, how it
was computed, the format and package versions). Writes are atomic.

Loading checks the file before it allocates: each array's declared size (the zip member's
uncompressed size and the ``.npy`` header's shape) must fit a bound (``max_bytes``, by
default about the file's own size: `save` stores arrays uncompressed), and every array
must have the shape and dtype its JSON header implies; a file that contradicts itself is
refused with `InvalidArgumentError` naming ``path``.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> import entk_fast as ef
    >>> ntk = ef.empirical_ntk(nn.Linear(2, 2), torch.ones(3, 2))
    >>> type(ntk).__name__, type(ntk.spectrum()).__name__
    ('EmpiricalNTK', 'NTKSpectrum')
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from . import linalg
from ._io import atomic_open
from ._validate import check_k, check_ridge
from ._version import __version__
from .analysis.cliffs import spectral_cliffs
from .errors import InvalidArgumentError
from .reductions import REDUCTIONS

__all__ = [
    "EmpiricalNTK",
    "NTKSpectrum",
    "spectrum_of_kernel",
]

_FORMAT_VERSION = 1
_META_KEY = "__entk_fast_meta__"
_FLOATS = (np.dtype("float32"), np.dtype("float64"))
_METRIC_FLOATS = (np.dtype("float16"), *_FLOATS, np.dtype("longdouble"))
#: What a load may allocate beyond the file's own size (by default): its JSON header, slack.
_LOAD_SLACK_BYTES = 64 << 20


class _Layout:
    """Reshaping of a result's rows: (N·C[, k]) <-> (N, C[, k]) for flattened kernels."""

    n_samples: int
    n_outputs: int
    reduction: str

    def _check_flattened(self) -> None:
        if not REDUCTIONS[self.reduction].per_output:
            raise InvalidArgumentError(
                f"only a flattened kernel has one row per (sample, output); this one is "
                f"{self.reduction!r} (N × N), whose eigenvectors are already indexed by sample"
            )

    def unflatten(self, v: Any) -> np.ndarray:
        """Eigenvector(s) of a flattened kernel as (N, C) or (N, C, k); [n, c] = row n·C + c.

        Args:
            v: a vector (N·C,) or a matrix (N·C, k), e.g. ``eigenvectors``.

        Returns:
            A view of ``v`` as an array of shape (N, C) or (N, C, k).

        Raises:
            InvalidArgumentError: the kernel is not flattened, or ``v`` has not N·C rows.
        """
        self._check_flattened()
        arr = np.asarray(v)
        rows = self.n_samples * self.n_outputs
        if arr.ndim not in (1, 2) or arr.shape[0] != rows:
            raise InvalidArgumentError(
                f"expected a vector ({rows},) or a matrix ({rows}, k) with N·C = "
                f"{self.n_samples}·{self.n_outputs} rows, got shape {arr.shape}"
            )
        return arr.reshape(self.n_samples, self.n_outputs, *arr.shape[1:])

    def flatten(self, u: Any) -> np.ndarray:
        """(N, C[, k]) -> (N·C[, k]), the inverse of `unflatten`.

        Raises:
            InvalidArgumentError: the kernel is not flattened, or ``u`` is not (N, C[, k]).
        """
        self._check_flattened()
        arr = np.asarray(u)
        n, c = self.n_samples, self.n_outputs
        if arr.ndim not in (2, 3) or arr.shape[:2] != (n, c):
            raise InvalidArgumentError(
                f"expected shape ({n}, {c}) or ({n}, {c}, k), got {arr.shape}"
            )
        return arr.reshape(n * c, *arr.shape[2:])


@dataclass(frozen=True, eq=False, repr=False)
class EmpiricalNTK(_Layout):
    """An empirical NTK and how it was computed.

    ``kernel`` is (N·C, N·C) for ``flattened`` (row = n·C + c) and (N, N) for ``trace`` and
    ``mean_pairs``; a cross kernel K(X, X2) is (N·C, N2·C) or (N, N2). ``layer_kernels``
    (``layerwise=True``) has one kernel of the same shape per parameter group, and they sum to
    ``kernel``. Returned by `entk_fast.empirical_ntk`; `unflatten` reshapes a
    flattened kernel's eigenvectors to (N, C), `spectrum` diagonalises it, and
    `save` / `load` write and read it as ``.npz``.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # N = 3 samples
        >>> ntk = ef.empirical_ntk(nn.Linear(2, 2, bias=False), x, dtype=torch.float64)
        >>> ntk.shape, ntk.n_samples, ntk.n_outputs  # C = 2 outputs
        ((6, 6), 3, 2)
        >>> X = x.double().numpy()  # a linear model's eNTK is (X Xᵀ) ⊗ I_C
        >>> np.allclose(ntk.kernel, np.kron(X @ X.T, np.eye(2)))
        True
        >>> spec = ntk.spectrum(k=2)
        >>> spec.eigenvalues.round(6), ntk.unflatten(spec.eigenvectors).shape
        (array([3., 3.]), (3, 2, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ntk.save(f"{tmp}/ntk.npz")
        ...     np.array_equal(ef.EmpiricalNTK.load(f"{tmp}/ntk.npz").kernel, ntk.kernel)
        True
    """

    kind: ClassVar[str] = "entk-fast-ntk"

    kernel: np.ndarray
    """The kernel, of the computation's dtype (float32 or float64); shapes above."""
    layer_kernels: dict[str, np.ndarray]
    """Group name -> its kernel (``layerwise=True``), each of ``kernel``'s shape; else {}."""
    n_samples: int
    """N, the samples of ``inputs`` (the rows' samples of a cross kernel)."""
    n_outputs: int
    """C, the model's outputs per sample (its output flattened)."""
    reduction: str
    parameter_groups: dict[str, tuple[str, ...]]
    """Group name -> canonical parameter names (module paths by default)."""
    output_metric: np.ndarray | None
    """The metric S (C, C) that weighted the outputs, or None."""
    paths: dict[str, str] = field(default_factory=dict)
    """Parameter name -> ``"structured"`` (exact fast path) or ``"general"``."""
    n_parameters: int = 0
    """P, the number of parameters differentiated."""
    n_samples2: int | None = None
    """N2 for a cross kernel K(X, X2); None for the square kernel K(X, X)."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``kernel.shape``: (N·C, N·C), (N, N), or a cross kernel's (N·C, N2·C) / (N, N2)."""
        return tuple(self.kernel.shape)

    @property
    def is_cross(self) -> bool:
        """Whether this is a cross kernel K(X, X2) (not symmetric, no spectrum)."""
        return self.n_samples2 is not None

    def _summary(self) -> list[tuple[str, str]]:
        paths = sorted(set(self.paths.values()))
        rows = [
            ("kernel", f"{self.shape[0]} × {self.shape[1]} {self.kernel.dtype}"),
            ("reduction", self.reduction),
            (
                "samples",
                f"N = {self.n_samples}" + (f", N2 = {self.n_samples2}" if self.is_cross else ""),
            ),
            ("outputs", f"C = {self.n_outputs}"),
            ("parameters", f"{self.n_parameters} ({', '.join(paths) or '-'} path)"),
        ]
        if self.output_metric is not None:
            rows.append(
                ("output metric", f"{self.output_metric.shape[0]} × {self.output_metric.shape[1]}")
            )
        if self.layer_kernels:
            names = list(self.layer_kernels)
            shown = ", ".join(names[:6]) + (f", … ({len(names)} in all)" if len(names) > 6 else "")
            rows.append(("layer kernels", shown))
        return rows

    def __repr__(self) -> str:
        return _repr("EmpiricalNTK", self._summary())

    def _repr_html_(self) -> str:
        return _repr_html("EmpiricalNTK", self._summary())

    def spectrum(self, k: int | None = None, *, ridge: float = 0.0) -> NTKSpectrum:
        """Eigenpairs (descending) of this kernel; see `entk_fast.entk_spectrum`.

        Args:
            k: the top k eigenpairs (a Krylov solve), or None for all (a full solve).
            ridge: ε ≥ 0; adds ε·mean(diag K) to the diagonal, on a copy.

        Returns:
            An `NTKSpectrum` with ``method="dense"``.

        Raises:
            InvalidArgumentError: this is a cross kernel, k is not in [1, order], or ridge < 0.
        """
        return spectrum_of_kernel(self, k, ridge=ridge)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this result to ``path`` (``.npz``: arrays + JSON header), atomically.

        Raises:
            StorageError: the file system is full; the previous file is left as it was.
            OSError: ``path`` cannot be written.
        """
        arrays = {"kernel": self.kernel}
        for i, key in enumerate(self.layer_kernels):
            arrays[f"layer_{i}"] = self.layer_kernels[key]
        if self.output_metric is not None:
            arrays["output_metric"] = self.output_metric
        meta = {
            "n_samples": self.n_samples,
            "n_samples2": self.n_samples2,
            "n_outputs": self.n_outputs,
            "reduction": self.reduction,
            "parameter_groups": {k: list(v) for k, v in self.parameter_groups.items()},
            "layer_names": list(self.layer_kernels),
            "paths": self.paths,
            "n_parameters": self.n_parameters,
        }
        _save(path, self.kind, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> EmpiricalNTK:
        """Read a result written by `save`; refuses other kinds and format versions,
        arrays that contradict the header, and files whose arrays would take more than
        ``max_bytes`` in memory (default: twice the file's size plus 64 MiB)."""
        meta, arrays = _load(path, cls.kind, max_bytes, _ntk_shapes)
        try:
            return cls(
                kernel=arrays["kernel"],
                layer_kernels={
                    name: arrays[f"layer_{i}"] for i, name in enumerate(meta["layer_names"])
                },
                n_samples=int(meta["n_samples"]),
                n_outputs=int(meta["n_outputs"]),
                reduction=str(meta["reduction"]),
                parameter_groups={k: tuple(v) for k, v in meta["parameter_groups"].items()},
                output_metric=arrays.get("output_metric"),
                paths=dict(meta["paths"]),
                n_parameters=int(meta["n_parameters"]),
                n_samples2=None if meta["n_samples2"] is None else int(meta["n_samples2"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"path: {path} is not a complete eNTK file: {exc}") from exc


@dataclass(frozen=True, eq=False, repr=False)
class NTKSpectrum(_Layout):
    """Top eigenpairs of a (reduced, metric-weighted) eNTK, eigenvalues descending.

    ``eigenvectors`` is (R, k) with R = N·C (flattened, row = n·C + c) or N; column i belongs
    to ``eigenvalues[i]``. ``method`` says how they were found. Returned by
    `entk_fast.entk_spectrum`, `entk_fast.entk_topk` and
    `EmpiricalNTK.spectrum`; ``len(spectrum)`` is k. `gaps` lists the spectral
    cliffs, `unflatten` reshapes eigenvectors to (N, C[, k]) (J. Lin, arXiv
    2510.00468: an eigenvector of the flattened eNTK is one feature's value on every
    (sample, output)), `save` / `load` write and read it as ``.npz``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> spec = ef.entk_spectrum(nn.Linear(2, 2, bias=False), x, dtype=torch.float64)
        >>> len(spec), spec.method, spec.eigenvalues.round(6)
        (4, 'dual', array([3., 3., 1., 1.]))
        >>> spec.eigenvectors.shape, spec.unflatten(spec.eigenvectors).shape
        ((6, 4), (3, 2, 4))
        >>> [(k, round(ratio, 6)) for k, ratio in spec.gaps(1)]  # λ_2 / λ_3
        [(2, 3.0)]
    """

    kind: ClassVar[str] = "entk-fast-spectrum"

    eigenvalues: np.ndarray
    """(k,) descending, of the computation's dtype."""
    eigenvectors: np.ndarray
    """(R, k) unit columns, R = N·C (row n·C + c) or N; column i belongs to eigenvalue i."""
    method: str
    """``"dense"``, ``"dual"`` or ``"matrix_free"``."""
    n_samples: int
    n_outputs: int
    reduction: str
    ridge: float = 0.0
    """Absolute ridge ε·mean(diag K) added to K's diagonal (and so to every eigenvalue)."""
    n_parameters: int = 0
    """P, the number of parameters differentiated."""
    output_metric: np.ndarray | None = None
    """The metric S (C, C) that weighted the outputs, or None."""
    info: dict[str, Any] = field(default_factory=dict)
    """Solver details: e.g. ``n_matvec``, ``tol``, ``rank``, ``solver``."""

    def __len__(self) -> int:
        return int(self.eigenvalues.shape[0])

    def _summary(self) -> list[tuple[str, str]]:
        values = self.eigenvalues
        top = ", ".join(f"{v:.4g}" for v in values[:5]) + (", …" if len(values) > 5 else "")
        rows = [
            ("eigenpairs", f"{len(self)} of a {self.eigenvectors.shape[0]}-row kernel"),
            ("method", self.method),
            ("reduction", self.reduction),
            ("top eigenvalues", top),
        ]
        if len(self) > 1:
            gaps = ", ".join(f"{k}: {r:.3g}" for k, r in self.gaps(3))
            rows.append(("largest cliffs", gaps))
        if self.ridge:
            rows.append(("ridge", f"{self.ridge:.3g}"))
        return rows

    def __repr__(self) -> str:
        return _repr("NTKSpectrum", self._summary())

    def _repr_html_(self) -> str:
        return _repr_html("NTKSpectrum", self._summary())

    def gaps(self, top: int = 5) -> list[tuple[int, float]]:
        """The ``top`` largest spectral cliffs: (k, λ_k / λ_{k+1}) with k counted from 1.

        Sorted by ratio, largest first. Eigenvalues are floored at ε·mean(λ) (ε = 1e-8,
        `RIDGE_EPSILON`) first, so round-off zeros give large but finite ratios; see
        `spectral_cliffs`. Empty for fewer than two eigenvalues or ``top`` < 1.

        Examples:
            >>> import numpy as np
            >>> from entk_fast import NTKSpectrum
            >>> spec = NTKSpectrum(
            ...     eigenvalues=np.array([4.0, 2.0, 1.0]), eigenvectors=np.eye(3),
            ...     method="dense", n_samples=3, n_outputs=1, reduction="trace")
            >>> spec.gaps(1)
            [(1, 2.0)]
        """
        if len(self) < 2 or int(top) < 1:
            return []
        cliffs = spectral_cliffs(self.eigenvalues, top=int(top))
        return [(c.index, c.ratio) for c in cliffs]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this result to ``path`` (``.npz``: arrays + JSON header), atomically.

        Raises:
            StorageError: the file system is full; the previous file is left as it was.
            OSError: ``path`` cannot be written.
        """
        arrays = {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors}
        if self.output_metric is not None:
            arrays["output_metric"] = self.output_metric
        meta = {
            "method": self.method,
            "n_samples": self.n_samples,
            "n_outputs": self.n_outputs,
            "reduction": self.reduction,
            "ridge": self.ridge,
            "n_parameters": self.n_parameters,
            "info": _jsonable(self.info),
        }
        _save(path, self.kind, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, max_bytes: int | None = None) -> NTKSpectrum:
        """Read a result written by `save`; refuses other kinds and format versions,
        arrays that contradict the header, and files whose arrays would take more than
        ``max_bytes`` in memory (default: twice the file's size plus 64 MiB)."""
        meta, arrays = _load(path, cls.kind, max_bytes, _spectrum_shapes)
        values, vectors = arrays["eigenvalues"], arrays["eigenvectors"]
        if vectors.shape[1] != values.shape[0] or values.shape[0] > vectors.shape[0]:
            raise InvalidArgumentError(
                f"path: {path} holds {values.shape[0]} eigenvalues and eigenvectors of shape "
                f"{vectors.shape}: they do not belong together"
            )
        try:
            return cls(
                eigenvalues=arrays["eigenvalues"],
                eigenvectors=arrays["eigenvectors"],
                method=str(meta["method"]),
                n_samples=int(meta["n_samples"]),
                n_outputs=int(meta["n_outputs"]),
                reduction=str(meta["reduction"]),
                ridge=float(meta["ridge"]),
                n_parameters=int(meta["n_parameters"]),
                output_metric=arrays.get("output_metric"),
                info=dict(meta["info"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"path: {path} is not a complete spectrum file: {exc}"
            ) from exc


def _repr(name: str, rows: list[tuple[str, str]]) -> str:
    return f"{name}(" + ", ".join(f"{key}: {value}" for key, value in rows) + ")"


def _repr_html(name: str, rows: list[tuple[str, str]]) -> str:
    from html import escape

    body = "".join(
        f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>"
        f"{escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption style='text-align:left'><b>{name}</b></caption>{body}</table>"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _save(
    path: str | os.PathLike[str], kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    header = {
        "format": kind,
        "format_version": _FORMAT_VERSION,
        "entk_fast": __version__,
        **meta,
    }
    payload: dict[str, Any] = {**arrays, _META_KEY: np.array(json.dumps(header))}
    with atomic_open(path, "wb") as f:
        np.savez(f, **payload)


#: (shape with None for "any", allowed dtypes, required) of each array a header implies.
_Expected = dict[str, tuple[tuple[int | None, ...], tuple[np.dtype, ...], bool]]


def _load(
    path: str | os.PathLike[str],
    kind: str,
    max_bytes: int | None = None,
    expected: Any = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a saved result of ``kind``, checked before the arrays are
    read: each zip member's declared size and ``.npy`` header against ``max_bytes`` and the
    member's own size, then (``expected(meta)``) each array's shape and dtype against the
    JSON header."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = _npy_members(zf, path, max_bytes)
            meta = _read_meta(zf, members, path)
            _check_header(meta, kind, path)
            plan = _expected_arrays(expected, meta, members, path)
            arrays = {}
            for name in plan:
                with zf.open(members[name].info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidArgumentError(f"path: {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"path: {path} is a directory, not a saved result") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InvalidArgumentError):
            raise
        raise InvalidArgumentError(
            f"path: {path} is not a result saved by entk-fast ({exc})"
        ) from exc
    return meta, arrays


class _Member:
    """A ``.npy`` member of a saved result: its zip entry and its header, not its data."""

    def __init__(self, info: zipfile.ZipInfo, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.info = info
        self.shape = shape
        self.dtype = dtype


def _npy_members(
    zf: zipfile.ZipFile, path: str | os.PathLike[str], max_bytes: int | None
) -> dict[str, _Member]:
    """Every ``NAME.npy`` member's header, after checking the declared (uncompressed) sizes
    against the bound: nothing but the small headers is decompressed here."""
    infos = zf.infolist()
    if max_bytes is None:
        max_bytes = 2 * os.path.getsize(path) + _LOAD_SLACK_BYTES
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise InvalidArgumentError(
            f"path: {path} declares {declared} bytes of arrays once decompressed, more than "
            f"the {max_bytes} a load may allocate (max_bytes; entk-fast writes its arrays "
            "uncompressed, so a file of its own declares about its size)"
        )
    members: dict[str, _Member] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise InvalidArgumentError(
                f"path: {path} holds {info.filename!r}, which is no array of a saved result"
            )
        name = info.filename[: -len(".npy")]
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise InvalidArgumentError(f"path: {path}: {name} has .npy version {version}")
            offset = f.tell()
        if dtype.hasobject:
            raise InvalidArgumentError(f"path: {path}: {name} holds Python objects")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
        if nbytes != info.file_size - offset:
            raise InvalidArgumentError(
                f"path: {path}: the header of {name} declares {nbytes} bytes of data, its zip "
                f"entry {info.file_size - offset}"
            )
        members[name] = _Member(info, tuple(int(n) for n in shape), np.dtype(dtype))
    return members


def _read_meta(
    zf: zipfile.ZipFile, members: dict[str, _Member], path: str | os.PathLike[str]
) -> dict[str, Any]:
    member = members.get(_META_KEY)
    meta = None
    if member is not None and member.dtype.kind == "U" and member.shape == ():
        with zf.open(member.info) as f:
            raw = np.lib.format.read_array(f, allow_pickle=False)
        try:
            meta = json.loads(str(raw))
        except ValueError:
            meta = None
    if not isinstance(meta, dict) or "format" not in meta:
        raise InvalidArgumentError(f"path: {path} is not a result saved by entk-fast")
    return meta


def _check_header(meta: dict[str, Any], kind: str, path: str | os.PathLike[str]) -> None:
    if meta["format"] != kind:
        raise InvalidArgumentError(
            f"path: {path} holds a {meta['format']!r}, not a {kind!r} "
            f"(load it with the matching class)"
        )
    if meta.get("format_version") != _FORMAT_VERSION:
        raise InvalidArgumentError(
            f"path: {path} has format version {meta.get('format_version')!r}, written by "
            f"entk-fast {meta.get('entk_fast')}; this entk-fast {__version__} reads version "
            f"{_FORMAT_VERSION}"
        )


def _expected_arrays(
    expected: Any, meta: dict[str, Any], members: dict[str, _Member], path: Any
) -> list[str]:
    """The names of the arrays to read, after checking each against what the header
    implies (``expected(meta)``): no array missing, extra, or of another shape or dtype."""
    names = [name for name in members if name != _META_KEY]
    if expected is None:
        return names
    try:
        wanted: _Expected = expected(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"path: {path} has an incomplete header: {exc}") from exc
    extra = sorted(set(names) - set(wanted))
    if extra:
        raise InvalidArgumentError(f"path: {path} holds arrays its header does not name: {extra}")
    for name, (shape, dtypes, required) in wanted.items():
        member = members.get(name)
        if member is None:
            if required:
                raise InvalidArgumentError(f"path: {path} lacks the array {name!r}")
            continue
        fits = len(member.shape) == len(shape) and all(
            want is None or want == got for want, got in zip(shape, member.shape, strict=True)
        )
        if not fits:
            shown = tuple("k" if n is None else n for n in shape)
            raise InvalidArgumentError(
                f"path: {path}: array {name!r} has shape {member.shape}, its header implies {shown}"
            )
        if member.dtype not in dtypes:
            raise InvalidArgumentError(
                f"path: {path}: array {name!r} has dtype {member.dtype}, expected one of "
                f"{', '.join(map(str, dtypes))}"
            )
    return names


def _header_int(meta: dict[str, Any], key: str, minimum: int = 1) -> int:
    value = meta[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} = {value!r}, expected an integer ≥ {minimum}")
    return value


def _header_reduction(meta: dict[str, Any]) -> str:
    reduction = meta["reduction"]
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction = {reduction!r}, expected one of {tuple(REDUCTIONS)}")
    return str(reduction)


def _rows(meta: dict[str, Any], samples_key: str = "n_samples") -> int:
    n = _header_int(meta, samples_key)
    c = _header_int(meta, "n_outputs")
    return REDUCTIONS[_header_reduction(meta)].kernel_order(n, c)


def _ntk_shapes(meta: dict[str, Any]) -> _Expected:
    rows = _rows(meta)
    cols = rows if meta.get("n_samples2") is None else _rows(meta, "n_samples2")
    c = _header_int(meta, "n_outputs")
    layer_names = meta["layer_names"]
    if not isinstance(layer_names, list):
        raise TypeError(f"layer_names = {layer_names!r}, expected a list")
    out: _Expected = {"kernel": ((rows, cols), _FLOATS, True)}
    for i in range(len(layer_names)):
        out[f"layer_{i}"] = ((rows, cols), _FLOATS, True)
    out["output_metric"] = ((c, c), _METRIC_FLOATS, False)
    return out


def _spectrum_shapes(meta: dict[str, Any]) -> _Expected:
    rows = _rows(meta)
    c = _header_int(meta, "n_outputs")
    return {
        "eigenvalues": ((None,), _FLOATS, True),
        "eigenvectors": ((rows, None), _FLOATS, True),
        "output_metric": ((c, c), _METRIC_FLOATS, False),
    }


def spectrum_of_kernel(
    ntk: EmpiricalNTK,
    k: int | None,
    *,
    ridge: float = 0.0,
    tol: float | None = None,
    in_place: bool = False,
) -> NTKSpectrum:
    """Eigenpairs of a dense kernel: all (``k=None``, ``linalg.eigh``) or the top k.

    What `EmpiricalNTK.spectrum` and the dense path of `entk_fast.entk_spectrum`
    run.

    Args:
        ntk: a square kernel (N·C, N·C) or (N, N), float32 or float64.
        k: the number of eigenpairs in [1, order] (`linalg.eigh_topk
            <entk_fast.linalg.eigh_topk>`), or None for all (`linalg.eigh
            <entk_fast.linalg.eigh>`).
        ridge: ε ≥ 0; adds ε·mean(diag K) to the diagonal (reported as ``.ridge``).
        tol: the top-k solver's relative residual target (default: its own).
        in_place: add the ridge to ``ntk.kernel`` itself instead of a copy.

    Returns:
        An `NTKSpectrum` (``method="dense"``): eigenvalues (k,) descending and
        eigenvectors (order, k), of the kernel's dtype; ``info["solver"]`` is ``"eigh"`` or
        ``"eigh_topk"``.

    Raises:
        InvalidArgumentError: ``ntk`` is a cross kernel, k is not in [1, order], or ridge < 0.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> import entk_fast as ef
        >>> from entk_fast.results import spectrum_of_kernel
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> ntk = ef.empirical_ntk(nn.Linear(2, 2), x, reduction="trace", dtype=torch.float64)
        >>> spec = spectrum_of_kernel(ntk, 2)
        >>> spec.eigenvectors.shape, spec.info["solver"]
        ((3, 2), 'eigh_topk')
    """
    if ntk.is_cross:
        raise InvalidArgumentError(
            f"a cross kernel K(X, X2) {ntk.shape} has no eigen-decomposition; compute the square "
            "kernel of one input set for a spectrum"
        )
    size = ntk.kernel.shape[0]
    kk = check_k(k, size, required=False)
    eps = check_ridge(ridge)
    kernel = ntk.kernel
    shift = 0.0
    if eps > 0:
        shift = eps * float(np.trace(kernel)) / size
        if not in_place:
            kernel = kernel.copy()
        kernel[np.diag_indices(size)] += shift
    info: dict[str, Any] = {"ridge_relative": eps}
    if kk is None or kk == size:
        values, vectors = linalg.eigh(kernel)
        info["solver"] = "eigh"
    else:
        values, vectors, details = linalg.eigh_topk(kernel, kk, tol=tol, return_info=True)
        info["solver"] = "eigh_topk"
        info.update(details)
    return NTKSpectrum(
        eigenvalues=values,
        eigenvectors=vectors,
        method="dense",
        n_samples=ntk.n_samples,
        n_outputs=ntk.n_outputs,
        reduction=ntk.reduction,
        ridge=shift,
        n_parameters=ntk.n_parameters,
        output_metric=ntk.output_metric,
        info=info,
    )
