"""The structured exact path for ``nn.Linear`` and ``nn.Embedding`` layers used once.

For y = W a (+ b) applied once per sample, the layer's eNTK block is

    K[(n, c), (n', c')] = ⟨a_n, a_n'⟩ · ⟨g_nc, g_n'c'⟩  (+ ⟨g_nc, g_n'c'⟩ for the bias),

with a the layer's input and g_nc = ∂(R f)_c(x_n)/∂y_n the output cotangent; an embedding is the
one-hot case, ⟨a_n, a_n'⟩ = [i_n = i_n'] (0 on the padding index). The two small Gram matrices
meet in the Rust ``hadamard_gram_accumulate``. Cotangents come from one batched forward with a
zero "probe" added to each layer's output and one batched backward per sweep.

A layer qualifies only if it is an exact ``nn.Linear`` / ``nn.Embedding`` that ran once in the
probe pass, on one vector (index) per sample, whose parameters no other operation touched, in
a model whose samples do not interact; the probe also runs each of its samples alone and
requires row i of the layer's batched input to be that layer's input for sample i alone
(a Linear applied to learned prototypes, or to permuted / sorted rows, fails this); a numeric
check on the probe samples confirms it, including that each sample's output cotangents are
those of the sample run alone. Everything else takes the general path. On the full batch,
every chunk's batched forward is compared once with its samples run alone (one vmapped
forward, as the general path runs them); when a qualified layer misbehaves there (it does not
run, runs twice or on another number of rows, its input rows or the outputs differ from the
lone runs, or the batched forward / backward fails), :class:`StructuredFallback` names it and
the caller redoes the work with it on the general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from .. import linalg
from .budget import StructuredPass
from .jacobian import vmappable_forward
from .prepare import Problem
from .quiet import quiet_batching_fallback

__all__ = [
    "StructuredFallback",
    "StructuredLayer",
    "accumulate_pass",
    "find_layers",
    "gather",
    "verify_layers",
]


class StructuredFallback(Exception):  # noqa: N818 - a control-flow signal, not a user error
    """Internal: these structured layers cannot be computed on the full batch; use the general
    path for them (raised before anything is trusted; the caller starts over)."""

    def __init__(self, paths: Sequence[str], reason: str) -> None:
        super().__init__(f"structured layers {list(paths)}: {reason}")
        self.paths = tuple(paths)
        self.reason = reason


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
        if path not in probe.per_sample_layers:  # its rows are not the samples, one each
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
            first = args[0] if args else None
            if path in acts:
                raise StructuredFallback([path], "ran more than once on this batch")
            if (
                not isinstance(first, Tensor)
                or not isinstance(output, Tensor)
                or first.dim() == 0
                or first.shape[0] != n
                or output.shape != probe.shape
            ):
                shape = tuple(first.shape) if isinstance(first, Tensor) else None
                raise StructuredFallback(
                    [path], f"ran on input {shape} instead of one row for each of {n} samples"
                )
            acts[path] = first.detach()
            return output + probe

        return hook

    handles = [
        problem.model.get_submodule(layer.path).register_forward_hook(make_hook(layer.path, probe))
        for layer, probe in zip(layers, probes, strict=True)
    ]
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
        y, probes, acts = _forward_with_probes(problem, layers, head, params)
    except StructuredFallback as exc:
        rest = [layer for layer in layers if layer.path not in exc.paths]
        return verify_layers(problem, rest) if len(rest) < len(layers) else []
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
    alone = _lone_cotangents(problem, layers, head, weights)
    kept = []
    for layer, probe, cot in zip(layers, probes, probe_grads, strict=True):
        cot = torch.zeros_like(probe) if cot is None else cot
        lone = alone.get(layer.path)
        scale = max(float(cot.abs().max()), 1e-30)
        ok = lone is not None and bool(torch.allclose(lone, cot, rtol=rtol, atol=rtol * scale))
        shape = params[layer.weight].shape if layer.weight is not None else None
        for name, pred in _predicted_grads(layer, acts[layer.path], cot, shape).items():
            true = actual[name]
            true = torch.zeros_like(pred) if true is None else true
            scale = max(float(pred.abs().max()), float(true.abs().max()), 1e-30)
            ok = ok and bool(torch.allclose(true, pred, rtol=rtol, atol=rtol * scale))
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
    stacked over the probe samples (a layer that misbehaves alone is left out)."""
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
            return _lone_cotangents(problem, rest, head, weights)
        with torch.enable_grad():
            grads = torch.autograd.grad((y * weights[i : i + 1]).sum(), probes, allow_unused=True)
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
    """Inputs (n, d_in) or indices (n,) and cotangents (n, rows, d_out) of the sweep's layers.

    For the samples ``start:stop`` and the output rows ``r0:r1`` of R f, ``sweep.chunk``
    samples per forward and batched backward; ``tick(1)`` after each chunk. ``storage`` (flat
    tensors per layer path, large enough) receives the cotangents: one buffer reused across
    calls spares the allocator a large short-lived block per call. ``check`` (default:
    ``want_acts``; once per sample is enough) compares each chunk's batched forward with the
    samples run alone (:func:`_check_alone`).
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
        shape = (stop - start, group, layer.out_features)
        if storage is None:
            cots[layer.path] = torch.empty(shape, dtype=problem.dtype, device=problem.device)
        else:
            cots[layer.path] = storage[layer.path][: math.prod(shape)].view(shape)
        if not want_acts:
            continue
        if layer.kind == "linear":
            acts[layer.path] = torch.empty(
                (stop - start, layer.in_features), dtype=problem.dtype, device=problem.device
            )
        else:
            acts[layer.path] = torch.empty((stop - start,), dtype=torch.long, device=problem.device)
    for s in range(start, stop, sweep.chunk):
        e = min(s + sweep.chunk, stop)
        n = e - s
        inputs = tuple(x[s:e] for x in problem.inputs)
        y, probes, seen = _forward_with_probes(problem, layers, inputs, problem.params)
        if check:
            _check_alone(problem, layers, inputs, y, seen)
        eye = torch.eye(n_rows, dtype=y.dtype, device=y.device)[r0:r1]
        basis = eye.unsqueeze(1).expand(group, n, n_rows)
        try:
            with quiet_batching_fallback():
                grads = torch.autograd.grad(
                    y, probes, grad_outputs=basis, is_grads_batched=True, allow_unused=True
                )
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
                cots[layer.path][at] = grad.reshape(group, n, layer.out_features).transpose(0, 1)
            if want_acts:
                acts[layer.path][at] = seen[layer.path].reshape(acts[layer.path][at].shape)
        del y, probes, seen, grads, basis
        if tick is not None:
            tick(1)
    return acts, cots


def _check_alone(
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
    modules = [problem.model.get_submodule(path) for path in paths]

    def lone(*x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        found: dict[str, Tensor] = {}

        def make_hook(path: str) -> Callable[..., None]:
            def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
                if path in found or not args or not isinstance(args[0], Tensor):
                    raise StructuredFallback([path], "runs differently on a lone sample")
                found[path] = args[0]

            return hook

        handles = [
            m.register_forward_hook(make_hook(p)) for m, p in zip(modules, paths, strict=True)
        ]
        try:
            out = problem.forward(tuple(t.unsqueeze(0) for t in x))
        finally:
            for handle in handles:
                handle.remove()
        missing = [path for path in paths if path not in found]
        if missing:
            raise StructuredFallback(missing, "does not run on a lone sample")
        return problem.out_map.apply(out)[0], tuple(found[path] for path in paths)

    with torch.no_grad(), quiet_batching_fallback(), vmappable_forward():
        out, acts = vmap(lone)(*inputs)
    batched = y.detach()
    if not _close(out, batched):
        raise StructuredFallback(paths, "the samples interact in the batched forward")
    bad = [
        path
        for path, act in zip(paths, acts, strict=True)
        if act.numel() != seen[path].numel()
        or not _close(act.reshape(seen[path].shape).to(seen[path].dtype), seen[path])
    ]
    if bad:
        raise StructuredFallback(bad, "its input rows are not the samples run alone")


def _close(a: Tensor, b: Tensor) -> bool:
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    rtol = 1e-4 if a.dtype != torch.float64 else 1e-9
    scale = max(float(a.abs().max()), float(b.abs().max())) if a.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * (scale or 1.0)))


def _activation_gram(
    problem: Problem, layer: StructuredLayer, act: Tensor, other: Tensor | None = None
) -> np.ndarray:
    """⟨a_n, a_n'⟩ between two sample sets (one: its Gram); index equality for an embedding."""
    if layer.kind == "linear":
        a = act.detach().cpu().numpy()
        return linalg.gram(a) if other is None else linalg.gram_cross(a, other.cpu().numpy())
    idx = act.cpu().numpy()
    jdx = idx if other is None else other.cpu().numpy()
    same = (idx[:, None] == jdx[None, :]).astype(problem.numpy_dtype)
    if layer.padding_idx is not None:
        same *= (idx != layer.padding_idx).astype(problem.numpy_dtype)[:, None]
        same *= (jdx != layer.padding_idx).astype(problem.numpy_dtype)[None, :]
    return same


def _kernel_rows(problem: Problem, cot: Tensor) -> tuple[np.ndarray, int]:
    """Cotangents (n, rows, d_out) as the rows of the Hadamard-Gram, and rows per S entry."""
    n = cot.shape[0]
    if problem.mode == "rows":
        return cot.reshape(n * cot.shape[1], cot.shape[2]).detach().cpu().numpy(), cot.shape[1]
    return cot.reshape(n, -1).detach().cpu().numpy(), 1


@dataclass
class _Targets:
    """Where a layer's weight and bias blocks go (the same array when they share a kernel)."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    merged: bool
    """Weight and bias share a target: one Hadamard weight S + 1 covers both."""


def _targets_of(layer: StructuredLayer, targets: Callable[[str], np.ndarray]) -> _Targets:
    weight = targets(layer.weight) if layer.weight is not None else None
    bias = targets(layer.bias) if layer.bias is not None else None
    if weight is not None and bias is weight:
        return _Targets(weight, None, True)
    return _Targets(weight, bias, False)


def accumulate_pass(
    problem: Problem,
    sweep: StructuredPass,
    targets: Callable[[str], np.ndarray],
    tick: Callable[[int], object],
) -> None:
    """Add each layer's block into ``targets(param_name)`` (the full or the layer kernel)."""
    if sweep.tile >= problem.n_samples:
        _accumulate_untiled(problem, sweep, targets, tick)
    else:
        _accumulate_tiled(problem, sweep, targets, tick)


def _accumulate_untiled(
    problem: Problem,
    sweep: StructuredPass,
    targets: Callable[[str], np.ndarray],
    tick: Callable[[int], object],
) -> None:
    """All samples, ``sweep.group`` output rows per backward sweep."""
    n = problem.n_samples
    rows = problem.rows_per_sample
    if sweep.group >= rows:
        all_acts, cots = gather(problem, sweep, (0, n), (0, rows), tick)
        for layer in sweep.layers:
            g, block = _kernel_rows(problem, cots.pop(layer.path))
            _add_block(
                problem, layer, _targets_of(layer, targets), g, block, all_acts.pop(layer.path)
            )
            del g
        return
    # Row groups (trace / mean_pairs only): K = alpha · S ∘ Σ_groups G_g G_gᵀ, so the Gram of
    # the cotangents is summed over groups first and the activation Gram applied once at the
    # end (one N×N buffer per layer, and only Gram updates inside the loop).
    storage = {
        layer.path: torch.empty(
            n * sweep.group * layer.out_features, dtype=problem.dtype, device=problem.device
        )
        for layer in sweep.layers
    }
    grams = {layer.path: np.zeros((n, n), dtype=problem.numpy_dtype) for layer in sweep.layers}
    acts: dict[str, Tensor] = {}
    for r0 in range(0, rows, sweep.group):
        r1 = min(r0 + sweep.group, rows)
        seen, cots = gather(
            problem, sweep, (0, n), (r0, r1), tick, storage=storage, want_acts=r0 == 0
        )
        acts.update(seen)
        for layer in sweep.layers:
            g, _ = _kernel_rows(problem, cots.pop(layer.path))
            linalg.gram_accumulate(grams[layer.path], g)
            del g
        del seen, cots
    del storage
    for layer in sweep.layers:
        m = grams.pop(layer.path)
        into = _targets_of(layer, targets)
        if into.bias is not None:
            into.bias += problem.alpha * m
        if into.weight is not None:
            s = _activation_gram(problem, layer, acts.pop(layer.path))
            if into.merged:
                s += 1.0
            m *= s
            del s
            m *= problem.alpha
            into.weight += m
        del m


def _add_block(
    problem: Problem,
    layer: StructuredLayer,
    into: _Targets,
    g: np.ndarray,
    block: int,
    act: Tensor,
) -> None:
    """One layer's whole block from its cotangent rows ``g`` and inputs ``act``."""
    n = problem.n_samples
    if into.weight is not None:
        s = _activation_gram(problem, layer, act)
        if into.merged:
            s += 1.0
        linalg.hadamard_gram_accumulate(into.weight, g, s, block=block, alpha=problem.alpha)
        del s
    if into.bias is not None:
        ones = np.ones((n, n), dtype=problem.numpy_dtype)
        linalg.hadamard_gram_accumulate(into.bias, g, ones, block=block, alpha=problem.alpha)


def _accumulate_tiled(
    problem: Problem,
    sweep: StructuredPass,
    targets: Callable[[str], np.ndarray],
    tick: Callable[[int], object],
) -> None:
    """Tile pairs (i ≤ j): tile i's cotangents are held while tile j's are recomputed."""
    n = problem.n_samples
    rows = problem.rows_per_sample
    per = problem.kernel_rows_per_sample
    alpha = problem.alpha
    where = {layer.path: _targets_of(layer, targets) for layer in sweep.layers}
    tiles = [(a, min(a + sweep.tile, n)) for a in range(0, n, sweep.tile)]
    for i, (a, b) in enumerate(tiles):
        acts_i, cots_i = gather(problem, sweep, (a, b), (0, rows))
        left = {path: _kernel_rows(problem, cot) for path, cot in cots_i.items()}
        del cots_i
        ri = slice(a * per, b * per)
        for layer in sweep.layers:
            g, block = left[layer.path]
            into = where[layer.path]
            if into.weight is not None:
                s = _activation_gram(problem, layer, acts_i[layer.path])
                if into.merged:
                    s += 1.0
                linalg.hadamard_gram_accumulate(into.weight[ri, ri], g, s, block=block, alpha=alpha)
                del s
            if into.bias is not None:
                ones = np.ones((b - a, b - a), dtype=problem.numpy_dtype)
                linalg.hadamard_gram_accumulate(
                    into.bias[ri, ri], g, ones, block=block, alpha=alpha
                )
                del ones
        tick(1)
        for c, d in tiles[i + 1 :]:
            acts_j, cots_j = gather(problem, sweep, (c, d), (0, rows), check=False)
            rj = slice(c * per, d * per)
            for layer in sweep.layers:
                g, block = left[layer.path]
                h, _ = _kernel_rows(problem, cots_j.pop(layer.path))
                into = where[layer.path]
                if into.weight is not None:
                    s = _activation_gram(problem, layer, acts_i[layer.path], acts_j[layer.path])
                    if into.merged:
                        s += 1.0
                    cross = linalg.hadamard_gram_cross(g, h, s, block=block, alpha=alpha)
                    del s
                    into.weight[ri, rj] += cross
                    into.weight[rj, ri] += cross.T
                    del cross
                if into.bias is not None:
                    ones = np.ones((b - a, d - c), dtype=problem.numpy_dtype)
                    cross = linalg.hadamard_gram_cross(g, h, ones, block=block, alpha=alpha)
                    into.bias[ri, rj] += cross
                    into.bias[rj, ri] += cross.T
                    del ones, cross
                del h
            del acts_j, cots_j
            tick(1)
        del acts_i, left
