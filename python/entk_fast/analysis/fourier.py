"""Fourier feature families of modular arithmetic on the p × p input grid, and their overlaps
with eigenvector blocks (J. Lin, arXiv 2510.00468, the modular-addition MLP)."""

from __future__ import annotations

import numpy as np

from .. import linalg
from ..errors import InvalidArgumentError

__all__ = ["FAMILIES", "family_overlaps", "family_values", "fourier_family"]

#: The four families of the modular-addition MLP: functions of a, b, a+b and a−b (mod p).
FAMILIES = ("a", "b", "a+b", "a-b")


def family_values(p: int, which: str) -> np.ndarray:
    """The integer variable of a family on all p² inputs, (p²,); row i = a·p + b."""
    if not isinstance(p, int) or isinstance(p, bool) or p < 3 or p % 2 == 0:
        raise InvalidArgumentError(f"p: expected an odd integer ≥ 3, got {p!r}")
    a, b = np.divmod(np.arange(p * p), p)
    table = {"a": a, "b": b, "a+b": (a + b) % p, "a-b": (a - b) % p}
    if which not in table:
        raise InvalidArgumentError(f"which: expected one of {FAMILIES}, got {which!r}")
    return table[which]


def fourier_family(p: int, which: str) -> np.ndarray:
    """Orthonormal basis (p², p−1) of the Fourier family F_v, v ∈ {a, b, a+b, a−b}.

    Columns cos(2πk·v/p), sin(2πk·v/p) for k = 1..(p−1)/2 (in the order cos₁, sin₁, cos₂,
    …), centred and orthonormalised, so column 2(k−1) and 2(k−1)+1 belong to frequency k.
    """
    v = family_values(p, which).astype(np.float64)
    k = np.arange(1, (p - 1) // 2 + 1)
    phase = 2 * np.pi * np.outer(v, k) / p
    cols = np.empty((p * p, 2 * len(k)))
    cols[:, 0::2] = np.cos(phase)
    cols[:, 1::2] = np.sin(phase)
    cols -= cols.mean(axis=0)
    q, r = np.linalg.qr(cols)
    return q * np.sign(np.diag(r))  # keep each column's sign: q[:, j] ∝ cols[:, j] + lower


def family_overlaps(
    vectors: np.ndarray, p: int, families: tuple[str, ...] = FAMILIES
) -> dict[str, float]:
    """Subspace overlap Σ cos²(principal angles) of span(``vectors``) (p², k) with each family.

    Each value lies in [0, min(k, p − 1)]; p − 1 means the family lies in the span.
    """
    return {name: linalg.subspace_overlap(vectors, fourier_family(p, name)) for name in families}
