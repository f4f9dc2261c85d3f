"""The result types: ``EmpiricalNTK`` (a kernel) and ``NTKSpectrum`` (its top eigenpairs).

Both know the row layout of flattened kernels (row = n·C + c, sample-major; J. Lin, arXiv
2510.00468, the flattened eNTK), reshape eigenvectors to (N, C) and back, and save to / load
from a numpy ``.npz`` file holding the arrays and a JSON header (what the result is, how it
was computed, the format and package versions). Writes are atomic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from . import linalg
from ._io import atomic_open
from ._validate import check_k, check_ridge
from ._version import __version__
from .errors import InvalidArgumentError

__all__ = [
    "RIDGE_EPSILON",
    "EmpiricalNTK",
    "NTKSpectrum",
    "SpectralCliff",
    "spectral_cliffs",
    "spectrum_of_kernel",
]

#: Relative ridge ε (arXiv 2510.00468): eigenvalues are floored at ε · mean(diag K) before
#: spectral ratios are taken, so round-off zeros give large but finite ratios.
RIDGE_EPSILON = 1e-8

_FORMAT_VERSION = 1
_META_KEY = "__entk_fast_meta__"


@dataclass(frozen=True)
class SpectralCliff:
    """A gap after the ``index``-th eigenvalue (counted from 1): λ_index / λ_{index+1}."""

    index: int
    ratio: float
    before: float
    after: float


def spectral_cliffs(
    values: Any, *, top: int = 3, mean_diagonal: float | None = None
) -> list[SpectralCliff]:
    """The ``top`` largest ratios λ_k / λ_{k+1} of a descending spectrum, largest first.

    Args:
        values: (n,) eigenvalues in descending order (a kernel's, so ≥ 0 up to round-off).
        top: how many cliffs to report.
        mean_diagonal: mean(diag K) = trace / n, which sets the floor ε·mean(diag K) applied to
            eigenvalues before taking ratios (ε = RIDGE_EPSILON), so round-off zeros do not
            produce infinite ratios. Default: the mean of ``values`` (exact for a full spectrum).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise InvalidArgumentError(
            f"values: expected a 1-D spectrum with at least 2 eigenvalues, got shape {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise InvalidArgumentError("values: expected finite eigenvalues")
    if np.any(np.diff(v) > 1e-12 * max(abs(v[0]), 1e-300)):
        raise InvalidArgumentError("values: expected eigenvalues in descending order")
    if top < 1:
        raise InvalidArgumentError(f"top: expected an integer ≥ 1, got {top}")
    scale = float(np.mean(v)) if mean_diagonal is None else float(mean_diagonal)
    floor = RIDGE_EPSILON * max(scale, np.finfo(np.float64).tiny)
    clipped = np.maximum(v, floor)
    ratios = clipped[:-1] / clipped[1:]
    order = np.argsort(-ratios, kind="stable")[:top]
    return [
        SpectralCliff(
            index=int(i) + 1, ratio=float(ratios[i]), before=float(v[i]), after=float(v[i + 1])
        )
        for i in order
    ]


class _Layout:
    """Reshaping of a result's rows: (N·C[, k]) <-> (N, C[, k]) for flattened kernels."""

    n_samples: int
    n_outputs: int
    reduction: str

    def _check_flattened(self) -> None:
        if self.reduction != "flattened":
            raise InvalidArgumentError(
                f"only a flattened kernel has one row per (sample, output); this one is "
                f"{self.reduction!r} (N × N), whose eigenvectors are already indexed by sample"
            )

    def unflatten(self, v: Any) -> np.ndarray:
        """Eigenvector(s) of a flattened kernel as (N, C) or (N, C, k); [n, c] = row n·C + c."""
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
        """(N, C[, k]) -> (N·C[, k]), the inverse of :meth:`unflatten`."""
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
    ``kernel``.
    """

    kind: ClassVar[str] = "entk-fast-ntk"

    kernel: np.ndarray
    layer_kernels: dict[str, np.ndarray]
    n_samples: int
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
    n_samples2: int | None = None
    """N2 for a cross kernel K(X, X2); None for the square kernel K(X, X)."""

    @property
    def shape(self) -> tuple[int, ...]:
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
        """Eigenpairs (descending) of this kernel; see :func:`entk_fast.entk_spectrum`."""
        return spectrum_of_kernel(self, k, ridge=ridge)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this result to ``path`` (``.npz``: arrays + JSON header), atomically."""
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
    def load(cls, path: str | os.PathLike[str]) -> EmpiricalNTK:
        """Read a result written by :meth:`save`; refuses other kinds and format versions."""
        meta, arrays = _load(path, cls.kind)
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
    to ``eigenvalues[i]``. ``method`` says how they were found.
    """

    kind: ClassVar[str] = "entk-fast-spectrum"

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    method: str
    """``"dense"``, ``"dual"`` or ``"matrix_free"``."""
    n_samples: int
    n_outputs: int
    reduction: str
    ridge: float = 0.0
    """Absolute ridge ε·mean(diag K) added to K's diagonal (and so to every eigenvalue)."""
    n_parameters: int = 0
    output_metric: np.ndarray | None = None
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
        :data:`RIDGE_EPSILON`) first, so round-off zeros give large but finite ratios; see
        :func:`spectral_cliffs`.
        """
        if len(self) < 2 or int(top) < 1:
            return []
        cliffs = spectral_cliffs(self.eigenvalues, top=int(top))
        return [(c.index, c.ratio) for c in cliffs]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this result to ``path`` (``.npz``: arrays + JSON header), atomically."""
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
    def load(cls, path: str | os.PathLike[str]) -> NTKSpectrum:
        """Read a result written by :meth:`save`; refuses other kinds and format versions."""
        meta, arrays = _load(path, cls.kind)
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


def _load(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InvalidArgumentError(f"path: {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"path: {path} is a directory, not a saved result") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidArgumentError(
            f"path: {path} is not a result saved by entk-fast ({exc})"
        ) from exc
    raw = arrays.pop(_META_KEY, None)
    try:
        meta = json.loads(str(raw)) if raw is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or "format" not in meta:
        raise InvalidArgumentError(f"path: {path} is not a result saved by entk-fast")
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
    return meta, arrays


def spectrum_of_kernel(
    ntk: EmpiricalNTK,
    k: int | None,
    *,
    ridge: float = 0.0,
    tol: float | None = None,
    in_place: bool = False,
) -> NTKSpectrum:
    """Eigenpairs of a dense kernel: all (``k=None``, ``linalg.eigh``) or the top k.

    ``ridge`` ε adds ε·mean(diag K) to the diagonal, on a copy unless ``in_place``.
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
