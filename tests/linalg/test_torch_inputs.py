"""linalg accepts CPU torch tensors without copying them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from entk_fast import InvalidArgumentError, InvalidTypeError, linalg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_of_tensor_keeps_dtype_and_matches_torch(dtype):
    j = torch.randn(40, 25, dtype=dtype, generator=torch.Generator().manual_seed(0))
    k = linalg.gram(j)
    want = (j.double() @ j.double().T).numpy()
    assert k.dtype == np.dtype(str(dtype).removeprefix("torch."))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert np.max(np.abs(k - want)) <= tol * np.max(np.abs(want))


def test_gram_accumulate_updates_a_tensor_in_place():
    j = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k = torch.zeros(10, 10, dtype=torch.float64)
    linalg.gram_accumulate(k, j)
    assert torch.allclose(k, j @ j.T, rtol=1e-13, atol=0)


def test_tensor_requiring_grad_is_detached_not_rejected():
    j = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    k = linalg.gram(j)
    assert np.allclose(k, (j @ j.T).detach().numpy(), rtol=1e-13)


def test_eigh_of_tensor_and_angles_of_tensors():
    a = torch.randn(30, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    values, vectors = linalg.eigh(a @ a.T)
    assert values[:3].min() > 0 and np.allclose(values[3:], 0, atol=1e-10)
    assert linalg.subspace_overlap(vectors[:, :3], a) == pytest.approx(3.0, abs=1e-10)


def test_integer_tensor_is_a_type_error():
    with pytest.raises(InvalidTypeError, match="J: expected dtype float32 or float64, got int64"):
        linalg.gram(torch.ones(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("which", ["gram_accumulate", "hadamard_gram_accumulate"])
def test_accumulating_into_a_tensor_that_requires_grad_is_refused(which):
    # torch refuses in-place ops on such leaves; a silent update would corrupt gradients.
    k = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(
        InvalidArgumentError, match="K: expected a tensor that does not require grad"
    ):
        if which == "gram_accumulate":
            linalg.gram_accumulate(k, np.ones((4, 2)))
        else:
            linalg.hadamard_gram_accumulate(k, np.ones((4, 2)), np.eye(2), block=2)
    assert torch.count_nonzero(k.detach()) == 0


def test_in_place_update_is_seen_by_autograd():
    # A tensor saved for backward and then changed by us must make backward fail loudly,
    # as after any torch in-place op, instead of giving wrong gradients.
    w = torch.ones(3, 3, dtype=torch.float64, requires_grad=True)
    k = torch.zeros(3, 3, dtype=torch.float64)
    y = (w * k).sum()  # saves k for backward
    linalg.gram_accumulate(k, np.ones((3, 1)))
    assert torch.equal(k, torch.ones(3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
