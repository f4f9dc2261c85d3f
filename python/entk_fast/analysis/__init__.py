"""Eigenpairs -> numbers, torch-free (J. Lin, arXiv 2510.00468): spectral cliffs and blocks
(``cliffs``), TMS feature recovery (``tms``), the Fourier families of modular arithmetic and
their graph-smoothness rotation (``fourier``), alignment over training (``alignment``), and the
key frequencies of the modular-addition transformer (``transformer``)."""

from __future__ import annotations

from .alignment import AlignmentCurve, alignment_curve, central_difference, principal_angles_degrees
from .cliffs import (
    RIDGE_EPSILON,
    CliffReport,
    SpectralCliff,
    cliff_blocks,
    feature_cliffs,
    spectral_cliffs,
)
from .fourier import (
    FAMILIES,
    atoms_found,
    block_overlaps,
    family_overlaps,
    family_values,
    fourier_family,
    frequency_heatmap,
    orbit_laplacian,
    smoothness_rotation,
    torus_laplacian,
)
from .tms import FeatureMatch, feature_heatmap, feature_indicators, match_features
from .transformer import (
    KEY_FAMILIES,
    KeyFrequencies,
    fourier_norms,
    kernel_key_overlaps,
    key_family,
    key_frequencies,
    key_overlaps,
)

__all__ = [
    "FAMILIES",
    "KEY_FAMILIES",
    "RIDGE_EPSILON",
    "AlignmentCurve",
    "CliffReport",
    "FeatureMatch",
    "KeyFrequencies",
    "SpectralCliff",
    "alignment_curve",
    "atoms_found",
    "block_overlaps",
    "central_difference",
    "cliff_blocks",
    "family_overlaps",
    "family_values",
    "feature_cliffs",
    "feature_heatmap",
    "feature_indicators",
    "fourier_family",
    "fourier_norms",
    "frequency_heatmap",
    "kernel_key_overlaps",
    "key_family",
    "key_frequencies",
    "key_overlaps",
    "match_features",
    "orbit_laplacian",
    "principal_angles_degrees",
    "smoothness_rotation",
    "spectral_cliffs",
    "torus_laplacian",
]
