"""Batch-independence checks: the one tolerance comparison of a batched run with lone runs,
and the signal that sends structured layers back to the general path.

The eNTK is that of the per-sample function (each sample run alone); the structured path runs
samples in batches, so it is trusted only where the two agree (J. Lin, arXiv 2510.00468
defines the kernel per sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["StructuredFallback", "close"]


def close(a: Tensor, b: Tensor, scale: float | None = None) -> bool:
    """Equal up to round-off in a's dtype (exactly, for integer tensors).

    The tolerance is relative (1e-4 in float32, 1e-9 in float64) to ``scale``, by default the
    largest magnitude in either tensor.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    rtol = 1e-4 if a.dtype != torch.float64 else 1e-9
    if scale is None:
        scale = max(
            float(a.abs().max()) if a.numel() else 0.0, float(b.abs().max()) if b.numel() else 0.0
        )
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * (scale or 1.0)))


class StructuredFallback(Exception):  # noqa: N818 - a control-flow signal, not a user error
    """Internal: these structured layers cannot be computed on the full batch; use the general
    path for them (raised before anything is trusted; the caller starts over)."""

    def __init__(self, paths: Sequence[str], reason: str) -> None:
        super().__init__(f"structured layers {list(paths)}: {reason}")
        self.paths = tuple(paths)
        self.reason = reason
