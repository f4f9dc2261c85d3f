"""The torch eNTK engine: model + inputs -> kernel tiles -> kernels, and K·v without K.

Modules, one job each: ``problem`` (the validated request and the ``Reduction`` objects),
``params`` (parameter selection and groups), ``probe`` (one cheap look at the model),
``checks`` (batch-independence checks), ``plan`` (the memory budget and every path's tile /
chunk plan), ``sources/`` (what a sample tile contributes: ``general`` = vmap(jacrev) blocks,
``structured`` + ``layers`` = the exact Linear/Embedding fast path and its rule registry),
``assemble`` (the one tile loop), ``operator`` (kernel-vector products through kept autograd
graphs), ``factored`` (kernel-vector products from the structured layers' gathered factors),
``kernel`` (``empirical_ntk``, square and cross).
"""

from __future__ import annotations

from .kernel import empirical_ntk

__all__ = ["empirical_ntk"]
