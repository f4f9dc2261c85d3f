"""The registry of layers with an exact structured eNTK block: ``LAYER_RULES[type(module)]``.

For y = W a (+ b) applied once per sample, the layer's block of the eNTK is

    K[(n, c), (n', c')] = ⟨a_n, a_n'⟩ · ⟨g_nc, g_n'c'⟩  (+ ⟨g_nc, g_n'c'⟩ for the bias),

with a the layer's input and g_nc = ∂(R f)_c(x_n)/∂y_n its output cotangent (J. Lin, arXiv
2510.00468, the cheap exact paths; nngeometry's per-layer Jacobian factories use the same
identity). A rule says, for one layer type, when a call qualifies, what a sample's input is
(a vector, or an index for an embedding), the input Gram ⟨a_n, a_n'⟩, and the parameter
gradient the formula implies (a safety check). A new fast-path layer is one rule here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ... import linalg

__all__ = ["LAYER_RULES", "LayerRule", "LayerShape", "StructuredLayer"]


@dataclass(frozen=True)
class LayerShape:
    """A qualifying call: d_in (1 for an index), d_out, and the rule's options."""

    in_features: int
    out_features: int
    padding_idx: int | None = None


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
        """Storage for n samples' inputs, as :meth:`input_gram` takes them."""
        ...

    def input_gram(
        self, shape: LayerShape, act: Tensor, other: Tensor | None, dtype: np.dtype
    ) -> np.ndarray:
        """⟨a_n, a_n'⟩ between two sample sets (one: its Gram), (n, n')."""
        ...

    def weight_grad(
        self, shape: LayerShape, act: Tensor, cot: Tensor, weight_shape: torch.Size
    ) -> Tensor:
        """Σ_n g_n a_nᵀ in the weight's layout, for cotangents ``cot`` (n, d_out)."""
        ...


class LinearRule:
    """``nn.Linear`` on one vector per sample."""

    kind = "linear"
    has_bias = True

    def shape(
        self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> LayerShape | None:
        assert isinstance(module, nn.Linear)
        d_in, d_out = module.in_features, module.out_features
        if len(in_shape) < 1 or in_shape[-1] != d_in or math.prod(in_shape[:-1]) != 1:
            return None
        if not out_shape or out_shape[-1] != d_out:
            return None
        return LayerShape(d_in, d_out)

    def input_buffer(
        self, n: int, shape: LayerShape, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        return torch.empty((n, shape.in_features), dtype=dtype, device=device)

    def input_gram(
        self, shape: LayerShape, act: Tensor, other: Tensor | None, dtype: np.dtype
    ) -> np.ndarray:
        a = act.detach().cpu().numpy()
        return linalg.gram(a) if other is None else linalg.gram_cross(a, other.cpu().numpy())

    def weight_grad(
        self, shape: LayerShape, act: Tensor, cot: Tensor, weight_shape: torch.Size
    ) -> Tensor:
        return cot.T @ act.reshape(cot.shape[0], shape.in_features)


class EmbeddingRule:
    """``nn.Embedding`` on one index per sample: the one-hot case, ⟨a_n, a_n'⟩ = [i_n = i_n']
    (0 on the padding index)."""

    kind = "embedding"
    has_bias = False

    def shape(
        self, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> LayerShape | None:
        assert isinstance(module, nn.Embedding)
        if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
            return None
        if math.prod(in_shape) != 1 or not out_shape or out_shape[-1] != module.embedding_dim:
            return None
        return LayerShape(1, module.embedding_dim, module.padding_idx)

    def input_buffer(
        self, n: int, shape: LayerShape, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        return torch.empty((n,), dtype=torch.long, device=device)

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

    @property
    def in_features(self) -> int:
        return self.shape.in_features

    @property
    def out_features(self) -> int:
        return self.shape.out_features

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in (self.weight, self.bias) if name is not None)
