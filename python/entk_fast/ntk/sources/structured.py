"""The structured exact path for layers with a rule in ``layers.LAYER_RULES``, used once.

For y_t = W a_t (+ b) applied at T positions of each sample (T = 1: once per sample), the
layer's eNTK block is

    K[(n, c), (n', c')] = Σ_{t, t'} ⟨a_nt, a_n't'⟩ · ⟨g_nct, g_n'c't'⟩  (+ the same without the
    input Gram for the bias, which is the Gram of Σ_t g_nct),

with a_t the layer's input and g_nct = ∂(R f)_c(x_n)/∂y_nt the output cotangent at position t;
an embedding is the one-hot case, ⟨a_nt, a_n't'⟩ = [i_nt = i_n't'] (0 on the padding index).
The two small Gram matrices of each position pair meet in the Rust ``hadamard_gram_accumulate``
(t = t') / ``hadamard_gram_cross`` (t ≠ t', added with its transpose); a pair whose input Gram
is zero (embedding indices that never meet, such as two fixed positions) is skipped.
Cotangents come from one batched forward with a zero "probe" added to each layer's output and
one batched backward per sweep.

A layer qualifies only if it is an exact ``nn.Linear`` / ``nn.Embedding`` that ran once in the
probe pass, on T vectors (indices) per sample, whose parameters no other operation touched, in
a model whose samples do not interact; the probe also runs each of its samples alone and
requires row i of the layer's batched input to be that layer's input for sample i alone
(a Linear applied to learned prototypes, or to permuted / sorted rows, fails this); a numeric
check on the probe samples confirms it, including that each sample's output cotangents are
those of the sample run alone. Everything else takes the general path. On the full batch,
every chunk's batched forward is compared once with its samples run alone (one vmapped
forward, as the general path runs them); when a qualified layer misbehaves there (it does not
run, runs twice or on another number of rows, its input rows or the outputs differ from the
lone runs, an attention recomputation differs from the module's own output, or the batched
forward / backward fails), `StructuredFallback` names it and the caller redoes the
work with it on the general path. The lone runs (the probe's, the cotangent check's and each
chunk's) are single vmapped calls, sample by sample only where vmap cannot run the forward;
a position whose cotangents are zero for every sample (a causal model read at its last
position) adds nothing, and the core's kernels skip it. Each chunk's outputs, layer inputs
and output cotangents go through the one NaN / inf check (``checks.require_finite``), so a
non-finite Jacobian is reported by sample, as on the general path. An output that depends on
no parameter (a ``.detach()`` in forward) has zero cotangents: its eNTK is exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from ... import linalg
from ..checks import StructuredFallback, close, require_finite
from ..layers import LAYER_RULES, LayerShape, StructuredLayer, position_pairs
from ..plan import StructuredPass
from ..problem import Problem
from ..vmapping import (
    NotVmappable,
    per_sample_attention,
    quiet_batching_fallback,
    vmappable_forward,
)
from . import attention

__all__ = ["StructuredSource", "find_layers", "gather", "verify_layers"]


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
        if attention.qualifies(module):
            found.extend(_attention_layers(problem, path, module, selected))
            continue
        rule = LAYER_RULES.get(type(module))
        if rule is None:
            continue
        if probe.calls.get(path, 0) != 1 or path not in probe.io_shapes:
            continue
        if path not in probe.per_sample_layers:  # its rows are not the samples, one each
            continue
        weight = _param_name(problem, path, "weight")
        bias = _param_name(problem, path, "bias") if rule.has_bias else None
        # A parameter qualifies on its own: a reused weight does not stop its bias.
        weight = weight if weight in selected and probe.usage.get(weight, 0) == 1 else None
        bias = bias if bias in selected and probe.usage.get(bias, 0) == 1 else None
        if weight is None and bias is None:
            continue
        in_shape, out_shape = probe.io_shapes[path]
        if in_shape[:1] != (batch,) or out_shape[:1] != (batch,):
            continue
        shape = rule.shape(module, tuple(in_shape[1:]), tuple(out_shape[1:]))
        if shape is None:
            continue
        found.append(
            StructuredLayer(
                path=path,
                rule=rule,
                shape=shape,
                weight=weight,
                bias=bias,
                sample_shape=tuple(out_shape[1:]),
            )
        )
    return found


def _attention_layers(
    problem: Problem, path: str, module: nn.Module, selected: set[str]
) -> list[StructuredLayer]:
    """The projections of a self-attention module that qualify, as layers at T positions."""
    probe = problem.probe
    if probe.calls.get(path, 0) != 1 or path not in probe.io_shapes:
        return []
    query, _ = probe.io_shapes[path]
    assert isinstance(module, nn.MultiheadAttention)
    if len(query) != 3:
        return []
    positions = query[1] if module.batch_first else query[0]
    if (query[0] if module.batch_first else query[1]) != probe.batch:
        return []
    d = module.embed_dim
    layers = []
    for site, d_out in (("in_proj", 3 * d), ("out_proj", d)):
        if position_pairs(positions) * (d + d_out) > d * d_out:
            continue  # cheaper on the general path
        weight, bias = (_param_name(problem, path, local) for local in attention.site_names(site))
        weight = weight if weight in selected and probe.usage.get(weight, 0) == 1 else None
        bias = bias if bias in selected and probe.usage.get(bias, 0) == 1 else None
        if weight is None and bias is None:
            continue
        layers.append(
            StructuredLayer(
                path=f"{path}:{site}",
                rule=LAYER_RULES[nn.Linear],
                shape=LayerShape(d, d_out, positions=positions),
                weight=weight,
                bias=bias,
                sample_shape=(positions, d_out),
                owner=path,
                site=site,
            )
        )
    return layers


def _hook_layers(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    on_call: Callable[[StructuredLayer, Tensor, Tensor], Tensor],
    *,
    check_attention: bool = False,
) -> list[Any]:
    """Hooks that pass each layer's (input (n, ...), output (n, ...)) through ``on_call``, whose
    result replaces the output; attention projections are reached by recomputing their
    module's output (`attention.attention_forward`). ``check_attention``: compare the
    recomputed output with the one the module's own forward just gave (values, not under
    vmap) and raise `StructuredFallback` for its projections where they differ.
    Returns the hook handles."""
    handles = []
    plain = [layer for layer in layers if layer.owner is None]
    for layer in plain:

        def hook(
            _module: nn.Module, args: tuple[Any, ...], output: Any, layer: StructuredLayer = layer
        ) -> Any:
            first = args[0] if args else None
            if not isinstance(first, Tensor) or not isinstance(output, Tensor):
                raise StructuredFallback([layer.path], "ran on something other than a tensor")
            return on_call(layer, first, output)

        handles.append(problem.model.get_submodule(layer.path).register_forward_hook(hook))
    owners: dict[str, dict[str, StructuredLayer]] = {}
    for layer in layers:
        if layer.owner is not None and layer.site is not None:
            owners.setdefault(layer.owner, {})[layer.site] = layer
    for owner, sites in owners.items():
        module = problem.model.get_submodule(owner)

        def attention_hook(
            module: nn.Module,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            _output: Any,
            sites: dict[str, StructuredLayer] = sites,
            owner: str = owner,
        ) -> Any:
            def on_site(site: str, x: Tensor, y: Tensor) -> Tensor:
                layer = sites.get(site)
                return y if layer is None else on_call(layer, x, y)

            assert isinstance(module, nn.MultiheadAttention)
            out = attention.attention_forward(module, args, kwargs, on_site, owner)
            own = _output[0] if isinstance(_output, tuple) else _output
            if check_attention and not (
                isinstance(own, Tensor) and close(own.detach(), out[0].detach())
            ):
                paths = [layer.path for layer in sites.values()]
                raise StructuredFallback(paths, "its recomputed attention differs")
            return out

        handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
    return handles


def _forward_with_probes(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    inputs: tuple[Tensor, ...],
    params: Mapping[str, Tensor],
    probes: Sequence[Tensor] | None = None,
    *,
    check_attention: bool = False,
) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """(R f (n, C_r), zero probes added to each layer's output, each layer's input).

    ``probes``: the zero probes (n, *sample shape) to add (one sample's slice of batched
    probes under vmap); by default fresh leaves that require grad.
    ``check_attention``: as `_hook_layers`.
    """
    n = inputs[0].shape[0]
    probes = (
        list(probes)
        if probes is not None
        else [
            torch.zeros(
                (n, *layer.sample_shape), dtype=problem.dtype, device=problem.device
            ).requires_grad_()
            for layer in layers
        ]
    )
    acts: dict[str, Tensor] = {}
    probe_of = {layer.path: probe for layer, probe in zip(layers, probes, strict=True)}

    def on_call(layer: StructuredLayer, first: Tensor, output: Tensor) -> Tensor:
        path = layer.path
        probe = probe_of[path]
        if path in acts:
            raise StructuredFallback([path], "ran more than once on this batch")
        if first.dim() == 0 or first.shape[0] != n or output.shape != probe.shape:
            raise StructuredFallback(
                [path],
                f"ran on input {tuple(first.shape)} instead of one row for each of {n} samples",
            )
        acts[path] = first.detach()
        return output + probe

    handles = _hook_layers(problem, layers, on_call, check_attention=check_attention)
    try:
        with torch.enable_grad():
            y = problem.out_map.apply(problem.forward(inputs, params))
    except StructuredFallback:
        raise
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # the batched forward fails where per-sample runs may not
        raise StructuredFallback(
            [layer.path for layer in layers], f"batched forward failed: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.path for layer in layers if layer.path not in acts]
    if missing:  # the probe pass saw these layers run; a data-dependent forward skipped them
        raise StructuredFallback(missing, "did not run on this batch")
    return y, probes, acts


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
        y, probes, acts = _forward_with_probes(problem, layers, head, params, check_attention=True)
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
        return _forward_with_probes(problem, layers, alone, problem.params, probe)[0][0]

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
            y, probes, _ = _forward_with_probes(
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
        y, probes, seen = _forward_with_probes(
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

        handles = _hook_layers(problem, layers, on_call)
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


def _activation_gram(
    problem: Problem, layer: StructuredLayer, act: Tensor, other: Tensor | None = None
) -> np.ndarray:
    """⟨a_n, a_n'⟩ between two sample sets at one position each (one: its Gram)."""
    return layer.rule.input_gram(layer.shape, act, other, problem.numpy_dtype)


def _kernel_rows(problem: Problem, cot: Tensor) -> tuple[np.ndarray, int]:
    """Cotangents (n, rows, d_out) as the rows of the Hadamard-Gram, and rows per S entry."""
    rows = problem.as_kernel_rows(cot)
    return rows, 1 if problem.reduction.rows_concatenated else cot.shape[1]


@dataclass
class _Rows:
    """One layer's cotangents of a sample set as Hadamard-Gram rows: stacked position by
    position (T·R, Q), each position's R rows, and their sum over positions (the bias's
    Jacobian Σ_t g_t), with the rows per S entry."""

    stacked: np.ndarray
    at: list[np.ndarray]
    total: np.ndarray
    block: int


def _position_rows(problem: Problem, cot: Tensor, *, total: bool = True) -> _Rows:
    """Cotangents (n, rows, T, d_out) as `_Rows` (``total``: also their position sum)."""
    positions = cot.shape[2]
    per_position = cot.permute(2, 0, 1, 3).contiguous()  # (T, n, rows, d_out)
    parts = [_kernel_rows(problem, per_position[t]) for t in range(positions)]
    block = parts[0][1]
    stacked = np.concatenate([rows for rows, _ in parts]) if positions > 1 else parts[0][0]
    count = parts[0][0].shape[0]
    at = [stacked[t * count : (t + 1) * count] for t in range(positions)]
    if positions == 1:
        return _Rows(stacked, at, at[0], block)
    summed = _kernel_rows(problem, cot.sum(dim=2))[0] if total else at[0][:0]
    return _Rows(stacked, at, summed, block)


def _by_position(layer: StructuredLayer, act: Tensor) -> Tensor:
    """A tile's inputs (n, T, ...) as (T·n, ...), position-major."""
    return act.transpose(0, 1).reshape(layer.positions * act.shape[0], *act.shape[2:])


def _position_gram(problem: Problem, layer: StructuredLayer, act: Tensor) -> np.ndarray:
    """The Gram of a layer's inputs over (position, sample), (T·n, T·n), position-major:
    entry (t·n + i, u·n + j) is ⟨a_it, a_ju⟩."""
    return _activation_gram(problem, layer, _by_position(layer, act))


def _position_factor(problem: Problem, layer: StructuredLayer, act: Tensor) -> np.ndarray | None:
    """Factor rows (T·n, D) of `_position_gram`, when the rule gives them."""
    return layer.rule.input_factor(layer.shape, _by_position(layer, act), problem.numpy_dtype)


def _shared_inputs(
    layers: Sequence[StructuredLayer], acts: Mapping[str, Tensor], others: Mapping[str, Tensor]
) -> list[list[StructuredLayer]]:
    """The layers grouped by equal inputs on these samples (Q, K and V projections of one
    residual stream), so each position pair's input Gram is formed once per group."""
    groups: list[list[StructuredLayer]] = []
    for layer in layers:
        for group in groups:
            first = group[0]
            if (
                first.rule is layer.rule
                and first.shape == layer.shape
                and torch.equal(acts[first.path], acts[layer.path])
                and torch.equal(others[first.path], others[layer.path])
            ):
                group.append(layer)
                break
        else:
            groups.append([layer])
    return groups


def _input_pairs(
    problem: Problem,
    layer: StructuredLayer,
    act: Tensor,
    other: Tensor | None,
    skip_zero: bool = True,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(t, t', S) with S = ⟨a_t, a'_t'⟩ for the position pairs of a block: t ≤ t' on a square
    block (``other`` None), every pair on a cross block; at T > 1, pairs whose S is zero are
    skipped (``skip_zero``; not where a bias adds 1 to S)."""
    positions = layer.positions
    for t in range(positions):
        for u in range(t if other is None else 0, positions):
            if other is None:
                right = None if u == t else act[:, u]
            else:
                right = other[:, u]
            s = _activation_gram(problem, layer, act[:, t], right)
            if skip_zero and positions > 1 and not s.any():
                continue
            yield t, u, s


@dataclass
class _Targets:
    """Where a layer's weight and bias blocks go (the same array when they share a kernel)."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    merged: bool
    """Weight and bias share a target: one Hadamard weight S + 1 (a ones column appended to
    the input factor) covers both."""


def _targets_of(layer: StructuredLayer, targets: Callable[[str], np.ndarray]) -> _Targets:
    weight = targets(layer.weight) if layer.weight is not None else None
    bias = targets(layer.bias) if layer.bias is not None else None
    if weight is not None and bias is weight:
        return _Targets(weight, None, True)
    return _Targets(weight, bias, False)


def _plus_one(s: np.ndarray, merged: bool) -> np.ndarray:
    return s + 1.0 if merged else s


class StructuredSource:
    """A sweep of structured layers as a tile source: K += scale · Σ_{t,t'} (S_tt' ∘ G_t G_t'ᵀ)
    per layer, with S_tt' the input Gram of a position pair (plus 1 where the bias shares the
    target) and G_t the cotangent rows at position t."""

    def __init__(
        self, problem: Problem, sweep: StructuredPass, targets: Callable[[str], np.ndarray]
    ) -> None:
        self.problem = problem
        self.sweep = sweep
        self.where = {layer.path: _targets_of(layer, targets) for layer in sweep.layers}

    def load(self, start: int, stop: int, *, check: bool) -> _Tile:
        acts, cots = gather(
            self.problem, self.sweep, (start, stop), (0, self.problem.rows_per_sample), check=check
        )
        rows = {path: _position_rows(self.problem, cot) for path, cot in cots.items()}
        return _Tile(acts, rows, stop - start)

    def _weighted(self, layers: Sequence[StructuredLayer]) -> list[StructuredLayer]:
        return [layer for layer in layers if self.where[layer.path].weight is not None]

    def add_diagonal(self, tile: _Tile, rows: slice) -> None:
        problem = self.problem
        alpha = problem.kernel_scale
        # Every operand is prepared first and the core's kernels then run back to back: a
        # torch operation between two of them would leave torch's OpenMP workers spinning
        # (about 7 ms) on the cores the kernels use, at half their speed. The factored layers
        # take one core call per kernel they add into (one for the full kernel).
        factored: dict[int, tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, int, int]]]]
        factored = {}
        gram: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []
        weighted = self._weighted(self.sweep.layers)
        for group in _shared_inputs(weighted, tile.acts, tile.acts):
            first = group[0]
            factor = _position_factor(problem, first, tile.acts[first.path])
            s: np.ndarray | None = None
            # Layers with equal inputs and one target (Q, K and V of the full kernel) add up
            # to one Hadamard-Gram of their cotangents side by side.
            shared: dict[tuple[int, bool], list[StructuredLayer]] = {}
            for layer in group:
                into = self.where[layer.path]
                assert into.weight is not None
                shared.setdefault((id(into.weight), into.merged), []).append(layer)
            for (_, merged), layers in shared.items():
                target = self.where[layers[0].path].weight
                assert target is not None
                parts = [tile.rows[layer.path].stacked for layer in layers]
                g = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
                shape = (tile.rows[first.path].block, first.positions)
                if factor is not None:  # S (+ 1) = [F, 1][F, 1]ᵀ, formed tile by tile
                    f = np.hstack([factor, np.ones_like(factor[:, :1])]) if merged else factor
                    factored.setdefault(id(target), (target[rows, rows], []))[1].append(
                        (g, f, *shape)
                    )
                else:
                    s = _position_gram(problem, first, tile.acts[first.path]) if s is None else s
                    gram.append((target[rows, rows], g, _plus_one(s, merged), *shape))
        for k, terms in factored.values():
            linalg.hadamard_gram_factored_accumulate_many(k, terms, alpha=alpha)
        for k, g, weight, block, positions in gram:
            linalg.hadamard_gram_accumulate(
                k, g, weight, block=block, alpha=alpha, positions=positions
            )
        del factored, gram
        for layer in self.sweep.layers:  # a bias apart: the Gram of Σ_t g_t (S is all ones)
            into = self.where[layer.path]
            if into.bias is not None:
                linalg.gram_accumulate(
                    into.bias[rows, rows], tile.rows[layer.path].total, alpha=alpha
                )

    def cross(self, left: _Tile, right: _Tile) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        problem = self.problem
        alpha = problem.kernel_scale
        weighted = self._weighted(self.sweep.layers)
        blocks: dict[str, np.ndarray] = {}
        for group in _shared_inputs(weighted, left.acts, right.acts):
            first = group[0].path
            skip = not any(self.where[layer.path].merged for layer in group)
            pairs = _input_pairs(problem, group[0], left.acts[first], right.acts[first], skip)
            for t, u, s in pairs:
                for layer in group:
                    g = left.rows[layer.path]
                    h = right.rows[layer.path]
                    weight = _plus_one(s, self.where[layer.path].merged)
                    x = linalg.hadamard_gram_cross(
                        g.at[t], h.at[u], weight, block=g.block, alpha=alpha
                    )
                    if layer.path in blocks:
                        blocks[layer.path] += x
                    else:
                        blocks[layer.path] = x
                    del x
                del s
        for layer in self.sweep.layers:
            into = self.where[layer.path]
            block = blocks.pop(layer.path, None)
            if into.weight is not None and block is not None:
                yield into.weight, block
            del block
            if into.bias is not None:
                g = left.rows[layer.path]
                h = right.rows[layer.path]
                cross = linalg.gram_cross(g.total, h.total)
                if alpha != 1.0:
                    cross *= alpha
                yield into.bias, cross

    def add_whole(self, tick: Callable[[int], object]) -> None:
        """All samples, ``sweep.group`` output rows per backward sweep."""
        problem = self.problem
        n = problem.n_samples
        rows = problem.rows_per_sample
        sweep = self.sweep
        if sweep.group >= rows:
            tile = self.load(0, n, check=True)
            self.add_diagonal(tile, slice(None))
            tick(sweep.units(n))
            return
        _add_row_groups(problem, sweep, self.where, tick)


@dataclass
class _Tile:
    """One sample tile of a sweep: each layer's inputs and its cotangent rows."""

    acts: dict[str, Tensor]
    rows: dict[str, _Rows]
    n: int


def _add_row_groups(
    problem: Problem,
    sweep: StructuredPass,
    where: Mapping[str, _Targets],
    tick: Callable[[int], object],
) -> None:
    """All samples, ``sweep.group`` < C_r output rows per backward sweep (rows concatenated or
    averaged: the kernel is a sum over rows).
    """
    n = problem.n_samples
    rows = problem.rows_per_sample
    scale = problem.kernel_scale
    # Row groups (trace / mean_pairs only): K = alpha · Σ_{t,t'} S_tt' ∘ Σ_groups G_gt G_gt'ᵀ,
    # so the cotangent Grams of each position pair are summed over groups first and the
    # activation Grams applied once at the end (one N×N buffer per layer and position pair,
    # and only Gram updates inside the loop).
    storage = {
        layer.path: torch.empty(
            n * sweep.group * layer.positions * layer.out_features,
            dtype=problem.dtype,
            device=problem.device,
        )
        for layer in sweep.layers
    }
    grams = {
        layer.path: {
            (t, u): np.zeros((n, n), dtype=problem.numpy_dtype)
            for t in range(layer.positions)
            for u in range(t, layer.positions)
        }
        for layer in sweep.layers
    }
    acts: dict[str, Tensor] = {}
    for r0 in range(0, rows, sweep.group):
        r1 = min(r0 + sweep.group, rows)
        seen, cots = gather(
            problem, sweep, (0, n), (r0, r1), tick, storage=storage, want_acts=r0 == 0
        )
        acts.update(seen)
        for layer in sweep.layers:
            g = _position_rows(problem, cots.pop(layer.path), total=False)
            for (t, u), m in grams[layer.path].items():
                if t == u:
                    linalg.gram_accumulate(m, g.at[t])
                else:
                    m += linalg.gram_cross(g.at[t], g.at[u])
            del g
        del seen, cots
    del storage
    for layer in sweep.layers:  # the bias: the Gram of Σ_t g_t, every pair in both orders
        into = where[layer.path]
        if into.bias is not None:
            for (t, u), m in grams[layer.path].items():
                into.bias += scale * m
                if t != u:
                    into.bias += scale * m.T
    weighted = [layer for layer in sweep.layers if where[layer.path].weight is not None]
    for group in _shared_inputs(weighted, acts, acts):
        skip = not any(where[layer.path].merged for layer in group)
        for t, u, s in _input_pairs(problem, group[0], acts[group[0].path], None, skip):
            for layer in group:
                into = where[layer.path]
                assert into.weight is not None
                m = grams[layer.path][(t, u)]
                m *= _plus_one(s, into.merged)
                m *= scale
                into.weight += m
                if t != u:
                    into.weight += m.T
            del s
    grams.clear()
