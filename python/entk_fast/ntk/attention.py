"""``nn.MultiheadAttention``'s two projections on the structured sequence path.

Self-attention applies the packed input projection (W_in = [W_Q; W_K; W_V], (3d, d), and its
bias) and the output projection (``out_proj``) at every one of the T positions of a sample,
so each has the exact eNTK block Σ_{t,t'} ⟨a_t, a'_t'⟩ ⟨g_t, g'_t'⟩ of a Linear at T positions
(`layers`, where ``MODULE_RULES`` holds its rule). Their inputs and output cotangents are
inside ``F.multi_head_attention_forward``, which no hook reaches, so during the structured passes
the module's output is recomputed by `attention_forward`, the same computation written
with the two projections exposed (the zero probes are added to their outputs there). The
recomputation is checked against the output the module's own forward just gave (on the probe
samples, and on every chunk the first time it is gathered); a configuration it does not
cover (cross-attention, separate q/k/v weights, ``bias_k``, ``add_zero_attn``, dropout in
training, unbatched input) raises `StructuredFallback` and the two projections take
the general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import StructuredFallback

__all__ = ["SITES", "OnSite", "attention_forward", "qualifies", "site_names"]

SITES = ("in_proj", "out_proj")
"""The projections of a ``nn.MultiheadAttention`` the structured path covers."""

OnSite = Callable[[str, Tensor, Tensor], Tensor]
"""(site, input (N, T, d_in), output (N, T, d_out)) -> the output to use (probe added)."""

_PARAMS = {
    "in_proj": ("in_proj_weight", "in_proj_bias"),
    "out_proj": ("out_proj.weight", "out_proj.bias"),
}


def site_names(site: str) -> tuple[str, str]:
    """The module-local names of a site's weight and bias."""
    return _PARAMS[site]


def qualifies(module: nn.Module) -> bool:
    """Whether the module is a plain ``nn.MultiheadAttention`` with one packed projection."""
    return (
        type(module) is nn.MultiheadAttention
        and module._qkv_same_embed_dim
        and module.in_proj_weight is not None
        and module.bias_k is None
        and module.bias_v is None
        and not module.add_zero_attn
    )


_SIGNATURE = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)
_DEFAULTS: dict[str, Any] = {
    "key_padding_mask": None,
    "need_weights": True,
    "attn_mask": None,
    "average_attn_weights": True,
    "is_causal": False,
}


def _arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(_DEFAULTS)
    bound.update(zip(_SIGNATURE, args, strict=False))
    bound.update(kwargs)
    return bound


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = masked) as -inf / 0, a float mask as given."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def attention_forward(
    module: nn.MultiheadAttention,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    on_site: OnSite,
    path: str,
) -> tuple[Tensor, Tensor | None]:
    """The module's output on ``(args, kwargs)``, with its projections passed through
    ``on_site``; raises `StructuredFallback` (naming ``path``'s sites) where it does not
    cover the call."""
    paths = [f"{path}:{site}" for site in SITES]
    call = _arguments(args, kwargs)
    query = call["query"]
    if not (query is call["key"] and call["key"] is call["value"]):
        raise StructuredFallback(paths, "not self-attention (query, key and value differ)")
    if not isinstance(query, Tensor) or query.dim() != 3:
        raise StructuredFallback(paths, "input is not a batch of sequences")
    if module.training and module.dropout > 0:
        raise StructuredFallback(paths, "attention dropout is active")
    x = query if module.batch_first else query.transpose(0, 1)  # (N, T, d)
    n, t, d = x.shape
    heads = module.num_heads
    head_dim = d // heads
    qkv = on_site("in_proj", x, F.linear(x, module.in_proj_weight, module.in_proj_bias))
    q, k, v = qkv.view(n, t, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (N, heads, T, hd)
    scores = (q / math.sqrt(head_dim)) @ k.transpose(-1, -2)  # (N, heads, T, T)
    attn_mask = _additive(call["attn_mask"], scores.dtype)
    if attn_mask is not None:
        scores = scores + (attn_mask.view(n, heads, t, t) if attn_mask.dim() == 3 else attn_mask)
    padding = _additive(call["key_padding_mask"], scores.dtype)
    if padding is not None:
        scores = scores + padding.view(n, 1, 1, t)
    weights = scores.softmax(dim=-1)
    z = (weights @ v).transpose(1, 2).reshape(n, t, d)
    out = on_site("out_proj", z, F.linear(z, module.out_proj.weight, module.out_proj.bias))
    if not module.batch_first:
        out = out.transpose(0, 1)
    if not call["need_weights"]:
        return out, None
    return out, weights.mean(dim=1) if call["average_attn_weights"] else weights
