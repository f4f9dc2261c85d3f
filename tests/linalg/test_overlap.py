"""linalg.py: the subspace overlap of a vector and of an index range, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entk_fast.errors import InvalidArgumentError


def test_linalg_overlap_of_a_vector_and_integer_range() -> None:
    from entk_fast import linalg

    t = 0.6
    v = np.array([math.cos(t), math.sin(t), 0.0])  # a 1-D vector is a one-column basis
    plane = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    assert math.isclose(linalg.subspace_overlap(v, plane), math.cos(t) ** 2, rel_tol=1e-12)
    assert math.isclose(linalg.subspace_overlap(plane, v), math.cos(t) ** 2, rel_tol=1e-12)
    for n in (2**127, -(2**127) - 1):
        with pytest.raises(InvalidArgumentError, match="128 bits"):
            linalg.set_num_threads(n)
