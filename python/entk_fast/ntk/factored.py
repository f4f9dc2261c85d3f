"""K V from the structured layers' factors: the matrix-free path where layers qualify.

A structured layer (``sources.layers``) applied at T positions has the per-sample Jacobian
Σ_t g_nrt a_ntᵀ (row r of R J_n), so its part of a block product is two contractions with
factors gathered once per solve, each a matrix product:

    Mᵀ v:  W = Σ_{n,t} (Σ_r v_nr g_nrt) a_ntᵀ        (the weight-shaped pullback, Q × D)
    M W:   (K v)_nr = scale · Σ_t ⟨g_nrt, W a_nt⟩

with a_nt the layer's input (an embedding's one-hot index, a bias's constant 1) and g_nrt its
output cotangent (J. Lin, arXiv 2510.00468, the cheap exact paths). No autograd runs during
the solve. Two exact compressions of the cotangent side make the products cheaper; only the
inner products ⟨g_nrt, g_n'r't'⟩ enter K, so any factor with the same Gram will do:

* ``trace`` sums over the outputs c: Σ_c ⟨g_nct, g_n'ct'⟩ = Σ_k Σ_c G_k[(n,t), c] G_k[(n',t'), c]
  per output unit k of the layer. Each unit's (N·T × C) matrix G_k has its own rank r_k ≤ C
  (1 when only elementwise operations lie between the layer and a linear read-out, as in the
  paper's MLP), so G_k G_kᵀ = L_k L_kᵀ with L_k = G_k V_k over its non-zero eigen-directions,
  and a sample's cotangent becomes one row of width Σ_k r_k instead of C rows of width d_out.
* Any reduction: the cotangent rows (N·R·T × Q) keep only their row space's directions,
  G V over the Gram's non-zero eigenvalues, when that is narrower.

Eigenvalues at most 2e-13 (float64 problems) or 1.4e-10 (float32) of their largest are
dropped, computed in float64 (the Grams accumulated over chunks of rows): the kernel changes
by at most C times that relative amount, below the products' own round-off. Inputs that are
mostly zeros (one-hot features, an embedding's indices) multiply as sparse matrices.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import LinAlgError
from .checks import all_finite
from .layers import StructuredLayer
from .plan import StructuredPass
from .problem import Problem
from .sources.cotangents import gather

__all__ = ["FactoredOperator", "compress_columns", "compress_trace", "factor_bytes"]

#: Inputs with at most this fraction of non-zeros multiply as a sparse matrix.
_SPARSE_DENSITY = 0.1
#: Column compression forms a Q × Q Gram and its eigendecomposition: only up to this width.
_MAX_COMPRESSED_WIDTH = 2048
#: The per-unit trace compression holds d_out Grams of C × C float64 values: up to this many.
_MAX_UNIT_GRAM_BYTES = 64 * 2**20
#: The compressions work through the cotangent rows in chunks of about this many bytes.
_CHUNK_BYTES = 64 * 2**20


def _drop_tolerance(problem: Problem) -> float:
    """Relative eigenvalue (a squared singular value) below which a compression drops a
    direction: above the float64 Gram's own round-off and the square of the problem's
    precision (a unit of rank 1 in exact arithmetic shows eps² noise), and far below its
    round-off, so the kernel changes by at most C times this, relatively."""
    eps = float(torch.finfo(problem.dtype).eps)
    return max(1e3 * float(torch.finfo(torch.float64).eps), 1e4 * eps * eps)


def _row_chunks(rows: int, row_bytes: int) -> list[slice]:
    """Slices of ``rows`` rows whose float64 transients (``row_bytes`` each) stay bounded."""
    step = max(1, _CHUNK_BYTES // max(1, row_bytes))
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


def compress_trace(cot: Tensor, rtol: float) -> Tensor:
    """Cotangents (N, C, T, d) of a traced kernel as (N, 1, T, Q) rows with the same
    Σ_c ⟨g_nct, g_n'ct'⟩, Q = Σ_k r_k ≤ C·d (per-unit compression; module docstring).

    Works through the rows in chunks: its float64 transients stay near ``_CHUNK_BYTES``."""
    n, c, t, d = cot.shape
    if c == 1 or d * c * c * 8 > _MAX_UNIT_GRAM_BYTES:
        return cot.permute(0, 2, 1, 3).reshape(n, 1, t, c * d)

    def units(at: slice) -> Tensor:  # G_k for samples `at`: (d, m·T, C), float64
        part = cot[at].permute(3, 0, 2, 1).to(torch.float64)
        return part.reshape(d, -1, c)

    parts = _row_chunks(n, t * c * d * 8 * 3)
    gram = torch.zeros((d, c, c), dtype=torch.float64, device=cot.device)
    for at in parts:
        g = units(at)
        gram += torch.bmm(g.transpose(1, 2), g)
    values, vectors = torch.linalg.eigh(gram)
    keep = values > rtol * values[:, -1:].clamp_min(0.0)  # (d, C): unit k's kept directions
    width = int(keep.sum())
    if width == 0:  # every cotangent is zero: the layer's kernel is 0
        return cot.new_zeros((n, 1, t, 1))
    out = cot.new_empty((n, t, width))
    for at in parts:
        rows = torch.bmm(units(at), vectors).permute(1, 0, 2)  # (m·T, d, C)
        out[at] = rows[:, keep].reshape(-1, t, width).to(cot.dtype)
    return out.unsqueeze(1)


def compress_columns(cot: Tensor, rtol: float) -> Tensor:
    """Cotangents (N, R, T, Q) projected onto their rows' span: (N, R, T, Q') with the same
    inner products, when that is narrower than Q (and Q is at most a few thousand)."""
    q = cot.shape[-1]
    if q > _MAX_COMPRESSED_WIDTH or q <= 1:
        return cot
    rows = cot.reshape(-1, q)
    parts = _row_chunks(rows.shape[0], q * 8 * 2)
    gram = torch.zeros((q, q), dtype=torch.float64, device=cot.device)
    for at in parts:
        part = rows[at].to(torch.float64)
        gram += part.T @ part
    values, vectors = torch.linalg.eigh(gram)
    keep = values > rtol * values[-1].clamp_min(0.0)
    width = int(keep.sum())
    if width == 0:
        return cot.new_zeros((*cot.shape[:-1], 1))
    if width > 0.8 * q:  # not worth a second layout
        return cot
    basis = vectors[:, keep]
    out = cot.new_empty((rows.shape[0], width))
    for at in parts:
        out[at] = (rows[at].to(torch.float64) @ basis).to(cot.dtype)
    return out.reshape(*cot.shape[:-1], width)


@dataclass
class _Factors:
    """One layer's factors: inputs (N·T, D) sample-major (dense and / or sparse CSR, with
    the transpose for pullbacks) and cotangents (N, R, T, Q)."""

    path: str
    dense: Tensor | None
    sparse: Tensor | None
    sparse_t: Tensor | None
    cot: Tensor

    @property
    def width(self) -> int:
        """D, the input side's width."""
        inputs = self.dense if self.dense is not None else self.sparse
        assert inputs is not None
        return int(inputs.shape[1])

    def nbytes(self) -> int:
        total = self.cot.numel() * self.cot.element_size()
        if self.dense is not None:
            total += self.dense.numel() * self.dense.element_size()
        for s in (self.sparse, self.sparse_t):
            if s is not None:
                total += 3 * s.values().numel() * 8
        return total


def _layer_factors(layer: StructuredLayer, act: Tensor, cot: Tensor, problem: Problem) -> _Factors:
    """A layer's factors from its inputs ``act`` ((N, T, d_in), or indices (N, T)) and its
    compressed cotangents: a Linear's inputs (with a ones column for a selected bias; only
    ones when the weight is not selected), sparse when mostly zeros; an embedding's one-hot
    rows (zero on the padding index), sparse, built from the indices."""
    rows = act.shape[0] * layer.positions
    if layer.rule.kind == "embedding":
        idx = act.reshape(rows).long()
        at = torch.arange(rows, device=idx.device)
        ones = torch.ones(rows, dtype=problem.dtype, device=idx.device)
        if layer.shape.padding_idx is not None:
            ones[idx == layer.shape.padding_idx] = 0
        table = layer.shape.table_rows
        with warnings.catch_warnings():  # "sparse CSR support is in beta": we use mm only
            warnings.simplefilter("ignore", UserWarning)
            crow = torch.arange(rows + 1, device=idx.device)
            sparse = torch.sparse_csr_tensor(crow, idx, ones, (rows, table))
            coo = torch.sparse_coo_tensor(torch.stack([idx, at]), ones, (table, rows))
            sparse_t = coo.coalesce().to_sparse_csr()
        return _Factors(layer.path, None, sparse, sparse_t, cot)
    ones = torch.ones((rows, 1), dtype=problem.dtype, device=problem.device)
    if layer.weight is None:
        inputs = ones
    else:
        inputs = act.reshape(rows, layer.in_features)
        inputs = torch.cat([inputs, ones], dim=1) if layer.bias is not None else inputs
    density = float(torch.count_nonzero(inputs)) / max(1, inputs.numel())
    if density > _SPARSE_DENSITY:
        return _Factors(layer.path, inputs, None, None, cot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sparse = inputs.to_sparse_csr()
        sparse_t = inputs.T.contiguous().to_sparse_csr()
    # the dense copy only for the narrow push (one row a sample, cotangents wider than D)
    narrow = cot.shape[1] == 1 and cot.shape[-1] > inputs.shape[1]
    return _Factors(layer.path, inputs if narrow else None, sparse, sparse_t, cot)


def factor_bytes(problem: Problem, layers: Sequence[StructuredLayer]) -> int:
    """Memory the gathered factors of ``layers`` take: inputs, cotangents and, while it is
    made, a compressed copy of them (at most as large), bytes."""
    n, rows, it = problem.n_samples, problem.rows_per_sample, problem.itemsize
    total = 0
    for layer in layers:
        inputs = n * layer.positions
        if layer.rule.kind == "embedding":  # two sparse one-hot matrices: index, value
            inputs *= 2 * (16 + it)
        else:  # dense inputs and a transient copy (a bias's ones column, a sparse form)
            inputs *= 2 * it * (layer.in_features + 1)
        cot = n * rows * layer.positions * layer.out_features
        total += inputs + 2 * it * cot
    return total


class FactoredOperator:
    """K V over the selected parameters of ``layers`` (verified structured layers), from
    factors gathered once: ``chunk`` samples per gathering forward and backward, up to
    ``transient`` bytes of intermediates per block product (fewer columns per call if
    needed)."""

    def __init__(
        self,
        problem: Problem,
        layers: Sequence[StructuredLayer],
        chunk: int,
        transient: int,
    ) -> None:
        self.problem = problem
        self.layers = list(layers)
        self.transient = max(1, int(transient))
        rows = problem.rows_per_sample
        sweep = StructuredPass(
            tuple(self.layers), max(1, int(chunk)), problem.n_samples, rows, rows
        )
        with torch.no_grad():
            acts, cots = gather(problem, sweep, (0, problem.n_samples), (0, rows), check=True)
        rtol = _drop_tolerance(problem)
        self.factors: list[_Factors] = []
        for layer in self.layers:
            cot = cots.pop(layer.path)
            if problem.reduction.rows_concatenated:
                cot = compress_trace(cot, rtol)
            cot = compress_columns(cot, rtol).contiguous()
            self.factors.append(_layer_factors(layer, acts.pop(layer.path), cot, problem))
        self.n_matvec = 0

    @property
    def nbytes(self) -> int:
        """The factors' memory, bytes."""
        return sum(f.nbytes() for f in self.factors)

    @property
    def widths(self) -> dict[str, tuple[int, int]]:
        """Per layer, (D, Q): the input and the (compressed) cotangent widths."""
        return {f.path: (f.width, int(f.cot.shape[-1])) for f in self.factors}

    def matmat(self, block: np.ndarray) -> np.ndarray:
        """K V for V (R, b) (any float dtype); returns (R, b) in the problem's dtype."""
        problem = self.problem
        n, per = problem.n_samples, problem.kernel_rows_per_sample
        vectors = torch.as_tensor(np.ascontiguousarray(np.asarray(block).T), device=problem.device)
        vectors = vectors.to(problem.dtype).reshape(-1, n, per)  # (b, N, R)
        out = torch.zeros_like(vectors)
        with torch.no_grad():
            for factors in self.factors:
                columns = self._columns(factors)
                for start in range(0, vectors.shape[0], columns):
                    part = vectors[start : start + columns]
                    out[start : start + columns] += _product(factors, part)
        out *= problem.kernel_scale
        if not all_finite(out):  # the factors are finite (gather checks them): an overflow
            raise LinAlgError(
                "a kernel-vector product overflowed although every sample's factors are "
                "finite; rescale the model's outputs"
            )
        self.n_matvec += vectors.shape[0]
        result = out.reshape(vectors.shape[0], -1).T.cpu().numpy()
        return np.ascontiguousarray(result, dtype=problem.numpy_dtype)

    def _columns(self, factors: _Factors) -> int:
        n, _, t, q = factors.cot.shape
        d = factors.width
        # per column: the (N·T, Q) and (N·T, D) intermediates and two copies of W (Q × D)
        per_column = (n * t * (2 * q + 2 * d) + 2 * q * d) * self.problem.itemsize
        return max(1, self.transient // max(1, per_column))


def _mm_sparse(matrix: Tensor, dense: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return matrix @ dense


def _product(f: _Factors, v: Tensor) -> Tensor:
    """One layer's M (Mᵀ V) for vectors (b, N, R) -> (b, N, R), unscaled.

    The contractions run in the order that keeps the intermediates narrow: through the
    inputs' width D when one row per sample (R = 1) meets cotangents wider than D, else
    through the cotangents' width Q.
    """
    b, n, r = v.shape
    _, _, t, q = f.cot.shape
    d = f.width
    narrow = r == 1 and d < q and f.dense is not None
    # pullback W (b, Q, D)
    if narrow and f.sparse is None:
        assert f.dense is not None
        # X[(n,t), (b,d)] = v_bn a_ntd; W = Xᵀ G
        x = f.dense.reshape(n, t, 1, d) * v[:, :, 0].T.reshape(n, 1, b, 1)
        g = f.cot.reshape(n * t, q)
        w = (x.reshape(n * t, b * d).T @ g).reshape(b, d, q).transpose(1, 2)
    else:
        # Z[(n,t), (b,q)] = Σ_r v_bnr g_nrtq; W = Aᵀ Z
        z = torch.bmm(v.permute(1, 0, 2), f.cot.reshape(n, r, t * q))  # (N, b, T·Q)
        z = z.reshape(n, b, t, q).permute(0, 2, 1, 3).reshape(n * t, b * q)
        if f.sparse_t is not None:
            w_t = _mm_sparse(f.sparse_t, z)
        else:
            assert f.dense is not None
            w_t = f.dense.T @ z
        w = w_t.reshape(d, b, q).permute(1, 2, 0)  # (b, Q, D)
    # push: (K v)_bnr = Σ_t ⟨g_nrt, W_b a_nt⟩
    if narrow:
        assert f.dense is not None
        # V[(n,t), (b,d)] = Σ_q g_ntq W_bqd; then Σ_d a_ntd V
        g = f.cot.reshape(n * t, q)
        pushed = g @ w.permute(1, 0, 2).reshape(q, b * d)  # (N·T, b·D)
        y = (pushed.reshape(n * t, b, d) * f.dense.reshape(n * t, 1, d)).sum(-1)
        return y.reshape(n, t, b).sum(1).T.reshape(b, n, 1)
    w_flat = w.permute(2, 0, 1).reshape(d, b * q)
    if f.sparse is not None:
        u = _mm_sparse(f.sparse, w_flat)
    else:
        assert f.dense is not None
        u = f.dense @ w_flat
    u = u.reshape(n, t, b, q).permute(0, 1, 3, 2).reshape(n, t * q, b)
    y = torch.bmm(f.cot.reshape(n, r, t * q), u)  # (N, R, b)
    return y.permute(2, 0, 1)
