"""The structured exact path for ``nn.Linear`` and ``nn.Embedding`` layers used once.

For y = W a (+ b) applied once per sample, the layer's eNTK block is

    K[(n, c), (n', c')] = ⟨a_n, a_n'⟩ · ⟨g_nc, g_n'c'⟩  (+ ⟨g_nc, g_n'c'⟩ for the bias),

with a the layer's input and g_nc = ∂(R f)_c(x_n)/∂y_n the output cotangent; an embedding is the
one-hot case, ⟨a_n, a_n'⟩ = [i_n = i_n'] (0 on the padding index). The two small Gram matrices
meet in the Rust ``hadamard_gram_accumulate``. Cotangents come from one batched forward with a
zero "probe" added to each layer's output and one batched backward per sweep.

A layer qualifies only if it is an exact ``nn.Linear`` / ``nn.Embedding`` that ran once in the
probe pass, on one vector (index) per sample, whose parameters no other operation touched, in
a model whose samples do not interact; a numeric check on the probe samples confirms it.
Everything else takes the general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .. import linalg
from .budget import StructuredPass
from .prepare import Problem
from .quiet import quiet_batching_fallback

__all__ = ["StructuredLayer", "accumulate_pass", "find_layers", "gather", "verify_layers"]


@dataclass(frozen=True)
class StructuredLayer:
    """A Linear / Embedding layer whose eNTK block is computed from two Grams."""

    path: str
    kind: Literal["linear", "embedding"]
    weight: str | None
    """Canonical name of the weight when it enters the kernel."""
    bias: str | None
    in_features: int
    """d_in (Linear), 1 (Embedding: the stored index)."""
    out_features: int
    sample_shape: tuple[int, ...]
    """The layer's output shape for one sample (probe shape, without the batch dim)."""
    padding_idx: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in (self.weight, self.bias) if name is not None)


def _param_name(problem: Problem, path: str, local: str) -> str | None:
    return problem.index.canonical.get(f"{path}.{local}" if path else local)


def find_layers(problem: Problem) -> list[StructuredLayer]:
    """The layers that qualify for the structured path, from the probe pass (no numerics)."""
    probe = problem.probe
    if not probe.batch_independent:
        return []
    selected = set(problem.selected)
    batch = probe.batch
    found: list[StructuredLayer] = []
    for path, module in problem.model.named_modules():
        kind: Literal["linear", "embedding"]
        if type(module) is nn.Linear:
            kind = "linear"
        elif type(module) is nn.Embedding:
            kind = "embedding"
            if module.max_norm is not None or module.sparse or module.scale_grad_by_freq:
                continue
        else:
            continue
        if probe.calls.get(path, 0) != 1 or path not in probe.io_shapes:
            continue
        weight = _param_name(problem, path, "weight")
        bias = _param_name(problem, path, "bias") if kind == "linear" else None
        # A parameter qualifies on its own: a reused weight does not stop its bias.
        weight = weight if weight in selected and probe.usage.get(weight, 0) == 1 else None
        bias = bias if bias in selected and probe.usage.get(bias, 0) == 1 else None
        if weight is None and bias is None:
            continue
        in_shape, out_shape = probe.io_shapes[path]
        if in_shape[:1] != (batch,) or out_shape[:1] != (batch,):
            continue
        if kind == "linear":
            d_in, d_out = module.in_features, module.out_features
            if len(in_shape) < 2 or in_shape[-1] != d_in or math.prod(in_shape[1:-1]) != 1:
                continue
            if out_shape[-1] != d_out:
                continue
        else:
            d_in, d_out = 1, module.embedding_dim
            if math.prod(in_shape[1:]) != 1 or out_shape[-1] != d_out:
                continue
        found.append(
            StructuredLayer(
                path=path,
                kind=kind,
                weight=weight,
                bias=bias,
                in_features=d_in,
                out_features=d_out,
                sample_shape=tuple(out_shape[1:]),
                padding_idx=getattr(module, "padding_idx", None),
            )
        )
    return found


def _forward_with_probes(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    inputs: tuple[Tensor, ...],
    params: Mapping[str, Tensor],
) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """(R f (n, C_r), zero probes added to each layer's output, each layer's input)."""
    n = inputs[0].shape[0]
    probes = [
        torch.zeros(
            (n, *layer.sample_shape), dtype=problem.dtype, device=problem.device
        ).requires_grad_()
        for layer in layers
    ]
    acts: dict[str, Tensor] = {}

    def make_hook(path: str, probe: Tensor) -> Callable[..., Tensor]:
        def hook(_module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            acts[path] = args[0].detach()
            return output + probe

        return hook

    handles = [
        problem.model.get_submodule(layer.path).register_forward_hook(make_hook(layer.path, probe))
        for layer, probe in zip(layers, probes, strict=True)
    ]
    try:
        with torch.enable_grad():
            y = problem.out_map.apply(problem.forward(inputs, params))
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.path for layer in layers if layer.path not in acts]
    if missing:  # the probe pass saw these layers run; a data-dependent forward skipped them
        raise RuntimeError(f"structured layers {missing} did not run on this batch")
    return y, probes, acts


def _predicted_grads(
    layer: StructuredLayer, act: Tensor, cot: Tensor, weight_shape: torch.Size | None
) -> dict[str, Tensor]:
    """Parameter gradients implied by the layer's single use: Σ_n g_n a_nᵀ (and Σ_n g_n)."""
    n = cot.shape[0]
    g = cot.reshape(n, layer.out_features)
    out: dict[str, Tensor] = {}
    if layer.weight is not None:
        if layer.kind == "linear":
            out[layer.weight] = g.T @ act.reshape(n, layer.in_features)
        else:
            assert weight_shape is not None
            idx = act.reshape(n).long()
            pred = torch.zeros(weight_shape, dtype=g.dtype, device=g.device).index_add_(0, idx, g)
            if layer.padding_idx is not None:
                pred[layer.padding_idx] = 0
            out[layer.weight] = pred
    if layer.bias is not None:
        out[layer.bias] = g.sum(dim=0)
    return out


def verify_layers(problem: Problem, layers: Sequence[StructuredLayer]) -> list[StructuredLayer]:
    """Keep the layers whose true parameter gradient on the probe samples matches the formula.

    A safety net behind the usage count: a parameter touched outside its layer in a way the
    probe could not see would make the two differ.
    """
    if not layers:
        return []
    head = tuple(x[: problem.probe.batch] for x in problem.inputs)
    params = dict(problem.params)
    leaves: list[str] = []
    for layer in layers:
        for name in layer.names:
            params[name] = problem.params[name].clone().requires_grad_()
            leaves.append(name)
    y, probes, acts = _forward_with_probes(problem, layers, head, params)
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    with torch.enable_grad():
        loss = (y * weights).sum()
        grads = torch.autograd.grad(
            loss, [*probes, *(params[name] for name in leaves)], allow_unused=True
        )
    probe_grads = grads[: len(probes)]
    actual = dict(zip(leaves, grads[len(probes) :], strict=True))
    rtol = 1e-3 if problem.dtype == torch.float32 else 1e-8
    kept = []
    for layer, probe, cot in zip(layers, probes, probe_grads, strict=True):
        cot = torch.zeros_like(probe) if cot is None else cot
        ok = True
        shape = params[layer.weight].shape if layer.weight is not None else None
        for name, pred in _predicted_grads(layer, acts[layer.path], cot, shape).items():
            true = actual[name]
            true = torch.zeros_like(pred) if true is None else true
            scale = max(float(pred.abs().max()), float(true.abs().max()), 1e-30)
            ok = ok and bool(torch.allclose(true, pred, rtol=rtol, atol=rtol * scale))
        if ok:
            kept.append(layer)
    return kept


def gather(
    problem: Problem, sweep: StructuredPass, tick: Callable[[int], object]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Inputs (N, d_in) or indices (N,) and cotangents (N, C_r, d_out) of the sweep's layers."""
    n_total = problem.n_samples
    rows = problem.rows_per_sample
    layers = sweep.layers
    acts: dict[str, Tensor] = {}
    cots: dict[str, Tensor] = {}
    for layer in layers:
        cots[layer.path] = torch.empty(
            (n_total, rows, layer.out_features), dtype=problem.dtype, device=problem.device
        )
        if layer.kind == "linear":
            acts[layer.path] = torch.empty(
                (n_total, layer.in_features), dtype=problem.dtype, device=problem.device
            )
        else:
            acts[layer.path] = torch.empty((n_total,), dtype=torch.long, device=problem.device)
    for start in range(0, n_total, sweep.chunk):
        stop = min(start + sweep.chunk, n_total)
        n = stop - start
        inputs = tuple(x[start:stop] for x in problem.inputs)
        y, probes, seen = _forward_with_probes(problem, layers, inputs, problem.params)
        basis = torch.eye(rows, dtype=y.dtype, device=y.device).unsqueeze(1).expand(rows, n, rows)
        with quiet_batching_fallback():
            grads = torch.autograd.grad(
                y, probes, grad_outputs=basis, is_grads_batched=True, allow_unused=True
            )
        for layer, grad in zip(layers, grads, strict=True):
            if grad is None:
                cots[layer.path][start:stop] = 0
            else:
                cots[layer.path][start:stop] = grad.reshape(rows, n, layer.out_features).transpose(
                    0, 1
                )
            acts[layer.path][start:stop] = seen[layer.path].reshape(
                acts[layer.path][start:stop].shape
            )
        del y, probes, seen, grads
        tick(1)
    return acts, cots


def _activation_gram(problem: Problem, layer: StructuredLayer, act: Tensor) -> np.ndarray:
    """⟨a_n, a_n'⟩ (N, N): a Gram of the inputs, or index equality for an embedding."""
    if layer.kind == "linear":
        return linalg.gram(act.detach().cpu().numpy())
    idx = act.cpu().numpy()
    same = (idx[:, None] == idx[None, :]).astype(problem.numpy_dtype)
    if layer.padding_idx is not None:
        keep = (idx != layer.padding_idx).astype(problem.numpy_dtype)
        same *= keep[:, None]
        same *= keep[None, :]
    return same


def accumulate_pass(
    problem: Problem,
    sweep: StructuredPass,
    targets: Callable[[str], np.ndarray],
    tick: Callable[[int], object],
) -> None:
    """Add each layer's block into ``targets(param_name)`` (the full or the layer kernel)."""
    acts, cots = gather(problem, sweep, tick)
    rows = problem.rows_per_sample
    n = problem.n_samples
    for layer in sweep.layers:
        cot = cots.pop(layer.path)
        if problem.mode == "rows":
            g, block = cot.reshape(n * rows, layer.out_features), rows
        else:
            g, block = cot.reshape(n, rows * layer.out_features), 1
        g_np = g.detach().cpu().numpy()
        act = acts.pop(layer.path)
        weight_target = targets(layer.weight) if layer.weight is not None else None
        bias_target = targets(layer.bias) if layer.bias is not None else None
        if weight_target is not None:
            s = _activation_gram(problem, layer, act)
            if bias_target is weight_target:
                s += 1.0
                bias_target = None
            linalg.hadamard_gram_accumulate(
                weight_target, g_np, s, block=block, alpha=problem.alpha
            )
            del s
        if bias_target is not None:
            ones = np.ones((n, n), dtype=problem.numpy_dtype)
            linalg.hadamard_gram_accumulate(
                bias_target, g_np, ones, block=block, alpha=problem.alpha
            )
        del g_np, g, cot, act
