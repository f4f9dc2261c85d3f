"""The registry of layers with an exact structured eNTK block: ``LAYER_RULES[type(module)]``.

For y_t = W a_t (+ b) applied at T positions t of each sample (T = 1: once per sample; a
sequence model applies its projections at every token), the layer's per-sample Jacobian is
Σ_t g_t a_tᵀ, so its block of the eNTK is

    K[(n, c), (n', c')] = Σ_{t, t'} ⟨a_nt, a_n't'⟩ · ⟨g_nct, g_n'c't'⟩
                          (+ Σ_{t, t'} ⟨g_nct, g_n'c't'⟩ for the bias),

with a_t the layer's input at position t and g_nct = ∂(R f)_c(x_n)/∂y_nt its output cotangent
there (J. Lin, arXiv 2510.00468, the cheap exact paths; nngeometry's per-layer Jacobian
factories use the same identity for T = 1). A rule says, for one layer type, when a call
qualifies, what a sample's input is (a vector, or an index for an embedding, per position),
the input Gram ⟨a_t, a'_t'⟩ of one position pair, and the parameter gradient the formula
implies (a safety check). A new fast-path layer is one rule here.

Positions are worth it while the T(T + 1)/2 position pairs cost less than the layer's
Jacobian: a Linear qualifies at T > 1 positions when T(T + 1)/2 · (d_in + d_out) ≤ d_in · d_out
(the Gram work per pair against the Jacobian's width), an Embedding when T ≤ its number of
rows (pairs whose index Gram is zero are skipped); longer sequences take the general path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .. import linalg
from . import attention

__all__ = [
    "LAYER_RULES",
    "MODULE_RULES",
    "AttentionRule",
    "LayerRule",
    "LayerShape",
    "ModuleRule",
    "Site",
    "StructuredLayer",
    "position_pairs",
]


@dataclass(frozen=True)
class LayerShape:
    """A qualifying call: d_in (1 for an index), d_out, the positions T per sample, and the
    rule's options."""

    in_features: int
    out_features: int
    padding_idx: int | None = None
    positions: int = 1
    table_rows: int = 0
    """An embedding's number of rows (0 for other layers)."""


def position_pairs(positions: int) -> int:
    """Position pairs (t ≤ t') of a layer applied at ``positions`` positions: T(T + 1)/2."""
    return positions * (positions + 1) // 2


def _positions(in_shape: tuple[int, ...], out_shape: tuple[int, ...], lead: int) -> int | None:
    """T when one sample's call has input (*lead_dims, ...) and output (*lead_dims, d_out) over
    the same leading (position) dims (``lead`` = how many input dims are not positions)."""
    dims = in_shape[: len(in_shape) - lead] if lead else in_shape
    if len(out_shape) != len(dims) + 1 or tuple(out_shape[:-1]) != tuple(dims):
        return None
    return math.prod(dims)


class LayerRule(Protocol):
    """How one layer type's eNTK block is computed from its inputs and output cotangents."""

    kind: str
    has_bias: bool

    def shape(
        self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> LayerShape | None:
        """The call's shape if one sample's call (batch dim stripped) qualifies, else None."""
        ...

    def input_buffer(
        self, n: int, shape: LayerShape, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Storage for n samples' inputs, (n, T, d_in) or indices (n, T)."""
        ...

    def input_gram(
        self, shape: LayerShape, act: Tensor, other: Tensor | None, dtype: np.dtype
    ) -> np.ndarray:
        """⟨a_n, a_n'⟩ between two sample sets at one position each (one: its Gram), (n, n');
        ``act`` is (n, d_in) or indices (n,)."""
        ...

    def input_factor(self, shape: LayerShape, act: Tensor, dtype: np.dtype) -> np.ndarray | None:
        """Rows F (m, D) with ⟨F_i, F_j⟩ = the input Gram of ``act`` (m inputs), when narrow
        enough that the Gram is best formed tile by tile from them; else None."""
        ...

    def factor_width(self, shape: LayerShape) -> int | None:
        """D, the width of `input_factor`'s rows, or None when it gives none (the input
        Gram is formed instead): what the memory plan counts."""
        ...

    def weight_grad(
        self, shape: LayerShape, act: Tensor, cot: Tensor, weight_shape: torch.Size
    ) -> Tensor:
        """Σ_i g_i a_iᵀ in the weight's layout, for cotangents ``cot`` (m, d_out) and the
        matching inputs ``act`` (m = samples × positions)."""
        ...


class LinearRule:
    """``nn.Linear`` on T vectors per sample (input (..., d_in), T = the product of the
    leading dims)."""

    kind = "linear"
    has_bias = True

    def shape(
        self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> LayerShape | None:
        assert isinstance(module, nn.Linear)
        d_in, d_out = module.in_features, module.out_features
        if len(in_shape) < 1 or in_shape[-1] != d_in or not out_shape or out_shape[-1] != d_out:
            return None
        t = _positions(in_shape, out_shape, 1)
        if t is None or t < 1:
            return None
        if t > 1 and position_pairs(t) * (d_in + d_out) > d_in * d_out:
            return None  # cheaper on the general path
        return LayerShape(d_in, d_out, positions=t)

    def input_buffer(
        self, n: int, shape: LayerShape, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        return torch.empty((n, shape.positions, shape.in_features), dtype=dtype, device=device)

    def input_gram(
        self, shape: LayerShape, act: Tensor, other: Tensor | None, dtype: np.dtype
    ) -> np.ndarray:
        a = act.detach().cpu().numpy()
        return linalg.gram(a) if other is None else linalg.gram_cross(a, other.cpu().numpy())

    def input_factor(self, shape: LayerShape, act: Tensor, dtype: np.dtype) -> np.ndarray | None:
        return act.detach().cpu().numpy().astype(dtype, copy=False)

    def factor_width(self, shape: LayerShape) -> int | None:
        return shape.in_features

    def weight_grad(
        self, shape: LayerShape, act: Tensor, cot: Tensor, weight_shape: torch.Size
    ) -> Tensor:
        return cot.T @ act.reshape(cot.shape[0], shape.in_features)


_ONE_HOT_ROWS = 256
"""Embeddings with at most this many rows give their inputs as one-hot factor rows."""


class EmbeddingRule:
    """``nn.Embedding`` on T indices per sample: the one-hot case, ⟨a_nt, a_n't'⟩ =
    [i_nt = i_n't'] (0 on the padding index)."""

    kind = "embedding"
    has_bias = False

    def shape(
        self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> LayerShape | None:
        assert isinstance(module, nn.Embedding)
        if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
            return None
        if not out_shape or out_shape[-1] != module.embedding_dim:
            return None
        t = _positions(in_shape, out_shape, 0)
        if t is None or t < 1 or (t > 1 and t > module.num_embeddings):
            return None
        return LayerShape(
            1,
            module.embedding_dim,
            module.padding_idx,
            positions=t,
            table_rows=module.num_embeddings,
        )

    def input_buffer(
        self, n: int, shape: LayerShape, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        return torch.empty((n, shape.positions), dtype=torch.long, device=device)

    def input_gram(
        self, shape: LayerShape, act: Tensor, other: Tensor | None, dtype: np.dtype
    ) -> np.ndarray:
        idx = act.cpu().numpy()
        jdx = idx if other is None else other.cpu().numpy()
        same = (idx[:, None] == jdx[None, :]).astype(dtype)
        if shape.padding_idx is not None:
            same *= (idx != shape.padding_idx).astype(dtype)[:, None]
            same *= (jdx != shape.padding_idx).astype(dtype)[None, :]
        return same

    def input_factor(self, shape: LayerShape, act: Tensor, dtype: np.dtype) -> np.ndarray | None:
        if shape.table_rows > _ONE_HOT_ROWS:
            return None  # the index Gram, formed by comparison, is cheaper
        idx = act.cpu().numpy().reshape(-1)
        onehot = np.zeros((idx.shape[0], shape.table_rows), dtype=dtype)
        onehot[np.arange(idx.shape[0]), idx] = 1
        if shape.padding_idx is not None:
            onehot[:, shape.padding_idx] = 0
        return onehot

    def factor_width(self, shape: LayerShape) -> int | None:
        return shape.table_rows if shape.table_rows <= _ONE_HOT_ROWS else None

    def weight_grad(
        self, shape: LayerShape, act: Tensor, cot: Tensor, weight_shape: torch.Size
    ) -> Tensor:
        idx = act.reshape(cot.shape[0]).long()
        grad = torch.zeros(weight_shape, dtype=cot.dtype, device=cot.device).index_add_(0, idx, cot)
        if shape.padding_idx is not None:
            grad[shape.padding_idx] = 0
        return grad


#: Exact module type -> its rule (subclasses may override forward, so they do not qualify).
LAYER_RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LinearRule(),
    nn.Embedding: EmbeddingRule(),
}


@dataclass(frozen=True)
class Site:
    """A Linear projection applied inside a module that a module rule covers.

    Attributes:
        name: the site's name within the module (``"in_proj"``).
        weight: the module-local name of its weight (``"in_proj_weight"``).
        bias: the module-local name of its bias.
        shape: its input and output widths and the T positions it is applied at.
    """

    name: str
    weight: str
    bias: str
    shape: LayerShape


class ModuleRule(Protocol):
    """A module whose forward applies Linear projections that no hook reaches (the projections
    of ``nn.MultiheadAttention`` run inside ``F.multi_head_attention_forward``): the rule says
    which sites qualify and recomputes the module's output with them exposed."""

    def qualifies(self, module: nn.Module) -> bool:
        """Whether the rule covers this module's configuration."""
        ...

    def sites(self, module: nn.Module, in_shape: tuple[int, ...], batch: int) -> list[Site]:
        """The sites worth the structured path for an input of ``in_shape`` (batch included)."""
        ...

    def forward(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        on_site: attention.OnSite,
        path: str,
    ) -> Any:
        """The module's output on ``(args, kwargs)`` with each site's output passed through
        ``on_site``; raises ``StructuredFallback`` where the recomputation does not apply."""
        ...


class AttentionRule:
    """Self-attention in ``nn.MultiheadAttention``: the packed input projection (3d × d) and
    the output projection (d × d), each a Linear at the T positions of a sample."""

    def qualifies(self, module: nn.Module) -> bool:
        return attention.qualifies(module)

    def sites(self, module: nn.Module, in_shape: tuple[int, ...], batch: int) -> list[Site]:
        assert isinstance(module, nn.MultiheadAttention)
        if len(in_shape) != 3:
            return []
        positions = in_shape[1] if module.batch_first else in_shape[0]
        if (in_shape[0] if module.batch_first else in_shape[1]) != batch:
            return []
        d = module.embed_dim
        found = []
        for name, d_out in (("in_proj", 3 * d), ("out_proj", d)):
            if position_pairs(positions) * (d + d_out) > d * d_out:
                continue  # cheaper on the general path
            weight, bias = attention.site_names(name)
            found.append(Site(name, weight, bias, LayerShape(d, d_out, positions=positions)))
        return found

    def forward(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        on_site: attention.OnSite,
        path: str,
    ) -> Any:
        assert isinstance(module, nn.MultiheadAttention)
        return attention.attention_forward(module, args, kwargs, on_site, path)


#: Exact module type -> the rule of the Linear projections inside it.
MODULE_RULES: dict[type[nn.Module], ModuleRule] = {
    nn.MultiheadAttention: AttentionRule(),
}


@dataclass(frozen=True)
class StructuredLayer:
    """A layer call whose eNTK block is computed from two Grams (its rule says how)."""

    path: str
    rule: LayerRule
    shape: LayerShape
    weight: str | None
    """Canonical name of the weight when it enters the kernel."""
    bias: str | None
    sample_shape: tuple[int, ...]
    """The layer's output shape for one sample (probe shape, without the batch dim)."""
    owner: str | None = None
    """For a projection inside a module (``nn.MultiheadAttention``): that module's path; the
    layer's own ``path`` is ``"<owner>:<site>"``."""
    site: str | None = None

    @property
    def module_path(self) -> str:
        """The module whose forward the structured passes hook."""
        return self.path if self.owner is None else self.owner

    @property
    def in_features(self) -> int:
        return self.shape.in_features

    @property
    def out_features(self) -> int:
        return self.shape.out_features

    @property
    def positions(self) -> int:
        """T: the positions of each sample the layer is applied at."""
        return self.shape.positions

    @property
    def position_pairs(self) -> int:
        """T(T + 1)/2: the Gram products of a square block."""
        return position_pairs(self.shape.positions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in (self.weight, self.bias) if name is not None)
