"""Eigenpairs -> numbers, torch-free: spectral cliffs and the Fourier families of modular
arithmetic (J. Lin, arXiv 2510.00468)."""

from __future__ import annotations

from .cliffs import RIDGE_EPSILON, SpectralCliff, spectral_cliffs
from .fourier import FAMILIES, family_overlaps, family_values, fourier_family

__all__ = [
    "FAMILIES",
    "RIDGE_EPSILON",
    "SpectralCliff",
    "family_overlaps",
    "family_values",
    "fourier_family",
    "spectral_cliffs",
]
