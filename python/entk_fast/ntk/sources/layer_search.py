"""Which layers can take the structured exact path: the layers with a rule in
``layers.LAYER_RULES`` that ran once in the probe pass (attention projections through its
rule), and the batched forward with a zero "probe" added to each one's output (the hooks that
expose its inputs and output cotangents). `cotangents.verify_layers` then checks each."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import StructuredFallback
from ..layers import LAYER_RULES, MODULE_RULES, ModuleRule, StructuredLayer
from ..problem import Problem

__all__ = ["find_layers", "forward_with_probes", "hook_layers"]


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
        module_rule = MODULE_RULES.get(type(module))
        if module_rule is not None and module_rule.qualifies(module):
            found.extend(_site_layers(problem, path, module, module_rule, selected))
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


def _site_layers(
    problem: Problem, path: str, module: nn.Module, rule: ModuleRule, selected: set[str]
) -> list[StructuredLayer]:
    """The projections inside a module a module rule covers that qualify, as layers at T
    positions (attention's in and out projections)."""
    probe = problem.probe
    if probe.calls.get(path, 0) != 1 or path not in probe.io_shapes:
        return []
    in_shape, _ = probe.io_shapes[path]
    layers = []
    for site in rule.sites(module, tuple(in_shape), probe.batch):
        weight = _param_name(problem, path, site.weight)
        bias = _param_name(problem, path, site.bias)
        weight = weight if weight in selected and probe.usage.get(weight, 0) == 1 else None
        bias = bias if bias in selected and probe.usage.get(bias, 0) == 1 else None
        if weight is None and bias is None:
            continue
        layers.append(
            StructuredLayer(
                path=f"{path}:{site.name}",
                rule=LAYER_RULES[nn.Linear],
                shape=site.shape,
                weight=weight,
                bias=bias,
                sample_shape=(site.shape.positions, site.shape.out_features),
                owner=path,
                site=site.name,
            )
        )
    return layers


def hook_layers(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    on_call: Callable[[StructuredLayer, Tensor, Tensor], Tensor],
    *,
    attention_outputs: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> list[Any]:
    """Hooks that pass each layer's (input (n, ...), output (n, ...)) through ``on_call``, whose
    result replaces the output; attention projections are reached by recomputing their
    module's output (its rule in ``layers.MODULE_RULES``). ``attention_outputs``: record owner
    path -> (the module's own output, the recomputed one) for the caller to compare (after a
    vmap, where values cannot be compared). Returns the hook handles."""
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

            out = MODULE_RULES[type(module)].forward(module, args, kwargs, on_site, owner)
            own = _output[0] if isinstance(_output, tuple) else _output
            if attention_outputs is not None and isinstance(own, Tensor):
                attention_outputs[owner] = (own.detach(), out[0].detach())
            return out

        handles.append(module.register_forward_hook(attention_hook, with_kwargs=True))
    return handles


def forward_with_probes(
    problem: Problem,
    layers: Sequence[StructuredLayer],
    inputs: tuple[Tensor, ...],
    params: Mapping[str, Tensor],
    probes: Sequence[Tensor] | None = None,
    *,
    attention_outputs: dict[str, tuple[Tensor, Tensor]] | None = None,
) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """(R f (n, C_r), zero probes added to each layer's output, each layer's input).

    ``probes``: the zero probes (n, *sample shape) to add (one sample's slice of batched
    probes under vmap); by default fresh leaves that require grad.
    ``attention_outputs``: as `hook_layers`. The forward's own errors propagate (the caller,
    `cotangents.lone_forward`, tells them apart).
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

    handles = hook_layers(problem, layers, on_call, attention_outputs=attention_outputs)
    try:
        with torch.enable_grad():
            y = problem.out_map.apply(problem.forward(inputs, params))
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.path for layer in layers if layer.path not in acts]
    if missing:  # the probe pass saw these layers run; a data-dependent forward skipped them
        raise StructuredFallback(missing, "did not run on this batch")
    return y, probes, acts
