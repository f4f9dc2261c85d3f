"""Spectral cliffs: the largest ratios λ_k / λ_{k+1} of a descending spectrum (J. Lin, arXiv
2510.00468: sharp cliffs separate feature families).

The ratio primitive is defined with the result types (``NTKSpectrum.gaps`` uses it); this is
its public home for analyses.
"""

from __future__ import annotations

from ..results import RIDGE_EPSILON, SpectralCliff, spectral_cliffs

__all__ = ["RIDGE_EPSILON", "SpectralCliff", "spectral_cliffs"]
