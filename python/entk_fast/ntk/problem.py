"""A validated eNTK request (``Problem``), and what a reduction means for torch tensors (the
Jacobian arrangement and the output map; the reductions themselves are data in
`entk_fast.reductions`).

Everything a user can get wrong is checked here, before any expensive work: the model's
type, the inputs (type, shape, emptiness, NaN), the parameters (NaN, selection, groups), the
reduction, the output metric (size, symmetry, PSD) and the dtype.

A reduction is one `Reduction` object in `entk_fast.reductions.REDUCTIONS`; nothing compares
reduction names. With R the output map (the metric S^½, and for ``mean_pairs`` the
mean 1ᵀ/C folded in), every reduction is K = scale · M Mᵀ for a Jacobian arrangement M:
``flattened`` and ``mean_pairs`` take each row of R J_n as a kernel row (scale 1); ``trace``
lays a sample's C rows side by side in one kernel row (scale 1/C), so that
(1/C) Σ_c ⟨J_n[c], J_n'[c]⟩ = (1/C) ⟨vec J_n, vec J_n'⟩ (J. Lin, arXiv 2510.00468, the eNTK
and its traced and flattened forms).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .. import linalg
from ..errors import InvalidArgumentError, InvalidTypeError
from ..reductions import REDUCTIONS, Reduction, reduction_of
from .checks import sample_namer
from .params import ParameterIndex, resolve_groups, resolve_selection
from .probe import DEFAULT_CALL, ModelCall, ProbeResult, check_derivative, forward_batch, run_probe

__all__ = [
    "REDUCTIONS",
    "OutputMap",
    "Problem",
    "Reduction",
    "arrange",
    "evaluation_mode",
    "output_map",
    "prepare",
    "slice_samples",
]

# Modules whose training-mode output depends on the batch or on random draws.
_TRAIN_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass(frozen=True)
class OutputMap:
    """Maps a sample's flattened output y (C,) to the rows the kernel contracts, R y (C_r,).

    ``kind`` is ``"identity"`` (C_r = C), ``"diag"`` (``weights`` (C,), R = diag(weights)) or
    ``"matrix"`` (``weights`` (C_r, C)). It folds the output metric S^½ and, for
    ``mean_pairs``, the mean over outputs into the model's output.
    """

    kind: Literal["identity", "diag", "matrix"]
    weights: Tensor | None
    n_rows: int

    def apply(self, y: Tensor) -> Tensor:
        """(..., C) -> (..., C_r)."""
        if self.kind == "identity":
            return y
        assert self.weights is not None
        if self.kind == "diag":
            return y * self.weights
        return y @ self.weights.T


def arrange(reduction: Reduction, block: Tensor) -> Tensor:
    """A Jacobian block (n, C_r, P) as rows of M: (n·C_r, P), or (n, C_r·P) concatenated."""
    n = block.shape[0]
    return (
        block.reshape(n, -1)
        if reduction.rows_concatenated
        else block.reshape(n * block.shape[1], -1)
    )


def output_map(
    reduction: Reduction,
    root: tuple[np.ndarray, np.ndarray, bool] | None,
    n_outputs: int,
    dtype: torch.dtype,
    device: torch.device,
) -> OutputMap:
    """The row map R: S^½ (or the identity), times 1ᵀ/C when the outputs are averaged."""
    c = n_outputs

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    if reduction.mean_of_outputs:
        row = np.ones(c) if root is None else (root[1] if root[2] else root[1].sum(axis=0))
        return OutputMap("matrix", tensor(row[None, :] / c), 1)
    if root is None:
        return OutputMap("identity", None, c)
    if root[2]:
        return OutputMap("diag", tensor(root[1]), c)
    return OutputMap("matrix", tensor(root[1]), c)


@dataclass
class Problem:
    """A validated eNTK request: model state, inputs, and how outputs are reduced."""

    model: nn.Module
    inputs: tuple[Tensor, ...]
    """Each (N, ...), on the parameters' device; floating ones cast to ``dtype``."""
    params: dict[str, Tensor]
    """Every parameter (canonical name), detached, cast to ``dtype``."""
    buffers: dict[str, Tensor]
    selected: list[str]
    """Canonical names of the parameters the kernel contracts over, in model order."""
    groups: dict[str, tuple[str, ...]]
    index: ParameterIndex
    probe: ProbeResult
    reduction: Reduction
    metric: np.ndarray | None
    """The output metric S as a (C, C) matrix, or None."""
    out_map: OutputMap
    dtype: torch.dtype
    device: torch.device
    n_samples2: int = 0
    """For a cross kernel K(X, X2): the last ``n_samples2`` samples are X2 (0: no X2)."""
    call: ModelCall = DEFAULT_CALL
    """How the input tensors become the model's arguments, and ``output_fn``."""
    lone_autograd: bool = False
    """Set once the forward proved not vmappable: Jacobians by per-sample autograd."""
    sample_offset: int = 0
    """The user's index of sample 0 of `inputs` (a shard of a larger set: `.sharded`)."""

    @property
    def n_samples(self) -> int:
        return int(self.inputs[0].shape[0])

    def sample_name(self, i: int) -> str:
        """How messages name sample ``i`` of `inputs`: ``"sample 20"``, or for the
        second input set of a cross kernel ``"x2 sample 3"`` (the user's own indices)."""
        return sample_namer(self.n_samples, self.n_samples2, self.sample_offset)(i)

    def samples_from(self, start: int) -> Callable[[int], str]:
        """Names of the samples ``start, start + 1, ...`` (index 0 is ``start``)."""
        return lambda i: self.sample_name(start + i)

    @property
    def n_outputs(self) -> int:
        """C, the number of model outputs per sample."""
        return self.probe.n_outputs

    @property
    def rows_per_sample(self) -> int:
        """C_r, the rows of a sample's (reduced, metric-weighted) Jacobian."""
        return self.out_map.n_rows

    @property
    def kernel_scale(self) -> float:
        """K = kernel_scale · M Mᵀ, with M the Jacobian arranged as the reduction says."""
        return self.reduction.scale(self.n_outputs)

    @property
    def kernel_rows_per_sample(self) -> int:
        return self.reduction.kernel_rows_per_sample(self.rows_per_sample)

    def as_kernel_rows(self, block: Tensor) -> np.ndarray:
        """A Jacobian block (n, C_r, P) as rows of M, on the CPU as numpy."""
        return arrange(self.reduction, block).detach().cpu().numpy()

    @property
    def kernel_size(self) -> int:
        """Side of the kernel matrix: N·C (flattened), N (trace, mean_pairs)."""
        return self.n_samples * self.kernel_rows_per_sample

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float64 if self.dtype == torch.float64 else np.float32)

    def numel(self, names: Iterable[str]) -> int:
        return sum(self.index.infos[name].numel for name in names)

    def forward(
        self, inputs: tuple[Tensor, ...], params: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Batched model output (n, C) with this problem's parameters (or ``params``)."""
        out = forward_batch(self.model, params or self.params, self.buffers, inputs, self.call)
        return out.reshape(out.shape[0], -1)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode, restoring every module's mode afterwards.

    Warns when that changes the function (BatchNorm or dropout in train mode): the eNTK is
    defined for the deterministic, per-sample function.
    """
    modes = [(module, module.training) for module in model.modules()]
    offending = sorted(
        {
            type(module).__name__
            for module in model.modules()
            if module.training and isinstance(module, _TRAIN_DEPENDENT)
        }
    )
    if offending:
        warnings.warn(
            f"the model is in train mode and has {', '.join(offending)} layers, whose "
            "train-mode output depends on the batch or on random draws; the eNTK is computed "
            "in eval mode (call model.eval() to silence this warning)",
            UserWarning,
            stacklevel=4,
        )
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


_DTYPE_HELP = (
    "torch.float32 / torch.float64, numpy.float32 / numpy.float64, or a string numpy reads as "
    "one of them ('float32', 'single', 'f4'; 'float64', 'double', 'float', 'f8'), or None to "
    "follow the model"
)


def resolve_dtype(dtype: Any, model: nn.Module) -> torch.dtype:
    """float32 or float64; ``None`` follows the model (half precision is promoted to float32).

    Strings and Python / numpy types are read as numpy reads them: ``"double"``, ``"float"`` and
    ``float`` mean float64 (as ``np.dtype("float")``), ``"single"`` float32; ``"torch.float32"``
    and ``"torch.float64"`` are accepted too.
    """
    if dtype is None:
        floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
        return torch.float64 if torch.float64 in floats else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
        raise InvalidArgumentError(
            f"dtype must be float32 or float64, got {dtype!r}; use {_DTYPE_HELP}"
        )
    if not isinstance(dtype, np.dtype | str | type):
        raise InvalidTypeError(
            f"dtype must be a torch dtype, a numpy dtype, a string or None, got "
            f"{type(dtype).__name__}"
        )
    key = dtype.strip().removeprefix("torch.") if isinstance(dtype, str) else dtype
    try:
        parsed = np.dtype(key)
    except TypeError:
        parsed = None
    if parsed == np.float32:
        return torch.float32
    if parsed == np.float64:
        return torch.float64
    raise InvalidArgumentError(
        f"dtype must be float32 or float64, got {dtype!r}; use {_DTYPE_HELP}"
    )


#: Keyword values passed to the model as they are, the same for every sample.
_CONSTANT_TYPES = (bool, int, float, str, type(None))


def split_keywords(
    inputs: Any, name: str = "inputs"
) -> tuple[Any, tuple[str | None, ...], tuple[tuple[str, Any], ...]]:
    """A dict of keyword inputs as (its tensor values, their keys, its constant keywords);
    anything else as (it, (), ()). Constants (``output_hidden_states=True``, a flag, a
    number, None) go to every call of the model unchanged."""
    if not isinstance(inputs, Mapping):
        return inputs, (), ()
    if not inputs:
        raise InvalidArgumentError(f"{name} is an empty dict: give at least one keyword tensor")
    keys = tuple(inputs)
    bad = [key for key in keys if not isinstance(key, str)]
    if bad:
        raise InvalidTypeError(f"{name}: keyword names must be strings, got {bad[0]!r}")
    constants = tuple(
        (key, value) for key, value in inputs.items() if isinstance(value, _CONSTANT_TYPES)
    )
    tensors = [key for key in keys if not isinstance(inputs[key], _CONSTANT_TYPES)]
    if not tensors:
        raise InvalidTypeError(
            f"{name} has no tensor among its keywords ({', '.join(keys)}): give at least one "
            "keyword tensor (N, ...)"
        )
    return [inputs[key] for key in tensors], tuple(tensors), constants


def slice_samples(inputs: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a model's inputs as the user gives them: a tensor, every tensor
    of a tuple, or every keyword tensor of a dict (its constant keywords, as `split_keywords`
    tells them, go to every slice unchanged)."""
    if isinstance(inputs, tuple):
        return tuple(t[start:stop] for t in inputs)
    if isinstance(inputs, Mapping):
        values, keys, constants = split_keywords(inputs, "inputs")
        return {**{k: v[start:stop] for k, v in zip(keys, values, strict=True)}, **dict(constants)}
    return inputs[start:stop]


def normalise_inputs(
    inputs: Any,
    dtype: torch.dtype,
    device: torch.device,
    *,
    name: str = "inputs",
    keys: tuple[str | None, ...] = (),
) -> tuple[Tensor, ...]:
    """The model's inputs as tensors sharing the sample dimension N ≥ 1 (dim 0): a tensor, a
    sequence of positional tensors, or the values of a dict of keyword tensors (``keys``)."""
    if isinstance(inputs, Tensor | np.ndarray):
        raw: tuple[Any, ...] = (inputs,)
    elif isinstance(inputs, tuple | list):
        raw = tuple(inputs)
        if not raw:
            raise InvalidArgumentError(f"{name} is an empty sequence: give at least one tensor")
    else:
        raise InvalidTypeError(
            f"{name} must be a tensor (N, ...), a tuple of tensors that share dim 0 (one per "
            "positional argument of the model) or a dict of keyword tensors, got "
            f"{type(inputs).__name__}"
        )
    out: list[Tensor] = []
    for i, value in enumerate(raw):
        if keys:
            where = f"{name}[{keys[i]!r}]"
        elif len(raw) == 1 and not isinstance(inputs, tuple | list):
            where = name
        else:
            where = f"{name}[{i}]"
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise InvalidTypeError(f"{where} must be numeric, got numpy dtype {value.dtype}")
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise InvalidTypeError(f"{where} must be a tensor, got {type(value).__name__}")
        _check_storage(value, where)
        if value.is_complex():
            raise InvalidTypeError(f"{where} is complex; only real inputs are supported")
        if value.dim() == 0:
            raise InvalidArgumentError(
                f"{where} is a 0-d tensor; inputs need a leading sample dimension (N, ...)"
            )
        if value.shape[0] == 0:
            raise InvalidArgumentError(f"{where} is empty (N = 0): give at least one sample")
        if out and value.shape[0] != out[0].shape[0]:
            raise InvalidArgumentError(
                f"all {name} must share the sample dimension: {name}[0] has N = "
                f"{out[0].shape[0]} but {where} has {value.shape[0]}"
            )
        value = value.detach().to(device)
        if value.is_floating_point():
            value = value.to(dtype)
            finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                raise InvalidArgumentError(
                    f"{where} contains NaN or infinite values (first at sample {bad})"
                )
        out.append(value)
    return tuple(out)


def normalise_metric(metric: Any, n_outputs: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(S (C, C), S^½ as (C,) diagonal or (C, C), is_diagonal), or None."""
    if metric is None:
        return None
    if isinstance(metric, Tensor):
        _check_storage(metric, "output_metric")
        metric = metric.detach().cpu().numpy()
    try:
        arr = np.asarray(metric)
    except (TypeError, ValueError) as exc:
        raise InvalidTypeError(
            f"output_metric must be array-like, got {type(metric).__name__}"
        ) from exc
    if arr.dtype.kind not in "biuf":
        raise InvalidTypeError(f"output_metric must be real numbers, got dtype {arr.dtype}")
    # Round-off of the metric as given: a float32 S (built as A Aᵀ, v vᵀ) is only symmetric
    # and PSD to float32 precision, so the checks scale with the input's own epsilon.
    eps = float(np.finfo(arr.dtype).eps) if arr.dtype.kind == "f" else float(np.finfo(float).eps)
    rel = max(8.0 * eps, 1e-10)
    arr = arr.astype(np.float64)
    c = n_outputs
    if arr.ndim == 1:
        if arr.shape != (c,):
            raise InvalidArgumentError(
                f"output_metric as a weight vector must have shape ({c},) (one weight per "
                f"model output), got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise InvalidArgumentError("output_metric contains NaN or infinite values")
        if (arr < 0).any():
            raise InvalidArgumentError(
                f"output_metric weights must be ≥ 0 (a PSD metric), got min {arr.min():g}"
            )
        return np.diag(arr), np.sqrt(arr), True
    if arr.shape != (c, c):
        raise InvalidArgumentError(
            f"output_metric must be a weight vector ({c},) or a PSD matrix ({c}, {c}), "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise InvalidArgumentError("output_metric contains NaN or infinite values")
    scale = float(np.abs(arr).max()) or 1.0
    asym = float(np.abs(arr - arr.T).max())
    if asym > rel * c * scale:
        raise InvalidArgumentError(
            f"output_metric must be symmetric: max |S - Sᵀ| = {asym:g} is above the round-off "
            f"tolerance {rel * c * scale:g} of its dtype {np.asarray(metric).dtype}"
        )
    sym = np.ascontiguousarray(0.5 * (arr + arr.T))
    w, v = linalg.eigh(sym)
    top = max(float(np.abs(w).max()), 0.0) or 1.0
    if w.min() < -rel * c * top:
        raise InvalidArgumentError(
            f"output_metric must be positive semi-definite; its smallest eigenvalue is "
            f"{w.min():g}, below the round-off tolerance -{rel * c * top:g} of its dtype "
            f"{np.asarray(metric).dtype}"
        )
    # Eigenvalues under the round-off floor are zero: a rank-deficient S keeps its null space.
    w = np.where(w > rel * c * max(float(w.max()), 0.0), w, 0.0)
    root = (v * np.sqrt(w)) @ v.T
    return sym, root, False


def prepare(
    model: Any,
    inputs: Any,
    *,
    inputs2: Any = None,
    output_fn: Callable[[Any], Any] | None = None,
    reduction: Any = "flattened",
    output_metric: Any = None,
    params: Iterable[str] | str | None = None,
    groups: Mapping[str, Iterable[str] | str] | None = None,
    dtype: Any = None,
    positions: Any = None,
    sample_offset: int = 0,
) -> Problem:
    """Validate everything and probe the model once. Call inside `evaluation_mode`.
    ``sample_offset``: the user's index of the first sample (``inputs`` is a shard of the
    user's, `.sharded`), so that messages name the user's samples."""
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    red = reduction_of(reduction)
    torch_dtype = resolve_dtype(dtype, model)
    index = ParameterIndex(model)
    selected = resolve_selection(index, params)
    partition = resolve_groups(index, selected, groups)
    first = next(iter(model.parameters()))
    device = first.device
    _check_modules(model, index, selected)
    tensors: dict[str, Tensor] = {}
    named = dict(model.named_parameters())
    for name in index.infos:
        value = named[name].detach()
        _check_storage(value, f"parameter {name!r}")
        if value.is_complex() and name in selected:
            raise InvalidTypeError(
                f"parameter {name!r} is complex ({value.dtype}); the eNTK is defined for real "
                "parameters only: leave it out with params= (or freeze it), or split it into "
                "real and imaginary parts"
            )
        if value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                raise InvalidArgumentError(f"parameter {name!r} contains NaN or infinite values")
            value = value.to(torch_dtype)
        tensors[name] = value
    # Copies: a forward that updates a buffer in place must not change the user's model.
    buffers: dict[str, Tensor] = {}
    for name, b in model.named_buffers():
        _check_storage(b, f"buffer {name!r}")
        value = b.detach().to(torch_dtype) if b.is_floating_point() else b.detach()
        buffers[name] = value.clone()
    versions = _versions(tensors, buffers)
    if output_fn is not None and not callable(output_fn):
        raise InvalidTypeError(
            f"output_fn must be a callable (model output -> tensor (N, ...)), got "
            f"{type(output_fn).__name__}"
        )
    values, keys, constants = split_keywords(inputs)
    xs = normalise_inputs(values, torch_dtype, device, keys=keys)
    n_samples2 = 0
    if inputs2 is not None:
        values2, keys2, constants2 = split_keywords(inputs2, "x2")
        if keys2 != keys or constants2 != constants:
            raise InvalidArgumentError(
                f"x2 must have the structure of inputs: keywords {list(keys)} and constants "
                f"{dict(constants)}, got {list(keys2)} and {dict(constants2)}"
            )
        second = normalise_inputs(values2, torch_dtype, device, name="x2", keys=keys2)
        xs = _concatenate(xs, second)
        n_samples2 = int(second[0].shape[0])
    call = ModelCall(keys, output_fn, constants=constants)
    if positions is not None:
        if n_samples2:
            raise InvalidArgumentError("positions is not available for a cross kernel (x2)")
        where = _check_positions(model, tensors, buffers, xs, call, positions)
        xs = (*xs, where)
        call = ModelCall(keys, output_fn, positions=True, constants=constants)
    probe = run_probe(
        model, tensors, buffers, xs, sample_namer(len(xs[0]), n_samples2, sample_offset), call=call
    )
    _check_unchanged(versions, tensors, buffers)
    check_derivative(
        model,
        tensors,
        buffers,
        _probe_samples(xs, probe),
        selected,
        call,
        frozen_rows=_padding_rows(model, index),
    )
    _check_unchanged(versions, tensors, buffers)
    root = normalise_metric(output_metric, probe.n_outputs)
    out_map = output_map(red, root, probe.n_outputs, torch_dtype, device)
    return Problem(
        model=model,
        inputs=xs,
        params=tensors,
        buffers=buffers,
        selected=selected,
        groups=partition,
        index=index,
        probe=probe,
        reduction=red,
        metric=None if root is None else root[0],
        out_map=out_map,
        dtype=torch_dtype,
        device=device,
        n_samples2=n_samples2,
        call=call,
        sample_offset=sample_offset,
    )


def _check_storage(value: Tensor, where: str) -> None:
    """A tensor the engine can read: dense (strided) and with data (not on the meta device)."""
    if value.layout != torch.strided:
        raise InvalidTypeError(
            f"{where} is a {value.layout} tensor; only dense (strided) tensors are supported: "
            "pass it through .to_dense()"
        )
    if value.device.type == "meta":
        hint = (
            "materialise the model first (model.to_empty(device=...), then load its weights)"
            if where.startswith(("parameter", "buffer"))
            else "create it on the CPU or a GPU"
        )
        raise InvalidArgumentError(
            f"{where} is on the meta device, which holds shapes but no values: {hint}"
        )


def _check_modules(model: nn.Module, index: ParameterIndex, selected: list[str]) -> None:
    """Refuse embedding layers whose backward is not their forward's derivative
    (``scale_grad_by_freq``, for selected weights) or whose forward rewrites their weight in
    place (``max_norm``: it would change the user's model)."""
    chosen = set(selected)
    for path, module in model.named_modules():
        if not isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        where = f"model: {type(module).__name__} {path or '(the model itself)'!r}"
        if module.max_norm is not None:
            raise InvalidArgumentError(
                f"{where} has max_norm={module.max_norm}: its forward renormalises rows of its "
                "weight in place, which would change the model and makes the output depend on "
                "earlier calls; renormalise the weight once beforehand and set max_norm=None"
            )
        weight = f"{path}.weight" if path else "weight"
        if module.scale_grad_by_freq and index.canonical.get(weight) in chosen:
            raise InvalidArgumentError(
                f"{where} has scale_grad_by_freq=True: its backward divides gradients by how "
                "often each index occurs in the batch, so it is not the derivative of its "
                "forward and the eNTK of its weight is not defined; set "
                "scale_grad_by_freq=False (the forward is the same) or leave its weight out "
                "with params="
            )


def _padding_rows(model: nn.Module, index: ParameterIndex) -> dict[str, int]:
    """Embedding weights (canonical name) -> their ``padding_idx``, the row their backward
    leaves at zero by design (forward mode does not: the derivative check skips that row)."""
    rows: dict[str, int] = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.padding_idx is not None:
            name = index.canonical.get(f"{path}.weight" if path else "weight")
            if name is not None:
                rows[name] = int(module.padding_idx)
    return rows


def _versions(*groups: Mapping[str, Tensor]) -> list[tuple[str, Tensor, int]]:
    """Each tensor's in-place version counter, to see whether the model's forward wrote it."""
    return [(name, t, t._version) for group in groups for name, t in group.items()]


def _check_unchanged(
    versions: list[tuple[str, Tensor, int]],
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
) -> None:
    """Refuse a forward that wrote a parameter or buffer in place (a counter, running
    statistics): the eNTK is that of a function of the parameters and inputs, and such a
    forward's output would depend on how often and on what the engine ran it. The engine
    runs on copies of the buffers, so the user's buffers are unchanged."""
    for name, tensor, version in versions:
        if tensor._version == version:
            continue
        if name in buffers and buffers[name] is tensor:
            raise InvalidArgumentError(
                f"the model's forward updates buffer {name!r} in place (a counter, running "
                "statistics): the eNTK needs a forward that is a function of the parameters "
                "and inputs, so that every run of it is the same function. Make the update "
                "conditional on self.training (the eNTK runs the model in eval mode) or move "
                "it out of forward; the model's own buffers were left unchanged"
            )
        raise InvalidArgumentError(
            f"the model's forward writes parameter {name!r} in place: the eNTK needs a "
            "forward that is a function of the parameters, and this one changed the model's "
            "parameter while it was probed; move that update out of forward"
        )


def _probe_samples(xs: tuple[Tensor, ...], probe: ProbeResult) -> tuple[Tensor, ...]:
    """The samples the probe ran (``probe.indices``), as input tensors."""
    where = torch.tensor(probe.indices, device=xs[0].device)
    return tuple(x.index_select(0, where) for x in xs)


def _check_positions(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    xs: tuple[Tensor, ...],
    call: ModelCall,
    positions: Any,
) -> Tensor:
    """``positions`` as an int64 tensor (N,) on the inputs' device, each within the T rows of
    dim 1 of the model's output (one sample's forward tells T)."""
    if isinstance(positions, np.ndarray):
        positions = torch.from_numpy(np.ascontiguousarray(positions))
    elif isinstance(positions, list | tuple):
        positions = torch.as_tensor(positions)
    if not isinstance(positions, Tensor):
        raise InvalidTypeError(
            f"positions must be an integer tensor (N,), got {type(positions).__name__}"
        )
    _check_storage(positions, "positions")
    n = int(xs[0].shape[0])
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise InvalidTypeError(f"positions must hold integers, got {positions.dtype}")
    if tuple(positions.shape) != (n,):
        raise InvalidArgumentError(
            f"positions must have shape ({n},) (one readout position per sample), got "
            f"{tuple(positions.shape)}"
        )
    with torch.no_grad():
        out = forward_batch(model, params, buffers, tuple(x[:1] for x in xs), call)
    if not isinstance(out, Tensor) or out.dim() < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InvalidArgumentError(
            "positions: the model's output (after output_fn) must be (n, T, ...) with the "
            f"positions along dim 1, got {shape}"
        )
    length = int(out.shape[1])
    bad = ((positions < -length) | (positions >= length)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise InvalidArgumentError(
            f"positions[{i}] = {int(positions[i])} is outside the output's {length} positions "
            "(dim 1 after output_fn)"
        )
    return (positions.to(torch.int64) % length).to(xs[0].device)


def _concatenate(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """X then X2 along the sample dimension; they must have the same structure."""
    if len(first) != len(second):
        raise InvalidArgumentError(
            f"x2 must have the structure of inputs: {len(first)} tensor(s), got {len(second)}"
        )
    out = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
            where = "x2" if len(first) == 1 else f"x2[{i}]"
            raise InvalidArgumentError(
                f"{where} must match inputs in per-sample shape and dtype: expected "
                f"(N2, {', '.join(map(str, a.shape[1:]))}) {a.dtype}, "
                f"got {tuple(b.shape)} {b.dtype}"
            )
        out.append(torch.cat([a, b]))
    return tuple(out)
