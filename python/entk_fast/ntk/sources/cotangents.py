"""The structured layers' output cotangents, and the checks that make them exact: each found
layer verified on the probe samples (`verify_layers`: its gradient is the one its rule
predicts, its cotangents are the lone samples'), then one batched forward with a zero "probe"
added to each layer's output and one batched backward per sweep (`gather`), each chunk's
samples checked against the same samples run alone (`check_alone`, one vmapped call)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from ..checks import StructuredFallback, close, require_finite
from ..layers import StructuredLayer
from ..plan import StructuredPass
from ..problem import Problem
from ..vmapping import (
    NotVmappable,
    per_sample_attention,
    quiet_batching_fallback,
    vmappable_forward,
)
from .layer_search import forward_with_probes, hook_layers

__all__ = ["check_alone", "gather", "verify_layers"]


def _predicted_grads(
    layer: StructuredLayer, act: Tensor, cot: Tensor, weight_shape: torch.Size | None
) -> dict[str, Tensor]:
    """Parameter gradients implied by the layer's single use: Σ_{n,t} g_nt a_ntᵀ (and
    Σ_{n,t} g_nt)."""
    g = cot.reshape(-1, layer.out_features)  # (samples × positions, d_out)
    out: dict[str, Tensor] = {}
    if layer.weight is not None:
        assert weight_shape is not None
        out[layer.weight] = layer.rule.weight_grad(layer.shape, act, g, weight_shape)
    if layer.bias is not None:
        out[layer.bias] = g.sum(dim=0)
    return out


def verify_layers(problem: Problem, layers: Sequence[StructuredLayer]) -> list[StructuredLayer]:
    """Keep the layers whose true parameter gradient on the probe samples matches the formula,
    and whose batched output cotangents are those of each probe sample run alone.

    A safety net behind the usage count: a parameter touched outside its layer in a way the
    probe could not see would make the two differ; a backward that mixes samples (the
    general path differentiates each sample alone) makes the cotangents differ.
    """
    if not layers:
        return []
    where = torch.tensor(problem.probe.indices, device=problem.device)
    head = tuple(x.index_select(0, where) for x in problem.inputs)
    params = dict(problem.params)
    leaves: list[str] = []
    for layer in layers:
        for name in layer.names:
            params[name] = problem.params[name].clone().requires_grad_()
            leaves.append(name)
    try:
        y, probes, acts = forward_with_probes(problem, layers, head, params, check_attention=True)
    except StructuredFallback as exc:
        rest = [layer for layer in layers if layer.path not in exc.paths]
        return verify_layers(problem, rest) if len(rest) < len(layers) else []
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    grads = _probe_grads(y, [*probes, *(params[name] for name in leaves)], weights)
    probe_grads = grads[: len(probes)]
    actual = dict(zip(leaves, grads[len(probes) :], strict=True))
    rtol = 1e-3 if problem.dtype == torch.float32 else 1e-8
    alone = _lone_cotangents(problem, layers, head, weights)
    kept = []
    for layer, probe, cot in zip(layers, probes, probe_grads, strict=True):
        cot = torch.zeros_like(probe) if cot is None else cot
        lone = alone.get(layer.path)
        ok = lone is not None and close(lone, cot, rtol=rtol)
        shape = params[layer.weight].shape if layer.weight is not None else None
        for name, pred in _predicted_grads(layer, acts[layer.path], cot, shape).items():
            true = actual[name]
            true = torch.zeros_like(pred) if true is None else true
            ok = ok and close(true, pred, rtol=rtol)
        if ok:
            kept.append(layer)
    return kept


def _lone_cotangents(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    head: tuple[Tensor, ...],
    weights: Tensor,
) -> dict[str, Tensor]:
    """Each layer's output cotangents of ⟨weights_i, R f(x_i)⟩ with every sample run alone,
    stacked over the probe samples (a layer that misbehaves alone is left out).

    One vmapped gradient over the samples; where that fails (a forward vmap cannot run, a
    layer that misbehaves on a lone sample), sample by sample, which finds the layers to
    leave out.
    """
    try:
        return _vmapped_lone_cotangents(problem, layers, head, weights)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the per-sample loop below decides what went wrong
        return _looped_lone_cotangents(problem, layers, head, weights)


def _vmapped_lone_cotangents(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    head: tuple[Tensor, ...],
    weights: Tensor,
) -> dict[str, Tensor]:
    """`_lone_cotangents` as one vmapped forward over the samples, each a batch of one,
    and one plain backward: the samples do not meet under vmap, so the gradient with respect
    to sample i's probe is its lone cotangent. (Plain autograd, not ``torch.func.grad``, whose
    first call imports ``torch._dynamo``: 1.5 s.)"""
    n = head[0].shape[0]
    probes = [
        torch.zeros(
            (n, 1, *layer.sample_shape), dtype=problem.dtype, device=problem.device
        ).requires_grad_()
        for layer in layers
    ]

    def lone(probe: list[Tensor], *x: Tensor) -> Tensor:
        alone = tuple(t.unsqueeze(0) for t in x)
        return forward_with_probes(problem, layers, alone, problem.params, probe)[0][0]

    with torch.enable_grad(), quiet_batching_fallback(), vmappable_forward():
        with per_sample_attention():
            y = vmap(lone)(probes, *head)  # (n, C_r)
        grads = _probe_grads(y, probes, weights)
    return {
        layer.path: (torch.zeros_like(probe) if g is None else g).reshape(-1, *layer.sample_shape)
        for layer, probe, g in zip(layers, probes, grads, strict=True)
    }


def _looped_lone_cotangents(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    head: tuple[Tensor, ...],
    weights: Tensor,
) -> dict[str, Tensor]:
    """`_lone_cotangents` one sample at a time (plain autograd)."""
    parts: dict[str, list[Tensor]] = {layer.path: [] for layer in layers}
    for i in range(head[0].shape[0]):
        try:
            y, probes, _ = forward_with_probes(
                problem, layers, tuple(x[i : i + 1] for x in head), problem.params
            )
        except StructuredFallback as exc:
            for path in exc.paths:
                parts.pop(path, None)
            rest = [layer for layer in layers if layer.path in parts]
            if len(rest) == len(layers) or not rest:
                return {}
            return _looped_lone_cotangents(problem, rest, head, weights)
        grads = _probe_grads(y, probes, weights[i : i + 1])
        for layer, probe, grad in zip(layers, probes, grads, strict=True):
            parts[layer.path].append(torch.zeros_like(probe) if grad is None else grad)
    return {path: torch.cat(chunks) for path, chunks in parts.items()}


def gather(
    problem: Problem,
    sweep: StructuredPass,
    samples: tuple[int, int],
    rows: tuple[int, int],
    tick: Callable[[int], object] | None = None,
    *,
    storage: Mapping[str, Tensor] | None = None,
    want_acts: bool = True,
    check: bool | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Inputs (n, T, d_in) or indices (n, T) and cotangents (n, rows, T, d_out) of the sweep's
    layers (T: each layer's positions).

    For the samples ``start:stop`` and the output rows ``r0:r1`` of R f, ``sweep.chunk``
    samples per forward and batched backward; ``tick(1)`` after each chunk. ``storage`` (flat
    tensors per layer path, large enough) receives the cotangents: one buffer reused across
    calls spares the allocator a large short-lived block per call. ``check`` (default:
    ``want_acts``; once per sample is enough) compares each chunk's batched forward with the
    samples run alone (`_check_alone`).
    """
    check = want_acts if check is None else check
    start, stop = samples
    r0, r1 = rows
    n_rows = problem.rows_per_sample
    group = r1 - r0
    layers = sweep.layers
    acts: dict[str, Tensor] = {}
    cots: dict[str, Tensor] = {}
    for layer in layers:
        shape = (stop - start, group, layer.positions, layer.out_features)
        if storage is None:
            cots[layer.path] = torch.empty(shape, dtype=problem.dtype, device=problem.device)
        else:
            cots[layer.path] = storage[layer.path][: math.prod(shape)].view(shape)
        if not want_acts:
            continue
        acts[layer.path] = layer.rule.input_buffer(
            stop - start, layer.shape, problem.dtype, problem.device
        )
    for s in range(start, stop, sweep.chunk):
        e = min(s + sweep.chunk, stop)
        n = e - s
        inputs = tuple(x[s:e] for x in problem.inputs)
        y, probes, seen = forward_with_probes(
            problem, layers, inputs, problem.params, check_attention=check
        )
        names = problem.samples_from(s)
        require_finite(y, "output", names)
        for layer in layers:
            require_finite(seen[layer.path], "input", names, layer=layer.path)
        if check:
            check_alone(problem, layers, inputs, y, seen)
        eye = torch.eye(n_rows, dtype=y.dtype, device=y.device)[r0:r1]
        basis = eye.unsqueeze(1).expand(group, n, n_rows)
        try:
            grads = _probe_grads(y, probes, basis, batched=True)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            paths = [layer.path for layer in layers]
            raise StructuredFallback(paths, f"batched backward failed: {exc}") from exc
        at = slice(s - start, e - start)
        for layer, grad in zip(layers, grads, strict=True):
            if grad is None:
                cots[layer.path][at] = 0
            else:
                grad = grad.reshape(group, n, layer.positions, layer.out_features)
                require_finite(grad, "cotangent", names, dim=1, layer=layer.path)
                cots[layer.path][at] = grad.transpose(0, 1)
            if want_acts:
                acts[layer.path][at] = seen[layer.path].reshape(acts[layer.path][at].shape)
        del y, probes, seen, grads, basis
        if tick is not None:
            tick(1)
    return acts, cots


def _probe_grads(
    y: Tensor, inputs: Sequence[Tensor], weights: Tensor, *, batched: bool = False
) -> tuple[Tensor | None, ...]:
    """Gradients of ⟨weights, y⟩ with respect to ``inputs`` (None where y does not depend on
    one); all None when y depends on nothing that requires grad (a ``.detach()`` in
    forward), whose eNTK is exactly zero. ``batched``: ``weights`` holds one cotangent per
    row group along dim 0."""
    if not y.requires_grad:
        return (None,) * len(inputs)
    with torch.enable_grad(), quiet_batching_fallback():
        if batched and weights.shape[0] == 1:  # one group: a plain backward, no vmap over it
            grads = torch.autograd.grad(y, inputs, grad_outputs=weights[0], allow_unused=True)
            return tuple(None if g is None else g.unsqueeze(0) for g in grads)
        if batched:
            return torch.autograd.grad(
                y, inputs, grad_outputs=weights, is_grads_batched=True, allow_unused=True
            )
        return torch.autograd.grad((y * weights).sum(), inputs, allow_unused=True)


def check_alone(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    inputs: tuple[Tensor, ...],
    y: Tensor,
    seen: Mapping[str, Tensor],
) -> None:
    """The batched chunk against its samples run alone (one vmapped forward, as the general
    path runs them): R f and each layer's input rows must agree, else the layers (all of them
    when the outputs differ: the samples interact) go to the general path."""
    paths = [layer.path for layer in layers]

    def lone(*x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        found: dict[str, Tensor] = {}

        def on_call(layer: StructuredLayer, first: Tensor, output: Tensor) -> Tensor:
            if layer.path in found:
                raise StructuredFallback([layer.path], "runs differently on a lone sample")
            found[layer.path] = first
            return output

        handles = hook_layers(problem, layers, on_call)
        try:
            out = problem.forward(tuple(t.unsqueeze(0) for t in x))
        finally:
            for handle in handles:
                handle.remove()
        missing = [path for path in paths if path not in found]
        if missing:
            raise StructuredFallback(missing, "does not run on a lone sample")
        return problem.out_map.apply(out)[0], tuple(found[path] for path in paths)

    try:
        with (
            torch.no_grad(),
            quiet_batching_fallback(),
            vmappable_forward(),
            per_sample_attention(),
        ):
            out, acts = vmap(lone)(*inputs)
    except NotVmappable as exc:
        if exc.random:
            raise
        # the general path's per-sample autograd fallback computes these layers exactly
        raise StructuredFallback(paths, "the forward cannot run under vmap") from exc
    batched = y.detach()
    if not close(out, batched):
        raise StructuredFallback(paths, "the samples interact in the batched forward")
    bad = [
        path
        for path, act in zip(paths, acts, strict=True)
        if act.numel() != seen[path].numel()
        or not close(act.reshape(seen[path].shape).to(seen[path].dtype), seen[path])
    ]
    if bad:
        raise StructuredFallback(bad, "its input rows are not the samples run alone")
