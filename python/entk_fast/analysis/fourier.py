"""Fourier feature families of modular arithmetic on the p × p input grid, and their overlaps
with eigenvector blocks (J. Lin, arXiv 2510.00468, the modular-addition MLP)."""

from __future__ import annotations

import numpy as np

from .. import linalg
from ..errors import InvalidArgumentError

__all__ = [
    "FAMILIES",
    "ROTATION_DIRECTIONS",
    "atoms_found",
    "block_overlaps",
    "family_overlaps",
    "family_values",
    "fourier_family",
    "frequency_heatmap",
    "orbit_laplacian",
    "smoothness_rotation",
    "torus_laplacian",
]

FAMILIES = ("a", "b", "a+b", "a-b")
"""The four families of the modular-addition MLP: functions of a, b, a+b and a−b (mod p).

Their Fourier bases (`fourier_family`) are what the MLP's eNTK eigenvector blocks
line up with (J. Lin, arXiv 2510.00468).

Examples:
    >>> from entk_fast.analysis import FAMILIES, fourier_family
    >>> FAMILIES
    ('a', 'b', 'a+b', 'a-b')
    >>> [fourier_family(5, name).shape for name in FAMILIES]
    [(25, 4), (25, 4), (25, 4), (25, 4)]
"""


def family_values(p: int, which: str) -> np.ndarray:
    """The integer variable of a family on all p² inputs, (p²,); row i = a·p + b.

    Args:
        p: the modulus, an odd integer ≥ 3.
        which: ``"a"``, ``"b"``, ``"a+b"`` or ``"a-b"`` (`FAMILIES`).

    Returns:
        (p²,) int64 values in [0, p): a, b, (a + b) mod p or (a − b) mod p.

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3, or ``which`` is no family.

    Examples:
        >>> from entk_fast.analysis import family_values
        >>> family_values(3, "a+b")  # (a, b) = (0, 0), (0, 1), (0, 2), (1, 0), ...
        array([0, 1, 2, 1, 2, 0, 2, 0, 1])
    """
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
    The feature families of the modular-addition MLP (J. Lin, arXiv 2510.00468).

    Args:
        p: the modulus, an odd integer ≥ 3.
        which: ``"a"``, ``"b"``, ``"a+b"`` or ``"a-b"`` (`FAMILIES`).

    Returns:
        (p², p − 1) float64 with orthonormal columns; row i = a·p + b.

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3, or ``which`` is no family.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import fourier_family
        >>> F = fourier_family(5, "a+b")
        >>> F.shape, np.allclose(F.T @ F, np.eye(4))
        ((25, 4), True)
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

    Args:
        vectors: (p², k) float32/float64, e.g. a block of a traced kernel's eigenvectors
            (row a·p + b).
        p: the modulus, an odd integer ≥ 3.
        families: which of `FAMILIES` to compare with.

    Returns:
        Family name -> overlap (a float).

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3, a family is unknown, or
            ``vectors`` has not p² rows.

    Examples:
        >>> from entk_fast.analysis import family_overlaps, fourier_family
        >>> overlaps = family_overlaps(fourier_family(5, "a"), 5)
        >>> {name: round(value, 6) for name, value in overlaps.items()}
        {'a': 4.0, 'b': 0.0, 'a+b': 0.0, 'a-b': 0.0}
    """
    return {name: linalg.subspace_overlap(vectors, fourier_family(p, name)) for name in families}


def block_overlaps(
    vectors: np.ndarray, p: int, blocks: list[tuple[int, int]], families: tuple[str, ...] = FAMILIES
) -> dict[str, dict[str, float]]:
    """Overlap of each block of eigenvectors (1-based inclusive (first, last)) with each family.

    Returns ``{"2-57": {"a": 27.6, ...}, ...}``; each value is in [0, p − 1]. The paper's
    table of cliff blocks against Fourier families (J. Lin, arXiv 2510.00468).

    Args:
        vectors: (p², m) eigenvectors, descending (row a·p + b).
        p: the modulus, an odd integer ≥ 3.
        blocks: 1-based inclusive (first, last) column ranges, e.g. from
            `cliff_blocks`.
        families: which of `FAMILIES` to compare with.

    Raises:
        InvalidArgumentError: a block is not within the m columns, or as
            `family_overlaps`.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import block_overlaps, fourier_family
        >>> vectors = np.hstack([fourier_family(5, "a"), fourier_family(5, "b")])
        >>> table = block_overlaps(vectors, 5, [(1, 4), (5, 8)], families=("a", "b"))
        >>> {block: {f: round(v, 6) for f, v in row.items()} for block, row in table.items()}
        {'1-4': {'a': 4.0, 'b': 0.0}, '5-8': {'a': 0.0, 'b': 4.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for first, last in blocks:
        if not 1 <= first <= last <= vectors.shape[1]:
            raise InvalidArgumentError(
                f"blocks: ({first}, {last}) is not within the {vectors.shape[1]} eigenvectors"
            )
        out[f"{first}-{last}"] = family_overlaps(vectors[:, first - 1 : last], p, families)
    return out


def frequency_heatmap(vectors: np.ndarray, p: int, which: str) -> np.ndarray:
    """Phase-insensitive correlation (K, m), K = (p − 1)/2: for each frequency k and each
    column u (normalised), sqrt(⟨cos_k, u⟩² + ⟨sin_k, u⟩²) with the family's unit cos/sin.

    A Fourier atom of frequency k of family ``which`` scores 1 in row k − 1, whatever its phase.

    Args:
        vectors: (p², m) columns (row a·p + b); they need not be unit.
        p: the modulus, an odd integer ≥ 3.
        which: the family, one of `FAMILIES`.

    Returns:
        (K, m) float64 in [0, 1], K = (p − 1)/2; row k − 1 is frequency k.

    Raises:
        InvalidArgumentError: ``vectors`` is not (p², m), or as `fourier_family`.

    Examples:
        >>> from entk_fast.analysis import fourier_family, frequency_heatmap
        >>> frequency_heatmap(fourier_family(5, "a+b"), 5, "a+b").round(6)
        array([[1., 1., 0., 0.],
               [0., 0., 1., 1.]])
    """
    u = np.asarray(vectors, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != p * p:
        raise InvalidArgumentError(f"vectors: expected ({p * p}, m) for p = {p}, got {u.shape}")
    u = u / np.maximum(np.linalg.norm(u, axis=0), np.finfo(np.float64).tiny)
    proj = fourier_family(p, which).T @ u  # (p − 1, m): cos_1, sin_1, cos_2, ...
    return np.sqrt(proj[0::2] ** 2 + proj[1::2] ** 2)


ROTATION_DIRECTIONS = {
    ("a", "b"): ((1, 0), (0, 1)),  # functions of b are constant along a
    ("a+b", "a-b"): ((1, 1), (1, -1)),  # functions of a − b are constant along (+1, +1)
}
"""Directions (Δa, Δb) of the torus Laplacians that separate each cliff's two families: the
first is the direction its invariant family is constant along (`smoothness_rotation`).

Examples:
    >>> from entk_fast.analysis.fourier import ROTATION_DIRECTIONS
    >>> ROTATION_DIRECTIONS[("a+b", "a-b")]
    ((1, 1), (1, -1))
"""


def torus_laplacian(p: int, direction: tuple[int, int]) -> np.ndarray:
    """Laplacian (p², p²) of the periodic path graph on the p × p torus joining (a, b) to
    (a + Δa, b + Δb) mod p; row i = a·p + b. L = 2I − P − Pᵀ with P that shift.

    Used by `smoothness_rotation` to sort a family by frequency: the Fourier mode of
    frequency k along the direction has eigenvalue 2 − 2cos(2πk/p).

    Args:
        p: the modulus, an odd integer ≥ 3.
        direction: the shift (Δa, Δb), integers.

    Returns:
        (p², p²) symmetric float64; its rows sum to 0.

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import torus_laplacian
        >>> L = torus_laplacian(3, (1, 0))
        >>> L.shape, np.allclose(L.sum(axis=1), 0), np.allclose(L, L.T)
        ((9, 9), True, True)
    """
    family_values(p, "a")  # validates p
    da, db = direction
    a, b = np.divmod(np.arange(p * p), p)
    shifted = ((a + da) % p) * p + (b + db) % p
    lap = 2.0 * np.eye(p * p)
    lap[np.arange(p * p), shifted] -= 1.0
    lap[shifted, np.arange(p * p)] -= 1.0
    return lap


def orbit_laplacian(p: int, direction: tuple[int, int]) -> np.ndarray:
    """I − (1/p) Σ_t P^t (p², p²): 1/p times the Laplacian of the complete graph on each orbit
    of the shift (Δa, Δb), i.e. the projector onto functions with zero mean along every orbit.

    Its null space is that of `torus_laplacian` (functions constant along the direction)
    and every other Fourier mode has eigenvalue exactly 1, so it separates an invariant family
    from the rest with a gap of 1 (the path graph's gap is 2 − 2cos(2π/p), ≈ 0.05 at p = 29).

    Args:
        p: the modulus, an odd integer ≥ 3.
        direction: the shift (Δa, Δb), integers.

    Returns:
        (p², p²) float64 orthogonal projector (eigenvalues 0 and 1); row i = a·p + b.

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import fourier_family, orbit_laplacian
        >>> L = orbit_laplacian(5, (1, 0))
        >>> np.allclose(L @ L, L)
        True
        >>> F_b = fourier_family(5, "b")  # functions of b: constant along a
        >>> np.allclose(L @ F_b, 0)
        True
    """
    family_values(p, "a")
    da, db = direction
    a, b = np.divmod(np.arange(p * p), p)
    mean = np.zeros((p * p, p * p))
    rows = np.arange(p * p)
    for t in range(p):
        mean[rows, ((a + t * da) % p) * p + (b + t * db) % p] += 1.0 / p
    return np.eye(p * p) - mean


def smoothness_rotation(block: np.ndarray, p: int, families: tuple[str, str]) -> np.ndarray:
    """The two-stage graph-smoothness rotation of a cliff block (J. Lin, arXiv 2510.00468).

    With Q an orthonormal basis of ``block`` (p², k) and the directions d₁, d₂ of
    `ROTATION_DIRECTIONS` (the first cliff's a/b families: d₁ = along a, d₂ = along b;
    the second cliff's: the (+1, +1) and (+1, −1) diagonals):

    1. split: diagonalise Qᵀ L Q (ascending) with L the orbit Laplacian along d₁
       (`orbit_laplacian`); its k/2 smallest eigenvectors span the family invariant
       along d₁ (functions of b, resp. of a − b), the others the second family;
    2. sort each half by frequency: the invariant half by the path-graph Laplacian along d₂,
       the other half by the path-graph Laplacian along d₁ (`torus_laplacian`).

    Returns (p², k): [the d₁-invariant family sorted by frequency | the other family sorted
    by frequency]; each column is then close to one Fourier atom (up to its phase). Step 1
    uses the orbit Laplacian where the paper uses the path-graph Laplacian along d₁: both
    have the same null space, but the path graph's smallest non-zero eigenvalue (≈ 0.05 at
    p = 29) lets the lowest frequency of the second family mix with the invariant one when
    the block is not exactly the two families; the orbit Laplacian's gap is 1.

    Args:
        block: (p², k) eigenvectors of one cliff block (row a·p + b), k ≥ 2.
        p: the modulus, an odd integer ≥ 3.
        families: ``("a", "b")`` or ``("a+b", "a-b")`` (the keys of
            `ROTATION_DIRECTIONS`).

    Raises:
        InvalidArgumentError: ``families`` is not one of those pairs, or ``block`` is not
            (p², k ≥ 2).

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import fourier_family, frequency_heatmap, smoothness_rotation
        >>> p = 5
        >>> block = np.hstack([fourier_family(p, "a"), fourier_family(p, "b")])
        >>> mix, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))
        >>> rotated = smoothness_rotation(block @ mix, p, ("a", "b"))  # undo the mixing
        >>> frequency_heatmap(rotated, p, "b").round(6)  # first half: functions of b
        array([[1., 1., 0., 0., 0., 0., 0., 0.],
               [0., 0., 1., 1., 0., 0., 0., 0.]])
        >>> frequency_heatmap(rotated, p, "a").round(6)  # second half: functions of a
        array([[0., 0., 0., 0., 1., 1., 0., 0.],
               [0., 0., 0., 0., 0., 0., 1., 1.]])
    """
    key = tuple(families)
    if key not in ROTATION_DIRECTIONS:
        raise InvalidArgumentError(
            f"families: expected one of {list(ROTATION_DIRECTIONS)}, got {families!r}"
        )
    b = np.asarray(block, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] != p * p or b.shape[1] < 2:
        raise InvalidArgumentError(f"block: expected ({p * p}, k ≥ 2), got {b.shape}")
    along, across = ROTATION_DIRECTIONS[(families[0], families[1])]
    q, _ = np.linalg.qr(b)
    _, split = np.linalg.eigh(q.T @ orbit_laplacian(p, along) @ q)
    q = q @ split
    half = b.shape[1] // 2
    invariant, other = q[:, :half], q[:, half:]
    first = torus_laplacian(p, across)
    second = torus_laplacian(p, along)
    _, v1 = np.linalg.eigh(invariant.T @ first @ invariant)
    _, v2 = np.linalg.eigh(other.T @ second @ other)
    return np.concatenate([invariant @ v1, other @ v2], axis=1)


def atoms_found(heatmap: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """(K,) for each frequency: whether some column's phase-insensitive correlation ≥ threshold.

    Args:
        heatmap: (K, m) a `frequency_heatmap`.
        threshold: the correlation that counts as found.

    Returns:
        (K,) bool; entry k − 1 for frequency k.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import atoms_found
        >>> atoms_found(np.array([[0.99, 0.1], [0.2, 0.5]]))
        array([ True, False])
    """
    return np.asarray(heatmap).max(axis=1) >= threshold
