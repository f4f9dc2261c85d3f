"""Checks on the numbers the engine computes: the one tolerance comparison of a batched run
with lone runs, the one NaN / inf check of per-sample values (outputs, Jacobian rows, layer
inputs and output cotangents), and the signal that sends structured layers back to the
general path.

The eNTK is that of the per-sample function (each sample run alone); the structured path runs
samples in batches, so it is trusted only where the two agree (J. Lin, arXiv 2510.00468
defines the kernel per sample). A kernel entry is a sum of products of Jacobian entries, so
one non-finite Jacobian row makes its sample's kernel rows meaningless; every path checks
what it computes, chunk by chunk, and names the sample (not a row of an internal matrix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import InvalidArgumentError

__all__ = [
    "StructuredFallback",
    "all_finite",
    "close",
    "close_per_sample",
    "first_nonfinite",
    "require_finite",
    "sample_namer",
]

#: What a non-finite value means, by what was checked (the messages' middle part).
_WHAT = {
    "output": "the model's output",
    "jacobian": "the Jacobian of the model's output with respect to its parameters",
    "input": "the input of layer {layer!r}",
    "cotangent": "the derivative of the model's output with respect to layer {layer!r}'s output",
}


def close(a: Tensor, b: Tensor, *, rtol: float | None = None) -> bool:
    """Equal up to round-off in a's dtype (exactly, for integer tensors).

    The tolerance is relative (by default 1e-4 in float32, 1e-9 in float64) to the largest
    finite magnitude in either tensor. NaN and inf must sit at the same places in both (and
    be the same there); they never enter the tolerance, so a non-finite value cannot turn
    the comparison itself into an error.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    if rtol is None:
        rtol = 1e-4 if a.dtype != torch.float64 else 1e-9
    a, b = a.detach(), b.detach()
    if a.numel() == 0:
        return True
    # One reduction pass each gives both the finite check and the scale.
    (low_a, high_a), (low_b, high_b) = torch.aminmax(a), torch.aminmax(b)
    ends = (float(low_a), float(high_a), float(low_b), float(high_b))
    if not all(math.isfinite(end) for end in ends):  # masks only if needed
        finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
        if not torch.equal(finite_a, finite_b):
            return False
        odd = ~finite_a
        if not torch.equal(torch.nan_to_num(a[odd]), torch.nan_to_num(b[odd])):
            return False
        a, b = a[finite_a], b[finite_b]
        if a.numel() == 0:
            return True
        ends = (float(a.min()), float(a.max()), float(b.min()), float(b.max()))
    scale = max(max(abs(end) for end in ends), 1e-30)
    decided = _decided((a - b).abs().max(), torch.tensor(scale, dtype=torch.float64), rtol)
    if decided is not None:
        return decided
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * scale))


def _decided(diff: Tensor, scale: Tensor, rtol: float) -> bool | None:
    """``allclose(a, b, rtol, atol = rtol · scale)`` from the largest |a − b| alone, for every
    slice (``diff`` and ``scale`` one value per slice): it holds where each diff ≤ rtol · scale
    and fails where one > 2 · rtol · scale (|b| ≤ scale); None in between, where only the
    elementwise test decides."""
    if bool((diff <= rtol * scale).all()):
        return True
    if bool((diff > 2 * rtol * scale).any()):
        return False
    return None


def close_per_sample(a: Tensor, b: Tensor, *, rtol: float | None = None) -> bool:
    """`close` for every slice along dim 0 (one per sample), each with its own scale: a
    sample with small values is held to its own round-off, not to the largest sample's.
    Vectorised; slice by slice only where one is undecided or holds a NaN / inf."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point() or a.dim() == 0 or a.numel() == 0:
        return close(a, b, rtol=rtol)
    if rtol is None:
        rtol = 1e-4 if a.dtype != torch.float64 else 1e-9
    x, y = a.detach().reshape(a.shape[0], -1), b.detach().reshape(b.shape[0], -1)
    if not (all_finite(x) and all_finite(y)):
        return all(close(p, q, rtol=rtol) for p, q in zip(x, y, strict=True))
    scale = torch.maximum(x.abs().amax(dim=1), y.abs().amax(dim=1)).clamp_min(1e-30)
    decided = _decided((x - y).abs().amax(dim=1), scale, rtol)
    if decided is not None:
        return decided
    return all(close(p, q, rtol=rtol) for p, q in zip(x, y, strict=True))


def sample_namer(n_samples: int, n_samples2: int = 0, offset: int = 0) -> Callable[[int], str]:
    """How messages name sample i of the engine's inputs: ``"sample 20"``, or for the second
    input set of a cross kernel (its last ``n_samples2``) ``"x2 sample 3"``; ``offset``: the
    user's index of sample 0 (the inputs are a shard of the user's)."""
    first = n_samples - n_samples2

    def name(i: int) -> str:
        return f"sample {i + offset}" if i < first else f"x2 sample {i - first}"

    return name


def all_finite(values: Tensor) -> bool:
    """Whether a tensor holds no NaN or inf (integer tensors always)."""
    if not values.is_floating_point() or values.numel() == 0:
        return True
    # One reduction pass (min and max propagate NaN and show ±inf); torch.isfinite would
    # write a mask as large as the values, many times slower on a Jacobian chunk.
    low, high = torch.aminmax(values.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


def first_nonfinite(values: Tensor, dim: int = 0) -> int | None:
    """The first index along ``dim`` whose slice holds a NaN or inf, or None (all finite)."""
    if all_finite(values):
        return None
    per = values.movedim(dim, 0).reshape(values.shape[dim], -1)
    bad = ~torch.isfinite(per).all(dim=1)
    return int(bad.nonzero()[0, 0])


def require_finite(
    values: Tensor,
    kind: str,
    sample: Callable[[int], str],
    *,
    dim: int = 0,
    layer: str = "",
) -> None:
    """Raise `InvalidArgumentError` naming the sample when ``values`` holds NaN or inf.

    ``values`` has one slice per sample along ``dim``; ``sample(i)`` names the sample of slice
    i (e.g. ``"sample 20"``, ``"x2 sample 3"``). ``kind`` is one of ``"output"``,
    ``"jacobian"``, ``"input"``, ``"cotangent"`` (``layer``: the layer's module path).
    """
    i = first_nonfinite(values, dim)
    if i is None:
        return
    what = _WHAT[kind].format(layer=layer)
    raise InvalidArgumentError(
        f"{what} is NaN or infinite at {sample(i)}, so the eNTK is undefined there (e.g. a "
        "sqrt or log at 0 or below, a division by zero or an overflow in forward); fix the "
        "model there or leave that sample out"
    )


class StructuredFallback(Exception):  # noqa: N818 - a control-flow signal, not a user error
    """Internal: these structured layers cannot be computed on the full batch; use the general
    path for them (raised before anything is trusted; the caller starts over)."""

    def __init__(self, paths: Sequence[str], reason: str) -> None:
        super().__init__(f"structured layers {list(paths)}: {reason}")
        self.paths = tuple(paths)
        self.reason = reason
