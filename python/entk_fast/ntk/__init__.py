"""The torch eNTK engine: model + inputs -> kernel tiles -> kernels -> eigenpairs.

Modules in pipeline order, one job each (tests/test_architecture.py keeps the order):

1. ``checks``, ``vmapping``, ``params``, ``readout_pruning``, ``assemble``: helpers (closeness
   checks, vmap quirks, parameter selection and groups, the one tile loop);
2. ``layers``: the registries of layers with an exact structured block: ``LAYER_RULES``
   (Linear, Embedding) and ``MODULE_RULES`` (``nn.MultiheadAttention``, whose projections
   ``attention`` recomputes with their inputs exposed);
3. ``probe``: one cheap look at the model (output shape, batch independence, derivative check);
4. ``problem``: the validated request and the ``Reduction`` objects;
5. ``plan``: the memory budget and every path's tile / chunk plan;
6. ``sources/``: what a sample tile contributes (``general`` = vmap(jacrev) blocks; the exact
   fast path: ``layer_search`` → ``cotangents`` → ``structured``);
7. ``kernel`` (``empirical_ntk``, square and cross), ``operator`` (K·v through kept autograd
   graphs), ``factored`` (K·v from gathered factors), ``layer_operator`` (K·v for one layer
   through a cached forward);
8. ``spectrum``: ``entk_spectrum`` and ``entk_topk`` (dense, dual, matrix-free).
"""

from __future__ import annotations

from .kernel import empirical_ntk
from .spectrum import entk_spectrum, entk_topk

__all__ = ["empirical_ntk", "entk_spectrum", "entk_topk"]
