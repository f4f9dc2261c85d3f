"""Key frequencies of a modular-addition transformer and the overlap of its layer kernels'
top eigenvectors with the Fourier modes at those frequencies (J. Lin, arXiv 2510.00468, v3).

A transformer that groks modular addition uses only a few *key frequencies* w: its token
embedding W_E (p × d over the tokens 0..p−1) lies almost in the span of cos(2πw·t/p),
sin(2πw·t/p) for those w. The eNTK of its unembedding layer then has its top 2·(#key)+1
eigenvectors (the constant mode and one cos/sin pair per key frequency) in the a+b Fourier
family restricted to the key frequencies (the paper: 3.965 of 4 for two key frequencies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import linalg
from ..errors import InvalidArgumentError
from .fourier import family_values, fourier_family

__all__ = [
    "KEY_FAMILIES",
    "KeyFrequencies",
    "fourier_norms",
    "key_family",
    "key_frequencies",
    "key_overlaps",
    "kernel_key_overlaps",
]

KEY_FAMILIES = ("a+b", "a", "b")
"""The families the layer kernels are compared with: the answer's, and each operand's.

Examples:
    >>> from entk_fast.analysis import KEY_FAMILIES
    >>> KEY_FAMILIES
    ('a+b', 'a', 'b')
"""


def fourier_norms(embedding: Any, p: int) -> np.ndarray:
    """Norm of each frequency k = 1..(p−1)/2 of an embedding along its token axis, (K,).

    ``embedding`` is (p, d) (or more rows: the first p are used, e.g. without "="). With the
    orthonormal real Fourier basis of the token axis (√(2/p)·cos(2πk·t/p), √(2/p)·sin(…)),
    the norm of frequency k is ‖[cos_k sin_k]ᵀ W‖_F = √2·‖DFT(W)[k]‖/√p, so the squared norms
    plus the squared norm of the token mean add up to ‖W‖²_F.

    Args:
        embedding: (p, d) or (≥ p, d) real, one row a token.
        p: the modulus, an odd integer ≥ 3.

    Returns:
        (K,) float64, K = (p − 1)/2; entry k − 1 is frequency k.

    Raises:
        InvalidArgumentError: p is not an odd integer ≥ 3, or ``embedding`` has fewer than p
            rows or is not 2-D.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import fourier_norms
        >>> t = np.arange(7)[:, None]
        >>> W = np.hstack([np.cos(2 * np.pi * 2 * t / 7), np.sin(2 * np.pi * 2 * t / 7)])
        >>> fourier_norms(W, 7).round(6)  # all in frequency 2: √7
        array([0.      , 2.645751, 0.      ])
    """
    _check_p(p)
    w = np.asarray(embedding, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < p:
        raise InvalidArgumentError(f"embedding: expected (≥ {p}, d), got {w.shape}")
    spectrum = np.fft.rfft(w[:p], axis=0)[1 : (p - 1) // 2 + 1]  # (K, d), frequencies 1..K
    return np.sqrt(2.0 / p) * np.linalg.norm(spectrum, axis=1)


@dataclass(frozen=True)
class KeyFrequencies:
    """The key frequencies of an embedding and how clearly they stand out.

    Attributes:
        frequencies: the key frequencies (1-based, ascending).
        norms: (K,) the norm of every frequency 1..K (`fourier_norms`).
        cliff: the ratio of the smallest key norm to the largest other norm (∞ for p = 3, a
            single frequency); the rule puts the cut where this ratio is largest.
        fraction: the share of the embedding's non-constant energy Σ norm² in the key
            frequencies.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import key_frequencies
        >>> t = np.arange(7)[:, None]
        >>> keys = key_frequencies(np.cos(2 * np.pi * 3 * t / 7 + np.arange(4)), 7)
        >>> keys.frequencies, round(keys.fraction, 6)
        ((3,), 1.0)
    """

    frequencies: tuple[int, ...]
    norms: np.ndarray
    cliff: float
    fraction: float

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready lists and numbers."""
        return {
            "frequencies": list(self.frequencies),
            "norms": self.norms.tolist(),
            "cliff": self.cliff,
            "fraction": self.fraction,
        }


def key_frequencies(embedding: Any, p: int, *, max_keys: int | None = None) -> KeyFrequencies:
    """The key frequencies of a token embedding (p, d): those above the largest cliff.

    Rule: sort the frequency norms (`fourier_norms`) in descending order and cut where
    the ratio of consecutive norms n₍ᵢ₎ / n₍ᵢ₊₁₎ is largest (the first such i on a tie), within
    the top ``max_keys`` (default: (p − 1)/4 rounded up, i.e. at most half the frequencies).
    A grokked embedding has a few frequencies that carry almost all its energy and the rest
    near zero (weight decay removes them), so this cut falls right after them whatever their
    number; a fixed fraction of the largest norm would split key frequencies of unequal size.
    A frequency whose norm is exactly 0 makes the ratio before it infinite, so the cut falls
    there if it is within ``max_keys``.

    Args:
        embedding: (p, d) or (≥ p, d) token embedding W_E, one row a token.
        p: the modulus, an odd integer ≥ 3.
        max_keys: the most key frequencies, in [1, (p − 1)/2].

    Returns:
        A `KeyFrequencies` (J. Lin, arXiv 2510.00468, v3: the transformer's key
        frequencies).

    Raises:
        InvalidArgumentError: ``max_keys`` is out of range, or as `fourier_norms`.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import key_frequencies
        >>> t = np.arange(11)[:, None]
        >>> W = np.cos(2 * np.pi * 3 * t / 11 + np.arange(4))  # frequency 3, four phases
        >>> W += 0.01 * np.cos(2 * np.pi * t * np.arange(1, 6) / 11).sum(1, keepdims=True)
        >>> keys = key_frequencies(W, 11)
        >>> keys.frequencies, keys.norms.round(3)
        ((3,), array([0.047, 0.047, 4.692, 0.047, 0.047]))
    """
    norms = fourier_norms(embedding, p)
    n_freq = norms.size
    limit = -(-n_freq // 2) if max_keys is None else max_keys
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= n_freq:
        raise InvalidArgumentError(f"max_keys: expected an integer in [1, {n_freq}], got {limit}")
    order = np.argsort(-norms, kind="stable")
    ranked = norms[order]
    if n_freq == 1:
        count, cliff = 1, float("inf")
    else:
        tiny = np.finfo(np.float64).tiny
        ratios = ranked[:-1] / np.maximum(ranked[1:], tiny)
        count = int(np.argmax(ratios[: min(limit, n_freq - 1)])) + 1
        cliff = float(ratios[count - 1])
    keys = tuple(sorted(int(k) + 1 for k in order[:count]))
    energy = float(np.sum(norms**2))
    fraction = float(np.sum(ranked[:count] ** 2)) / energy if energy > 0 else 0.0
    return KeyFrequencies(keys, norms, cliff, fraction)


def key_family(p: int, which: str, frequencies: Iterable[int]) -> np.ndarray:
    """Orthonormal basis (p², 2·len(frequencies)) of family ``which`` at these frequencies only.

    Columns cos(2πk·v/p), sin(2πk·v/p) for each k (ascending), v = a, b, a+b or a−b; they are
    columns of `fourier_family` (its columns of distinct frequencies
    are orthogonal already, so a subset stays orthonormal).

    Args:
        p: the modulus, an odd integer ≥ 3.
        which: ``"a"``, ``"b"``, ``"a+b"`` or ``"a-b"``.
        frequencies: distinct integers in [1, (p − 1)/2].

    Returns:
        (p², 2·len(frequencies)) float64 with orthonormal columns; row a·p + b.

    Raises:
        InvalidArgumentError: p or a frequency is out of range, frequencies repeat or are
            empty, or ``which`` is no family.

    Examples:
        >>> from entk_fast.analysis import key_family
        >>> key_family(7, "a+b", [2]).shape
        (49, 2)
    """
    freqs = _check_frequencies(p, frequencies)
    full = fourier_family(p, which)
    cols = [c for k in freqs for c in (2 * (k - 1), 2 * (k - 1) + 1)]
    return full[:, cols]


def key_overlaps(
    vectors: Any,
    p: int,
    frequencies: Iterable[int],
    families: Sequence[str] = KEY_FAMILIES,
) -> dict[str, float]:
    """Subspace overlap Σ cos² of span(``vectors``) (p², m) with each family at the key
    frequencies; each value is in [0, 2·#frequencies].

    Args:
        vectors: (p², m) real, m ≥ 1 (row a·p + b).
        p: the modulus, an odd integer ≥ 3.
        frequencies: the key frequencies, distinct integers in [1, (p − 1)/2].
        families: which families (default `KEY_FAMILIES`).

    Returns:
        Family name -> overlap (a float).

    Raises:
        InvalidArgumentError: ``vectors`` is not (p², m ≥ 1), or as `key_family`.

    Examples:
        >>> from entk_fast.analysis import key_family, key_overlaps
        >>> overlaps = key_overlaps(key_family(7, "a+b", [2]), 7, [2])
        >>> {name: round(value, 6) for name, value in overlaps.items()}
        {'a+b': 2.0, 'a': 0.0, 'b': 0.0}
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] != p * p or v.shape[1] < 1:
        raise InvalidArgumentError(f"vectors: expected ({p * p}, m ≥ 1), got {v.shape}")
    freqs = _check_frequencies(p, frequencies)
    return {name: linalg.subspace_overlap(v, key_family(p, name, freqs)) for name in families}


def kernel_key_overlaps(
    kernels: Mapping[str, Any],
    p: int,
    frequencies: Iterable[int],
    *,
    n_vectors: int | None = None,
    families: Sequence[str] = KEY_FAMILIES,
) -> dict[str, dict[str, Any]]:
    """For each named kernel (p², p²): the overlap of its top ``n_vectors`` eigenvectors
    (default 2·#frequencies + 1: the constant mode and a cos/sin pair per key frequency)
    with each family at the key frequencies, and its top eigenvalues.

    Returns ``{name: {"overlaps": {family: value}, "top_eigenvalues": [...]}}``, the
    eigenvalues descending, ``n_vectors`` + 1 of them (J. Lin, arXiv 2510.00468, v3: the
    layer kernels of the modular-addition transformer).

    Args:
        kernels: name -> (p², p²) symmetric kernel (a traced eNTK over all p² pairs, row
            a·p + b), e.g. ``empirical_ntk(..., layerwise=True).layer_kernels``.
        p: the modulus, an odd integer ≥ 3.
        frequencies: the key frequencies, distinct integers in [1, (p − 1)/2].
        n_vectors: how many top eigenvectors, in [1, p²].
        families: which families (default `KEY_FAMILIES`).

    Raises:
        InvalidArgumentError: ``n_vectors`` is out of range, a kernel is not a symmetric
            (p², p²) matrix, or as `key_family`.

    Examples:
        >>> import numpy as np
        >>> from entk_fast.analysis import kernel_key_overlaps, key_family
        >>> F = key_family(7, "a+b", [2])
        >>> K = 3 * F @ F.T + 2 * np.ones((49, 49)) / 49  # the pair at 3, the constant at 2
        >>> out = kernel_key_overlaps({"unembed": K}, 7, [2])["unembed"]
        >>> round(out["overlaps"]["a+b"], 6), np.round(out["top_eigenvalues"][:3], 6)
        (2.0, array([3., 3., 2.]))
    """
    freqs = _check_frequencies(p, frequencies)
    m = 2 * len(freqs) + 1 if n_vectors is None else n_vectors
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= p * p:
        raise InvalidArgumentError(f"n_vectors: expected an integer in [1, {p * p}], got {m}")
    out: dict[str, dict[str, Any]] = {}
    for name, kernel in kernels.items():
        values, vectors = linalg.eigh_topk(np.asarray(kernel, dtype=np.float64), min(m + 1, p * p))
        out[name] = {
            "overlaps": key_overlaps(vectors[:, :m], p, freqs, families),
            "top_eigenvalues": values[: m + 1].tolist(),
        }
    return out


def _check_p(p: int) -> None:
    family_values(p, "a")  # an odd integer ≥ 3


def _check_frequencies(p: int, frequencies: Iterable[int]) -> tuple[int, ...]:
    _check_p(p)
    freqs = tuple(frequencies)
    top = (p - 1) // 2
    if (
        not freqs
        or len(set(freqs)) != len(freqs)
        or any(not isinstance(k, int | np.integer) or not 1 <= k <= top for k in freqs)
    ):
        raise InvalidArgumentError(
            f"frequencies: expected distinct integers in [1, {top}] for p = {p}, got {freqs}"
        )
    return tuple(sorted(int(k) for k in freqs))
