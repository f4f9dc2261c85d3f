"""A cheap look at what the model does, on up to 8 samples (0, 1 and spread to N − 1).

One batched forward finds the output size C, how often each module runs and each parameter
is touched (reuse detection for the structured path), the shapes seen by ``nn.Linear`` /
``nn.Embedding`` layers and a per-sample activation size for memory planning. Each probe
sample then runs alone: whether the samples interact inside a batch (outputs differ), and
which Linear / Embedding layers see the samples row by row (row i of the batched input equals
the input of sample i alone), which the structured path requires. The lone runs are one
vmapped call (each sample a batch of one, as the general path runs them); where vmap cannot
run the forward, one call per sample, which also names a sample that fails alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..errors import InvalidArgumentError
from .checks import close, close_per_sample, require_finite, sample_namer
from .layers import LAYER_RULES
from .vmapping import load_forward_ad, per_sample_attention, quiet_batching_fallback

__all__ = [
    "DEFAULT_CALL",
    "check_derivative",
    "ModelCall",
    "ProbeResult",
    "failing_sample",
    "forward_batch",
    "probe_indices",
    "run_probe",
    "select_positions",
]


@dataclass
class ProbeResult:
    """What one forward pass on ``batch`` samples revealed."""

    batch: int
    output_shape: tuple[int, ...]
    """Per-sample output shape; ``n_outputs`` is its product (C)."""
    n_outputs: int
    activation_numel: int
    """Conservative count of intermediate values per sample (for memory planning)."""
    calls: Counter[str] = field(default_factory=Counter)
    """Module path -> number of forward calls."""
    io_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    """structured-rule layer path (``nn.Linear``, ``nn.Embedding``) -> (input shape, output shape)
    at its first call."""
    usage: Counter[str] = field(default_factory=Counter)
    """Canonical parameter name -> number of torch operations that take it as an argument."""
    batch_independent: bool = True
    vmappable: bool = True
    """Whether the lone runs ran under vmap (False: the forward cannot, e.g. a Hugging Face
    model with a 2-D attention mask; the general path then takes per-sample autograd)."""
    """Whether each probe sample's output is the same alone and inside the probe batch."""
    indices: tuple[int, ...] = ()
    """The samples the probe ran (batched, in this order, and each alone)."""
    per_sample_layers: frozenset[str] = frozenset()
    """Linear / Embedding paths whose batched input has one row per sample, each equal to
    that layer's input when the sample runs alone (the structured path needs this)."""


_METADATA = frozenset(
    {"dtype", "device", "shape", "requires_grad", "is_cuda", "ndim", "layout", "is_sparse"}
)
"""Tensor attributes whose reads do not use the values (``nn.MultiheadAttention`` checks its
projection's dtype and device before using it)."""


def _reads_metadata(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is the getter of a tensor attribute in `_METADATA`."""
    owner = getattr(func, "__self__", None)
    return (
        getattr(func, "__name__", "") == "__get__" and getattr(owner, "__name__", "") in _METADATA
    )


class _UsageCounter(TorchFunctionMode):
    """Counts the torch operations that receive each parameter tensor as an argument."""

    def __init__(self, names_by_id: Mapping[int, str]) -> None:
        super().__init__()
        self.names_by_id = names_by_id
        self.counts: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if _reads_metadata(func):
            return func(*args, **kwargs)
        for leaf in pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, Tensor):
                name = self.names_by_id.get(id(leaf))
                if name is not None:
                    self.counts[name] += 1
        return func(*args, **kwargs)


@dataclass(frozen=True)
class ModelCall:
    """How the model is called on the input tensors, and what of its output is differentiated.

    ``keys`` has one entry per input tensor: None for a positional argument, a name for a
    keyword argument (inputs given as a dict); empty means all positional. ``output_fn`` maps
    the model's output (a tensor, a dataclass such as a Hugging Face ``ModelOutput``, a
    tuple) to the tensor (n, ...) whose eNTK is computed, e.g. ``lambda o: o.logits[:, -1]``.
    """

    keys: tuple[str | None, ...] = ()
    output_fn: Callable[[Any], Any] | None = None
    constants: tuple[tuple[str, Any], ...] = ()
    """Keyword arguments passed to every call as they are (``output_hidden_states=True``)."""
    positions: bool = False
    """True: the last input tensor is not the model's but the readout positions (n,) (int):
    sample i's output is row ``positions[i]`` of dim 1 of what ``output_fn`` returns (a
    per-sample token position, e.g. the labelled word or the last real token of a padded
    batch)."""


DEFAULT_CALL = ModelCall()


def forward_batch(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    call: ModelCall = DEFAULT_CALL,
) -> Any:
    """The model's output on a batch (through ``call.output_fn``), with ``params`` and
    ``buffers`` substituted."""
    positions = None
    if call.positions:
        inputs, positions = inputs[:-1], inputs[-1]
    keys = call.keys or (None,) * len(inputs)
    args = tuple(x for x, key in zip(inputs, keys, strict=True) if key is None)
    kwargs = {key: x for x, key in zip(inputs, keys, strict=True) if key is not None}
    kwargs.update(call.constants)
    out = functional_call(model, (dict(params), dict(buffers)), args, kwargs)
    out = out if call.output_fn is None else call.output_fn(out)
    return out if positions is None else select_positions(out, positions)


def select_positions(out: Any, positions: Tensor) -> Any:
    """Row ``positions[i]`` of dim 1 of sample i's output: (n, T, ...) -> (n, ...). A gather,
    so that it runs under vmap too (each sample's own position)."""
    if not isinstance(out, Tensor) or out.dim() < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidArgumentError(
            "positions: the model's output (after output_fn) must be (n, T, ...) with the "
            f"positions along dim 1, got {shape}"
        )
    index = positions.reshape(-1, 1, *([1] * (out.dim() - 2))).expand(-1, 1, *out.shape[2:])
    return torch.gather(out, 1, index).squeeze(1)


def _numel(value: Any) -> int:
    return sum(leaf.numel() for leaf in pytree.tree_leaves(value) if isinstance(leaf, Tensor))


def _check_output(out: Any, batch: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise InvalidArgumentError(
            f"the model must return a single tensor, got {type(out).__name__}; pass "
            "output_fn= to pick the outputs whose eNTK you want (e.g. output_fn=lambda o: "
            "o.logits[:, -1] for a language model's last-position logits)"
        )
    if not (out.is_floating_point() or out.is_complex()):
        raise InvalidArgumentError(f"the model's output must be floating point, got {out.dtype}")
    if out.is_complex():
        raise InvalidArgumentError("complex model outputs are not supported")
    if out.dim() == 0 or out.shape[0] != batch:
        raise InvalidArgumentError(
            f"the model's output must have the samples along dim 0: on {batch} sample(s) it "
            f"returned shape {tuple(out.shape)}"
        )
    if out[0].numel() == 0:
        raise InvalidArgumentError("the model's output is empty (C = 0)")
    return out


_MAX_PROBE = 8
"""Samples the probe runs: the first two, then evenly spaced ones up to the last."""


def probe_indices(n_samples: int) -> tuple[int, ...]:
    """Which samples the probe runs: all when N ≤ 8, else 0, 1 and six spread up to N − 1."""
    if n_samples <= _MAX_PROBE:
        return tuple(range(n_samples))
    rest = _MAX_PROBE - 2
    spread = {2 + round(k * (n_samples - 3) / (rest - 1)) for k in range(rest)}
    return (0, 1, *sorted(spread))


def run_probe(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    sample_name: Callable[[int], str] | None = None,
    call: ModelCall = DEFAULT_CALL,
) -> ProbeResult:
    """Run the model on a few samples (`probe_indices`) batched and alone; record it.

    Each probe sample also runs alone: the model is batch independent when every sample's
    output is the same alone and inside the batch, and a Linear / Embedding layer sees the
    samples row by row (``per_sample_layers``) when, in every lone run, it ran once on one
    row that equals the row of that sample in the batched run. ``sample_name`` names a
    sample in messages (default ``"sample i"``).
    """
    n_samples = inputs[0].shape[0]
    indices = probe_indices(n_samples)
    name = sample_name or sample_namer(n_samples)
    batch = len(indices)
    if indices == tuple(range(batch)):
        head = tuple(x[:batch] for x in inputs)
    else:
        where = torch.tensor(indices, device=inputs[0].device)
        head = tuple(x.index_select(0, where) for x in inputs)
    names_by_id = {id(t): name for name, t in params.items()}
    structured_types = tuple(LAYER_RULES)
    calls: Counter[str] = Counter()
    io_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    layer_inputs: dict[str, Tensor] = {}
    act = [0]
    record = [True]

    def make_hook(path: str, module: nn.Module) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls[path] += 1
            if record[0]:
                act[0] += _numel(output)
            if isinstance(module, nn.MultiheadAttention) and record[0] and args:
                query, out = args[0], output[0] if isinstance(output, tuple) else output
                if isinstance(query, Tensor) and isinstance(out, Tensor):
                    io_shapes.setdefault(path, (tuple(query.shape), tuple(out.shape)))
            if isinstance(module, structured_types) and path not in layer_inputs:
                first = args[0] if args else None
                if isinstance(first, Tensor):
                    layer_inputs[path] = first.detach().clone()
                    if record[0] and isinstance(output, Tensor):
                        io_shapes[path] = (tuple(first.shape), tuple(output.shape))

        return hook

    handles = [
        module.register_forward_hook(make_hook(path, module))
        for path, module in model.named_modules()
    ]
    counter = _UsageCounter(names_by_id)
    try:
        # Attention as the lone runs (and the structured path's batched forward, under
        # autograd) compute it: not through fused inference kernels, whose output can differ
        # (TransformerEncoder's nested-tensor path zeroes padded positions).
        with torch.no_grad(), counter, per_sample_attention():
            out = _checked_forward(
                model, params, buffers, head, batch, names=lambda i: name(indices[i]), call=call
            )
        out = _check_output(out, batch)
        require_finite(out, "output", lambda i: name(indices[i]))
        batched_calls = Counter(calls)
        batched_inputs = dict(layer_inputs)
        record[0] = False
        alone: list[Tensor] = []
        rowwise = set(batched_inputs) if batch > 1 else set()
        vmapped = _vmapped_lone_runs(model, params, buffers, head, call, calls, layer_inputs)
        # One sample: whether vmap runs the forward is all that is asked (a Hugging Face mask
        # check calls .item() even on one unpadded sample); its run is not compared.
        one_vmappable = batch == 1 and vmapped is not None
        if batch == 1:
            vmapped = None
        if vmapped is not None:
            outputs, lone_inputs = vmapped
            alone = [_check_output(outputs[i], 1) for i in range(batch)]
            for path in list(rowwise):
                lone = lone_inputs.get(path)
                if not _rows_match(lone, calls[path], batched_inputs[path], batch, slice(0, batch)):
                    rowwise.discard(path)
        for i in range(batch if vmapped is None else 0):
            calls.clear()
            layer_inputs.clear()
            with torch.no_grad():
                single = _checked_forward(
                    model,
                    params,
                    buffers,
                    tuple(x[i : i + 1] for x in head),
                    1,
                    lone=batch > 1,
                    call=call,
                )
            alone.append(_check_output(single, 1))
            for path in list(rowwise):
                a = layer_inputs.get(path)
                lone = None if a is None else a.unsqueeze(0)
                if not _rows_match(lone, calls[path], batched_inputs[path], batch, slice(i, i + 1)):
                    rowwise.discard(path)
    finally:
        for handle in handles:
            handle.remove()
    if batch == 1:
        rowwise = set(batched_inputs)
    output_shape = tuple(out.shape[1:])
    n_outputs = int(out[0].numel())
    per_sample_io = (_numel(head) + out.numel()) // batch
    activation = max(act[0] // batch, per_sample_io) * 2
    independent = True
    if batch > 1:
        single = torch.cat(alone)
        independent = single.shape == out.shape and close(single, out)
    return ProbeResult(
        batch=batch,
        output_shape=output_shape,
        n_outputs=n_outputs,
        activation_numel=activation,
        calls=batched_calls,
        io_shapes=io_shapes,
        usage=counter.counts,
        batch_independent=independent,
        vmappable=one_vmappable if batch == 1 else vmapped is not None,
        indices=indices,
        per_sample_layers=frozenset(rowwise),
    )


def _rows_match(lone: Tensor | None, calls: int, batched: Tensor, batch: int, at: slice) -> bool:
    """Whether a layer's inputs in lone runs, ``lone`` (k, 1, ...) for the k samples ``at``, are
    those samples' rows of its batched input (``batch``, ...), each from its only call."""
    return (
        lone is not None
        and calls == 1
        and lone.dim() >= 2
        and lone.shape[1] == 1
        and batched.dim() > 0
        and batched.shape[0] == batch
        and lone.shape[0] == len(range(batch)[at])
        and close_per_sample(lone[:, 0], batched[at])
    )


def _vmapped_lone_runs(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    call: ModelCall,
    calls: Counter[str],
    layer_inputs: dict[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor]] | None:
    """Every sample of ``inputs`` run alone (a batch of one) in one vmapped forward: the
    outputs (n, 1, ...) and each hooked layer's first input (n, 1, ...), with ``calls``
    counting one lone run. None where vmap cannot run the forward (random operations,
    ``.item()``, data-dependent control flow, an output that is not a tensor): the caller
    then runs the samples one by one, which also gives the clear errors."""

    def lone(*x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        calls.clear()
        layer_inputs.clear()
        out = forward_batch(model, params, buffers, tuple(t.unsqueeze(0) for t in x), call)
        if not isinstance(out, Tensor):
            raise TypeError("not a tensor")
        return out, dict(layer_inputs)

    try:
        with torch.no_grad(), quiet_batching_fallback(), per_sample_attention():
            return vmap(lone)(*inputs)
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the one-by-one runs explain or survive it
        return None


def _checked_forward(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    batch: int,
    *,
    lone: bool = False,
    names: Callable[[int], str] | None = None,
    call: ModelCall = DEFAULT_CALL,
) -> Any:
    try:
        return forward_batch(model, params, buffers, inputs, call)
    except Exception as exc:
        shapes = ", ".join(f"{tuple(x.shape[1:])} {x.dtype}" for x in inputs)
        found = None
        if not lone and names is not None:
            found = failing_sample(model, params, buffers, inputs, others_run=True, call=call)
        if found is not None and names is not None:  # fails alone where others run: name it
            i, error = found
            raise InvalidArgumentError(
                f"the model's forward failed on {names(i)} (run alone; per-sample input "
                f"shapes {shapes}): {type(error).__name__}: {error}"
            ) from exc
        alone = (
            " run alone (the eNTK treats every sample on its own, so the forward must work "
            "on a batch of one: no batch statistics such as BatchNorm without running stats)"
            if lone
            else ""
        )
        what = "forward (with output_fn)" if call.output_fn is not None else "forward"
        raise InvalidArgumentError(
            f"the model's {what} failed on {batch} sample(s) of inputs{alone} (per-sample "
            f"shapes {shapes}; samples along dim 0): {type(exc).__name__}: {exc}"
        ) from exc


def failing_sample(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    *,
    others_run: bool = False,
    call: ModelCall = DEFAULT_CALL,
) -> tuple[int, Exception] | None:
    """The first sample (index into ``inputs``) whose forward fails when run alone, with its
    error, or None when every sample runs alone.

    For the error path of a chunk whose forward failed: the eNTK treats each sample on its
    own, so the sample to blame is the one that fails on its own. ``others_run``: blame it
    only if another of ``inputs`` runs (else the forward fails everywhere, e.g. a wrong input
    shape, and no sample is to blame).
    """
    first: tuple[int, Exception] | None = None
    for i in range(int(inputs[0].shape[0])):
        try:
            with torch.no_grad():
                forward_batch(model, params, buffers, tuple(x[i : i + 1] for x in inputs), call)
        except Exception as exc:
            if first is None:
                first = (i, exc)
                if not others_run:
                    return first
            continue
        if first is not None:
            return first
        others_run = False  # one sample ran: the next failure is to blame
    return None


#: Random (direction, cotangent) pairs of the derivative check: each direction meets each
#: cotangent, so 2 give 4 independent comparisons.
_DERIVATIVE_PAIRS = 2
#: A discrepancy of the derivative check beyond this fraction of the products' own size (about
#: ‖J‖_F, the spread of ⟨J w, u⟩ over random w and u) is a backward that is not the derivative.
_DERIVATIVE_RTOL = 1e-3

_NOT_DERIVATIVE = (
    "the model's backward is not the derivative of its forward for the selected parameters "
    "({detail}): reverse mode (the kernel's Jᵀ products) and {other} disagree, so its eNTK "
    "is not defined and its paths would compute different kernels. Likely causes: a "
    "gradient hook in forward (tensor.register_hook / a module backward hook that rescales "
    "gradients), a custom torch.autograd.Function whose backward is not the derivative of "
    "its forward (a straight-through estimator), a torch.no_grad() block in forward that "
    "depends on parameters (use .detach() there, which both modes respect), or "
    "Embedding(scale_grad_by_freq=True). Remove it, or leave the parameters it affects out "
    "with params=[...]"
)


def check_derivative(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    selected: list[str],
    call: ModelCall = DEFAULT_CALL,
    frozen_rows: Mapping[str, int] | None = None,
) -> None:
    """Refuse a model whose backward is not its forward's derivative on ``inputs`` (the probe
    samples): the adjoint identity ⟨J w, u⟩ = ⟨w, Jᵀ u⟩ on random directions w of the
    ``selected`` parameters and output cotangents u, with J w by forward mode (or, where an op
    has no forward-mode derivative, central differences) and Jᵀ u by reverse mode.

    Every path builds its kernel from reverse-mode products, and the matrix-free products
    also from forward-mode ones: a gradient hook, a custom Function with another backward or
    a ``no_grad`` block would otherwise give each path a different kernel without an error.
    A forward that fails here, is not deterministic or has no graph to the parameters is left
    to the engine, which reports it. ``frozen_rows``: parameter name -> a row its backward
    leaves out by design (an embedding's ``padding_idx``); the directions are zero there.
    """
    names = [name for name in selected if params[name].is_floating_point()]
    if not names:
        return
    device = params[names[0]].device
    gen = torch.Generator(device=device).manual_seed(0)
    directions = [
        {
            name: torch.randn(
                params[name].shape, generator=gen, dtype=params[name].dtype, device=device
            )
            for name in names
        }
        for _ in range(_DERIVATIVE_PAIRS)
    ]
    for name, row in (frozen_rows or {}).items():
        for w in directions:
            if name in w and w[name].dim() > 0:
                w[name][row] = 0

    def f(pack: Mapping[str, Tensor]) -> Tensor:
        out = forward_batch(model, {**params, **pack}, buffers, inputs, call)
        if not isinstance(out, Tensor):
            raise TypeError("not a tensor")
        return out

    try:
        with torch.enable_grad(), quiet_batching_fallback(), per_sample_attention():
            leaves = {name: params[name].detach().requires_grad_() for name in names}
            out = f(leaves)
            if not out.requires_grad or not out.is_floating_point():
                return
            cotangents = [
                torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device)
                for _ in range(_DERIVATIVE_PAIRS)
            ]
            # ⟨u, out⟩ rather than grad_outputs=u: torch's first call with explicit output
            # gradients imports sympy (0.45 s of a fresh process's first eNTK).
            pulled = [
                torch.autograd.grad(
                    (out * u).sum(), list(leaves.values()), retain_graph=True, allow_unused=True
                )
                for u in cotangents
            ]
        out = out.detach()
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - the engine's own products report it
        return
    other = "forward mode (jvp)"
    pushed: list[tuple[Tensor, float]] = []
    try:
        load_forward_ad()
        # Dual tensors (torch.autograd.forward_ad), not torch.func.jvp: the same forward-mode
        # derivatives without the transform's per-op wrapping (about 2× the forward's cost)
        # and without its first call importing torch._dynamo (over a second).
        with (
            torch.no_grad(),
            quiet_batching_fallback(),
            per_sample_attention(),
            forward_ad.dual_level(),
        ):
            for w in directions:
                duals = {name: forward_ad.make_dual(params[name], w[name]) for name in names}
                primal, tangent = forward_ad.unpack_dual(f(duals))
                if not close(primal, out):  # not deterministic: left to the engine
                    return
                pushed.append((torch.zeros_like(primal) if tangent is None else tangent, 0.0))
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - an op without a forward-mode derivative
        other = "central differences"
        found = _central_differences(model, params, buffers, inputs, call, directions, out)
        if found is None:
            return
        pushed = found
    flat_w = [_flat(list(w.values())) for w in directions]
    for u, grads in zip(cotangents, pulled, strict=True):
        g = _flat(
            [
                torch.zeros_like(param) if d is None else d
                for param, d in zip(directions[0].values(), grads, strict=True)
            ]
        )
        for along, (tangent, error) in zip(flat_w, pushed, strict=True):
            mismatch = _adjoint_mismatch(tangent, u, along, g, error)
            if mismatch is not None:
                raise InvalidArgumentError(_NOT_DERIVATIVE.format(detail=mismatch, other=other))


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors flattened and joined, in float64."""
    return torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])


def _adjoint_mismatch(
    tangent: Tensor, u: Tensor, w: Tensor, grad: Tensor, error: float = 0.0
) -> str | None:
    """Where ⟨J w, u⟩ (``tangent`` = J w, within ``error`` in norm) and ⟨w, Jᵀ u⟩ (``grad`` =
    Jᵀ u; ``w`` and ``grad`` flat float64 over the parameters) differ beyond round-off, the
    two numbers as text; else None."""
    tangent = tangent.reshape(-1).to(torch.float64)
    u = u.reshape(-1).to(torch.float64)
    lhs, rhs = float(tangent @ u), float(w @ grad)
    norm_t, norm_u = float(tangent.norm()), float(u.norm())
    norm_w, norm_g = float(w.norm()), float(grad.norm())
    if not all(map(math.isfinite, (lhs, rhs, norm_t, norm_g))):
        return None  # a NaN / inf Jacobian: the engine names the sample
    # ‖J w‖ and ‖Jᵀ u‖ are about ‖J‖_F (the spread of both numbers); the second term bounds
    # the round-off of the two sums (float32 parts of a float64 model included).
    eps = float(torch.finfo(torch.float32).eps)
    tol = (
        _DERIVATIVE_RTOL * max(norm_t, norm_g)
        + 16 * eps * (norm_t * norm_u + norm_w * norm_g)
        + error * norm_u
    )
    if abs(lhs - rhs) <= tol:
        return None
    return f"on random w and u, ⟨J w, u⟩ = {lhs:.6g} but ⟨w, Jᵀ u⟩ = {rhs:.6g}"


def _central_differences(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: tuple[Tensor, ...],
    call: ModelCall,
    directions: list[dict[str, Tensor]],
    out: Tensor,
) -> list[tuple[Tensor, float]] | None:
    """(J w, a bound on its error's norm) for each direction by central differences, or None
    where they cannot be trusted.

    In float64 (parameters, buffers and floating inputs cast), at two step sizes; a direction
    whose two estimates disagree (a kink crossed, float32 inside the model) gives None, as
    does a forward that fails in float64.
    """

    def wide(t: Tensor) -> Tensor:
        return t.to(torch.float64) if t.is_floating_point() else t

    values = {name: wide(t) for name, t in params.items()}
    state = {name: wide(t) for name, t in buffers.items()}
    xs = tuple(wide(x) for x in inputs)
    scale = max(
        [1.0, *(float(values[name].abs().max()) for name in directions[0] if values[name].numel())]
    )
    result = []
    try:
        with torch.no_grad(), quiet_batching_fallback(), per_sample_attention():
            for w in directions:
                estimates = []
                for step in (1e-4 * scale, 1e-3 * scale):
                    ends = [
                        forward_batch(
                            model,
                            {**values, **{n: values[n] + sign * step * wide(w[n]) for n in w}},
                            state,
                            xs,
                            call,
                        )
                        for sign in (1.0, -1.0)
                    ]
                    estimates.append((ends[0] - ends[1]).to(torch.float64) / (2 * step))
                if estimates[0].shape != out.shape or not close(
                    estimates[0], estimates[1], rtol=_DERIVATIVE_RTOL / 4
                ):
                    return None
                # truncation falls 100-fold and round-off rises 10-fold from the larger step
                # to the smaller: the smaller step's error is within twice their difference
                result.append((estimates[0], 2 * float((estimates[0] - estimates[1]).norm())))
    except torch.OutOfMemoryError:
        raise
    except Exception:  # noqa: BLE001 - not runnable in float64: no check
        return None
    return result
