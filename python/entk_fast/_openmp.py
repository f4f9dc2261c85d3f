"""torch's OpenMP threads beside the Rust kernels' threads: a shorter spin for our own processes.

After each parallel torch operation the threads of torch's OpenMP pool (GNU libgomp in the
Linux wheels) keep spinning, waiting for the next one, for ``GOMP_SPINCOUNT`` iterations:
300 000 by default, 3 to 10 ms on the 2-core machine measured (docs/performance.md, "torch's
OpenMP threads and the Rust kernels"). A Rust kernel called right after torch work (the
structured path's Hadamard Gram after the gathering backward, a Gram after a Jacobian chunk)
shares the cores with them for that long: the attention model's Hadamard Gram took 8.6–10.5
ms right after a torch product against 5.5 ms back to back, and 6.5 ms right after the product
with ``GOMP_SPINCOUNT=30000``.

libgomp reads the variable once, when torch loads it, so it has to be in the environment
before ``import torch``. The ``entk-fast`` command sets it for its own process
(`shorten_openmp_spin`) unless the user chose ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``;
the Python API leaves the user's process as it is (the documentation says how to set it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["SHORT_SPIN", "SPIN_VARIABLE", "USER_CHOICES", "shorten_openmp_spin"]

SPIN_VARIABLE = "GOMP_SPINCOUNT"
"""libgomp's spin count: how long an idle OpenMP thread busy-waits before it sleeps."""

SHORT_SPIN = "30000"
"""The spin count `shorten_openmp_spin` sets: a tenth of libgomp's default. Long enough that
torch's back-to-back operations keep their threads awake (their times did not change), short
enough that a Rust kernel after them has the cores to itself."""

USER_CHOICES = (SPIN_VARIABLE, "OMP_WAIT_POLICY")
"""Variables that say the user has chosen how OpenMP threads wait: left alone."""


def shorten_openmp_spin(
    environ: MutableMapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> bool:
    """Set ``GOMP_SPINCOUNT`` to `SHORT_SPIN` in ``environ`` (default: this process's
    environment) if torch is not imported yet and the user set neither ``GOMP_SPINCOUNT``
    nor ``OMP_WAIT_POLICY``. Returns whether it was set.

    For processes entk-fast owns (the command line): once torch is imported, libgomp has read
    its settings and the variable would change nothing in this process.

    Examples:
        >>> env = {}
        >>> shorten_openmp_spin(env, modules={})
        True
        >>> env
        {'GOMP_SPINCOUNT': '30000'}
        >>> shorten_openmp_spin({"OMP_WAIT_POLICY": "ACTIVE"}, modules={})
        False
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "torch" in modules or any(name in environ for name in USER_CHOICES):
        return False
    environ[SPIN_VARIABLE] = SHORT_SPIN
    return True
