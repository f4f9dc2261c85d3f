"""The one tile loop: a kernel assembled from sample tiles through the Rust Gram routines.

A *source* (a pack of parameters on the general path, or a sweep of structured layers) loads
what one sample tile contributes (Jacobian rows, or layer inputs and output cotangents) and
knows how two loaded tiles make a kernel block; this module decides which tile pairs are
formed and where their blocks go. The square kernel K(X, X) takes the diagonal tiles and the
upper tile pairs (each block added with its transpose); the cross kernel K(X, X2) takes every
(X tile, X2 tile) pair. A source whose work fits in one tile does it in one go
(``add_whole``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

__all__ = [
    "TileSource",
    "assemble_cross",
    "assemble_square",
    "cross_units",
    "spans",
    "square_units",
]

Tick = Callable[[int], object]


class TileSource(Protocol):
    """What one unit of work (a general pack, a structured sweep) offers the tile loop."""

    def load(self, start: int, stop: int, *, check: bool) -> Any:
        """What samples ``start:stop`` contribute (``check``: verify them, the first time)."""
        ...

    def add_diagonal(self, tile: Any, rows: slice) -> None:
        """Add a tile's own block into its targets at ``[rows, rows]``."""
        ...

    def cross(self, left: Any, right: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(target, block) pairs: the block between two loaded tiles, for each target."""
        ...

    def add_whole(self, tick: Tick) -> None:
        """The whole square kernel of all samples at once (the source's untiled plan)."""
        ...


def spans(start: int, stop: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) cut into consecutive spans of at most ``tile`` samples."""
    step = max(1, int(tile))
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def square_units(n: int, tile: int) -> int:
    """Ticks of `assemble_square` when tiled: one per diagonal tile and per tile pair."""
    count = len(spans(0, n, tile))
    return count * (count + 1) // 2


def assemble_square(source: TileSource, n: int, tile: int, per: int, tick: Tick) -> None:
    """K(X, X) over ``n`` samples in tiles of ``tile`` (``per`` kernel rows a sample)."""
    if tile >= n:
        source.add_whole(tick)
        return
    tiles = spans(0, n, tile)
    for i, (a, b) in enumerate(tiles):
        left = source.load(a, b, check=True)
        ri = slice(a * per, b * per)
        source.add_diagonal(left, ri)
        tick(1)
        for c, d in tiles[i + 1 :]:
            right = source.load(c, d, check=False)
            rj = slice(c * per, d * per)
            for target, block in source.cross(left, right):
                target[ri, rj] += block
                target[rj, ri] += block.T
                del block
            del right
            tick(1)
        del left


def assemble_cross(
    source: TileSource, n_rows: int, n_cols: int, tile: int, per: int, tick: Tick
) -> None:
    """K(X, X2): samples ``0:n_rows`` are X and ``n_rows:n_rows + n_cols`` are X2.

    Targets are (n_rows·per, n_cols·per); each X2 tile is checked the first time it loads.
    """
    rows = spans(0, n_rows, tile)
    cols = spans(n_rows, n_rows + n_cols, tile)
    for i, (a, b) in enumerate(rows):
        left = source.load(a, b, check=True)
        ri = slice(a * per, b * per)
        for c, d in cols:
            right = source.load(c, d, check=i == 0)
            rj = slice((c - n_rows) * per, (d - n_rows) * per)
            for target, block in source.cross(left, right):
                target[ri, rj] += block
                del block
            del right
            tick(1)
        del left


def cross_units(n_rows: int, n_cols: int, tile: int) -> int:
    """Ticks of `assemble_cross`: one per tile pair."""
    return len(spans(0, n_rows, tile)) * len(spans(0, n_cols, tile))
