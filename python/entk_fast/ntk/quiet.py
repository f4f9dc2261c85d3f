"""Silence torch's notice that an op has no vmap batching rule (a slower, correct fallback).

Per-sample Jacobians run the model under ``vmap``; ops such as CPU scaled-dot-product
attention then warn "There is a performance drop because we have not yet implemented the
batching rule ...". The result is exact and the user cannot act on it, so the engine hides it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_batching_fallback"]


@contextmanager
def quiet_batching_fallback() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"There is a performance drop because we have not yet implemented"
        )
        yield
