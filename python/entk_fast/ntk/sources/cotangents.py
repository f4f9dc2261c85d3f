"""The structured layers' output cotangents, and the check that makes them exact: each found
layer verified on the probe samples (`verify_layers`: its gradient is the one its rule
predicts), then per chunk of samples one forward vmapped over the samples, each run alone,
with a zero "probe" added to each layer's output (`lone_forward`), and one backward per row
group (`gather`). The cotangents are each sample's own by construction: no batched run is
compared with lone runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from ...errors import EntkError
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
from .layer_search import forward_with_probes

__all__ = ["gather", "lone_forward", "verify_layers"]


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
    """Keep the layers whose true parameter gradient on the probe samples, each run alone,
    matches the formula Σ_{n,t} g_nt a_ntᵀ of their rule.

    A safety net behind the usage count: a parameter touched outside its layer in a way the
    probe could not see would make the two differ. One vmapped forward (`lone_forward`) and
    one backward; a layer that misbehaves there is left out, the rest checked again.
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
        y, probes, acts = lone_forward(problem, layers, head, params, check_attention=True)
    except StructuredFallback as exc:
        rest = [layer for layer in layers if layer.path not in exc.paths]
        return verify_layers(problem, rest) if len(rest) < len(layers) else []
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    grads = _probe_grads(y, [*probes, *(params[name] for name in leaves)], weights)
    probe_grads = grads[: len(probes)]
    actual = dict(zip(leaves, grads[len(probes) :], strict=True))
    rtol = 1e-3 if problem.dtype == torch.float32 else 1e-8
    kept = []
    for layer, probe, cot in zip(layers, probes, probe_grads, strict=True):
        cot = torch.zeros_like(probe) if cot is None else cot
        cot = cot.reshape(-1, *layer.sample_shape)
        ok = True
        shape = params[layer.weight].shape if layer.weight is not None else None
        for name, pred in _predicted_grads(layer, acts[layer.path], cot, shape).items():
            true = actual[name]
            true = torch.zeros_like(pred) if true is None else true
            ok = ok and close(true, pred, rtol=rtol)
        if ok:
            kept.append(layer)
    return kept


def lone_forward(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    inputs: tuple[Tensor, ...],
    params: Mapping[str, Tensor],
    *,
    check_attention: bool = False,
) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """(R f (n, C_r), zero probes (n, 1, *sample shape) added to each layer's output, each
    layer's input (n, ...)), every sample run alone: one forward vmapped over the samples,
    each a batch of one, as the general path runs them.

    The samples do not meet under vmap, so a plain backward of R f gives each sample's own
    output cotangents (its lone ones), whatever the batched forward would do: a forward or
    backward that mixes samples cannot make the kernel inexact. ``check_attention``: compare
    each recomputed attention output with the module's own (after the vmap) and raise
    `StructuredFallback` for its projections where they differ. A forward vmap cannot run
    (``.item()``, data-dependent control flow) sends the layers to the general path; one that
    draws random numbers raises `NotVmappable`.
    """
    n = inputs[0].shape[0]
    paths = [layer.path for layer in layers]
    probes = [
        torch.zeros(
            (n, 1, *layer.sample_shape), dtype=problem.dtype, device=problem.device
        ).requires_grad_()
        for layer in layers
    ]

    def lone(
        probe: list[Tensor], *x: Tensor
    ) -> tuple[Tensor, tuple[Tensor, ...], dict[str, tuple[Tensor, Tensor]]]:
        alone = tuple(t.unsqueeze(0) for t in x)
        outputs: dict[str, tuple[Tensor, Tensor]] = {}
        y, _, acts = forward_with_probes(
            problem,
            layers,
            alone,
            params,
            probe,
            attention_outputs=outputs if check_attention else None,
        )
        return y[0], tuple(acts[path][0] for path in paths), outputs

    try:
        with (
            torch.enable_grad(),
            quiet_batching_fallback(),
            vmappable_forward(),
            per_sample_attention(),
        ):
            y, acts, attention = vmap(lone)(probes, *inputs)
    except (StructuredFallback, torch.OutOfMemoryError):
        raise
    except NotVmappable as exc:
        if exc.random:
            raise
        # the general path's per-sample autograd fallback computes these layers exactly
        raise StructuredFallback(paths, "the forward cannot run under vmap") from exc
    except Exception as exc:  # noqa: BLE001 - the general path reports the model's own error
        raise StructuredFallback(paths, f"the forward failed on lone samples: {exc}") from exc
    wrong = {owner for owner, (own, recomputed) in attention.items() if not close(own, recomputed)}
    differ = [layer.path for layer in layers if layer.owner in wrong]
    if differ:
        raise StructuredFallback(differ, "its recomputed attention differs")
    return y, probes, dict(zip(paths, acts, strict=True))


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
    samples per lone forward (`lone_forward`) and batched backward; ``tick(1)`` after each
    chunk. ``storage`` (flat tensors per layer path, large enough) receives the cotangents:
    one buffer reused across calls spares the allocator a large short-lived block per call.
    ``check`` (default: ``want_acts``; once per sample is enough) compares each recomputed
    attention output with the module's own.
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
        y, probes, seen = lone_forward(
            problem, layers, inputs, problem.params, check_attention=check
        )
        names = problem.samples_from(s)
        require_finite(y, "output", names)
        for layer in layers:
            require_finite(seen[layer.path], "input", names, layer=layer.path)
        at = slice(s - start, e - start)
        per_row = group > 1 and group * n * problem.probe.activation_numel * problem.itemsize > (
            _BATCHED_BACKWARD_BYTES
        )
        grads: Sequence[Tensor | None]
        try:
            if per_row:  # one plain backward per row, written straight into its column
                for j in range(group):
                    grads = torch.autograd.grad(
                        y[:, r0 + j].sum(), probes, retain_graph=j < group - 1, allow_unused=True
                    )
                    _store(layers, grads, cots, (at, j), names)
            else:
                eye = torch.eye(n_rows, dtype=y.dtype, device=y.device)[r0:r1]
                basis = eye.unsqueeze(1).expand(group, n, n_rows)
                grads = _probe_grads(y, probes, basis, batched=True)
        except torch.OutOfMemoryError:
            raise
        except EntkError:
            raise
        except Exception as exc:
            paths = [layer.path for layer in layers]
            raise StructuredFallback(paths, f"batched backward failed: {exc}") from exc
        if not per_row:
            _store(layers, grads, cots, (at,), names, group=group)
        if want_acts:
            for layer in layers:
                acts[layer.path][at] = seen[layer.path].reshape(acts[layer.path][at].shape)
        del y, probes, seen
        if tick is not None:
            tick(1)
    return acts, cots


#: Row groups whose batched backward would hold more than this many bytes of activations
#: (rows × samples × the probe's activations per sample) take one plain backward per row
#: instead: each row's transients stay in cache, where torch's vmap over the backward runs
#: memory-bound (1.6× slower on the paper's modular-addition MLP, N = 841, 14 rows).
_BATCHED_BACKWARD_BYTES = 8 * 2**20


def _store(
    layers: Sequence[StructuredLayer],
    grads: Sequence[Tensor | None],
    cots: Mapping[str, Tensor],
    where: tuple[slice, int] | tuple[slice],
    names: Callable[[int], str],
    *,
    group: int = 0,
) -> None:
    """Write each layer's probe gradients into its cotangents (n, rows, T, d_out) at
    ``where``: (samples, row) for one row's gradients (n, ...), else (samples,) for ``group``
    rows' (group, n, ...)."""
    for layer, grad in zip(layers, grads, strict=True):
        into = cots[layer.path]
        if grad is None:
            into[where] = 0
        elif group:
            grad = grad.reshape(group, -1, layer.positions, layer.out_features)
            require_finite(grad, "cotangent", names, dim=1, layer=layer.path)
            into[where] = grad.transpose(0, 1)
        else:
            grad = grad.reshape(-1, layer.positions, layer.out_features)
            require_finite(grad, "cotangent", names, layer=layer.path)
            into[where] = grad


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
            # ⟨w, y⟩ rather than grad_outputs=w: torch's first call with explicit output
            # gradients imports sympy (0.45 s of a fresh process's first eNTK).
            grads = torch.autograd.grad((y * weights[0]).sum(), inputs, allow_unused=True)
            return tuple(None if g is None else g.unsqueeze(0) for g in grads)
        if batched:
            return torch.autograd.grad(
                y, inputs, grad_outputs=weights, is_grads_batched=True, allow_unused=True
            )
        return torch.autograd.grad((y * weights).sum(), inputs, allow_unused=True)
