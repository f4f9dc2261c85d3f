"""The structured exact path for layers with a rule in ``layers.LAYER_RULES``, used once.

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
the caller redoes the work with it on the general path. Each chunk's outputs, layer inputs
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
from ..plan import StructuredPass
from ..problem import Problem
from .general import NotVmappable, quiet_batching_fallback, vmappable_forward
from .layers import LAYER_RULES, StructuredLayer

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
    g = cot.reshape(cot.shape[0], layer.out_features)
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
        y, probes, acts = _forward_with_probes(problem, layers, head, params)
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
        acts[layer.path] = layer.rule.input_buffer(
            stop - start, layer.shape, problem.dtype, problem.device
        )
    for s in range(start, stop, sweep.chunk):
        e = min(s + sweep.chunk, stop)
        n = e - s
        inputs = tuple(x[s:e] for x in problem.inputs)
        y, probes, seen = _forward_with_probes(problem, layers, inputs, problem.params)
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
                grad = grad.reshape(group, n, layer.out_features)
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

    try:
        with torch.no_grad(), quiet_batching_fallback(), vmappable_forward():
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
    """⟨a_n, a_n'⟩ between two sample sets (one: its Gram)."""
    return layer.rule.input_gram(layer.shape, act, other, problem.numpy_dtype)


def _kernel_rows(problem: Problem, cot: Tensor) -> tuple[np.ndarray, int]:
    """Cotangents (n, rows, d_out) as the rows of the Hadamard-Gram, and rows per S entry."""
    rows = problem.as_kernel_rows(cot)
    return rows, 1 if problem.reduction.rows_concatenated else cot.shape[1]


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


class StructuredSource:
    """A sweep of structured layers as a tile source: K += scale · (A ∘ G Gᵀ) per layer, with A
    the input Gram (plus 1 where the bias shares the target) and G the cotangent rows."""

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
        rows = {path: _kernel_rows(self.problem, cot) for path, cot in cots.items()}
        return _Tile(acts, rows, stop - start)

    def add_diagonal(self, tile: _Tile, rows: slice) -> None:
        problem = self.problem
        for layer in self.sweep.layers:
            g, block = tile.rows[layer.path]
            into = self.where[layer.path]
            if into.weight is not None:
                s = _activation_gram(problem, layer, tile.acts[layer.path])
                if into.merged:
                    s += 1.0
                linalg.hadamard_gram_accumulate(
                    into.weight[rows, rows], g, s, block=block, alpha=problem.kernel_scale
                )
                del s
            if into.bias is not None:
                ones = np.ones((tile.n, tile.n), dtype=problem.numpy_dtype)
                linalg.hadamard_gram_accumulate(
                    into.bias[rows, rows], g, ones, block=block, alpha=problem.kernel_scale
                )
                del ones

    def cross(self, left: _Tile, right: _Tile) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        problem = self.problem
        for layer in self.sweep.layers:
            g, block = left.rows[layer.path]
            h, _ = right.rows[layer.path]
            into = self.where[layer.path]
            if into.weight is not None:
                s = _activation_gram(problem, layer, left.acts[layer.path], right.acts[layer.path])
                if into.merged:
                    s += 1.0
                yield (
                    into.weight,
                    linalg.hadamard_gram_cross(g, h, s, block=block, alpha=problem.kernel_scale),
                )
                del s
            if into.bias is not None:
                ones = np.ones((left.n, right.n), dtype=problem.numpy_dtype)
                yield (
                    into.bias,
                    linalg.hadamard_gram_cross(g, h, ones, block=block, alpha=problem.kernel_scale),
                )

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
    """One sample tile of a sweep: each layer's inputs and its cotangent rows (with the rows
    per Hadamard-weight entry)."""

    acts: dict[str, Tensor]
    rows: dict[str, tuple[np.ndarray, int]]
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
        into = where[layer.path]
        if into.bias is not None:
            into.bias += problem.kernel_scale * m
        if into.weight is not None:
            s = _activation_gram(problem, layer, acts.pop(layer.path))
            if into.merged:
                s += 1.0
            m *= s
            del s
            m *= problem.kernel_scale
            into.weight += m
        del m
