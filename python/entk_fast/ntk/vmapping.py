"""Running the model one sample at a time under ``torch.func.vmap``: the settings and errors.

The eNTK is that of the per-sample function, so every lone run (the general path's Jacobians,
the probe's lone runs, the structured path's gathering forward, the matrix-free products) is
one vmapped call. Here: attention in forms vmap batches, the quieted notice of
ops without a batching rule, and the one clear error for a forward that cannot be vmapped.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = [
    "NotVmappable",
    "load_forward_ad",
    "per_sample_attention",
    "quiet_batching_fallback",
    "vmappable_forward",
]

# Substrings of the errors torch.func raises when a forward cannot run under vmap.
_VMAP_MARKERS = ("vmap", "Batching rule", "randomness", "data-dependent control flow")


def load_forward_ad() -> None:
    """Import torch's forward-AD decompositions once, quietly.

    torch scripts them with ``torch.jit.script`` on first use of forward AD, which itself
    emits a FutureWarning about torch's internals (not the user's code).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.script")
        try:
            from torch._decomp import decompositions_for_jvp  # noqa: F401
        except ImportError:  # pragma: no cover - layout of a future torch
            pass


@contextmanager
def quiet_batching_fallback() -> Iterator[None]:
    """Hide torch's notice that an op has no vmap batching rule.

    Ops such as CPU scaled-dot-product attention warn "There is a performance drop because we
    have not yet implemented the batching rule ..." under vmap; the result is exact (a slower
    fallback) and the user cannot act on it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"There is a performance drop because we have not yet implemented"
        )
        yield


def _sdpa_switches() -> dict[str, tuple[Callable[[], Any], Callable[[bool], Any]]]:
    """(getter, setter) of each scaled-dot-product-attention backend flag torch has: the
    process-wide flags that ``torch.nn.attention.sdpa_kernel`` sets (its context manager also
    keeps a per-thread token, so it cannot be left from another thread)."""
    cuda = torch.backends.cuda
    switches: dict[str, tuple[Callable[[], Any], Callable[[bool], Any]]] = {
        "flash": (cuda.flash_sdp_enabled, cuda.enable_flash_sdp),
        "mem_efficient": (cuda.mem_efficient_sdp_enabled, cuda.enable_mem_efficient_sdp),
        "cudnn": (cuda.cudnn_sdp_enabled, cuda.enable_cudnn_sdp),
        "math": (cuda.math_sdp_enabled, cuda.enable_math_sdp),
    }
    get = getattr(torch._C, "_get_overrideable_sdp_enabled", None)
    put = getattr(torch._C, "_set_sdp_use_overrideable", None)
    if get is not None and put is not None:
        switches["overrideable"] = (get, put)
    return switches


class _AttentionSettings:
    """The process-wide attention settings `per_sample_attention` holds, counted: torch
    keeps them in global state, so threads computing eNTKs at once share one change, made by
    the first to enter and undone by the last to leave (a thread that left early must not
    restore the fused kernels under another thread's vmap)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.before: dict[str, bool] = {}
        self.fastpath_before = True

    def enter(self) -> None:
        with self.lock:
            if self.holders == 0:
                switches = _sdpa_switches()
                self.before = {name: bool(get()) for name, (get, _) in switches.items()}
                self.fastpath_before = torch.backends.mha.get_fastpath_enabled()
                try:
                    torch.backends.mha.set_fastpath_enabled(False)
                    for name, (_, put) in switches.items():
                        put(name == "math")
                except BaseException:
                    self._restore()
                    raise
            self.holders += 1

    def leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0:
                self._restore()

    def _restore(self) -> None:
        for name, (_, put) in _sdpa_switches().items():
            if name in self.before:
                put(self.before[name])
        torch.backends.mha.set_fastpath_enabled(self.fastpath_before)

    def after_fork_in_child(self) -> None:
        """A child forked while a thread held the settings: that thread does not exist in
        the child, so restore them there and start the count afresh."""
        self.lock = threading.Lock()
        if self.holders:
            self.holders = 0
            self._restore()


_ATTENTION = _AttentionSettings()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ATTENTION.after_fork_in_child)


@contextmanager
def per_sample_attention() -> Iterator[None]:
    """Attention in the forms ``torch.func.vmap`` batches, for forwards run one sample at a time.

    ``nn.MultiheadAttention``'s fused inference kernel (picked under ``no_grad`` in eval mode)
    and the fused CPU ``scaled_dot_product_attention`` kernels have no batching rule, so vmap
    would run them sample by sample (about 7× slower on a 400-sample chunk of 3 tokens), and
    no forward-mode derivative. Inside, the fast path is off and SDPA uses its math backend
    (matmul, softmax): the same attention up to round-off. Both are process-wide torch
    settings: they are restored when the last thread inside leaves.
    """
    _ATTENTION.enter()
    try:
        yield
    finally:
        _ATTENTION.leave()


class NotVmappable(InvalidArgumentError):
    """The model's forward cannot run under ``torch.func.vmap`` (the message says why).

    ``random``: it draws random numbers — its eNTK is not a function of the parameters, so no
    fallback computes one; otherwise (``.item()``, data-dependent control flow) the general
    path falls back to per-sample autograd.
    """

    random: bool = False


@contextmanager
def vmappable_forward() -> Iterator[None]:
    """Turn torch.func's errors about a forward that cannot be vmapped into a clear one.

    The general path runs the model on one sample at a time under ``torch.func.vmap``; random
    operations, ``.item()`` and Python control flow on tensor values cannot run there.
    """
    try:
        yield
    except RuntimeError as exc:
        message = str(exc)
        if not any(marker in message for marker in _VMAP_MARKERS):
            raise
        error = NotVmappable(
            "the model's forward must be vmappable per sample: the eNTK runs it on one sample "
            "at a time under torch.func.vmap, which does not allow random operations in "
            "forward (torch.randn, dropout in train mode, ...), .item() / .tolist() on tensors, "
            "Python control flow that depends on tensor values (if x.sum() > 0, boolean-mask "
            "indexing, data-dependent routing), nor in-place updates of parameters or buffers "
            f"(e.g. Embedding(max_norm=...)); write those with torch.where or move them out of "
            f"the forward. torch said: {message.splitlines()[0] if message else type(exc).__name__}"
        )
        error.random = "randomness" in message
        raise error from exc
