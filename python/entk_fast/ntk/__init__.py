"""The torch eNTK engine: dense kernels, layer kernels, spectra and matrix-free top-k.

Modules, one job each: ``prepare`` (validation), ``groups`` (parameter groups), ``probe``
(one forward to learn the model), ``budget`` (memory planning), ``jacobian`` (general
path), ``structured`` (Linear/Embedding fast path), ``empirical`` (``empirical_ntk``),
``matfree`` (kernel-vector products), ``spectrum`` (``entk_spectrum``, ``entk_topk``),
``layout`` (row = n·C + c reshaping).
"""

from __future__ import annotations

from .empirical import EmpiricalNTK, empirical_ntk
from .spectrum import NTKSpectrum, entk_spectrum, entk_topk

__all__ = ["EmpiricalNTK", "NTKSpectrum", "empirical_ntk", "entk_spectrum", "entk_topk"]
