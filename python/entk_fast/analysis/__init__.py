"""Eigenpairs -> numbers, torch-free (J. Lin, arXiv 2510.00468): spectral cliffs and blocks
(``cliffs``), TMS feature recovery (``tms``), the Fourier families of modular arithmetic and
their graph-smoothness rotation (``fourier``), and alignment over training (``alignment``)."""

from __future__ import annotations

from .alignment import (
    AlignmentCurve,
    alignment_curve,
    central_difference,
    principal_angles_degrees,
)
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

__all__ = [
    "FAMILIES",
    "RIDGE_EPSILON",
    "AlignmentCurve",
    "CliffReport",
    "FeatureMatch",
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
    "frequency_heatmap",
    "match_features",
    "orbit_laplacian",
    "principal_angles_degrees",
    "smoothness_rotation",
    "spectral_cliffs",
    "torus_laplacian",
]
