"""Data generators: stated statistics, exact structure, determinism, argument errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.toys.modadd import modadd_dataset, modadd_onehot_targets
from entk_fast.toys.tms import tms_dataset, tms_importance


def test_importance_is_powers_of_the_decay() -> None:
    imp = tms_importance(50)
    assert imp.dtype == torch.float32 and imp.shape == (50,)
    assert imp.tolist() == [float(np.float32(0.8**i)) for i in range(50)]
    assert tms_importance(3, 0.5, dtype=torch.float64).tolist() == [1.0, 0.5, 0.25]


def test_tms_rows_are_unit_norm_or_zero() -> None:
    x = tms_dataset(50, 500, 0.9, seed=0)
    assert x.shape == (500, 50) and x.dtype == torch.float32
    norms = x.double().norm(dim=1)
    nonzero = norms > 0
    assert torch.allclose(norms[nonzero], torch.ones(int(nonzero.sum()), dtype=torch.float64))
    assert (x >= 0).all() and (x <= 1).all()
    # P(all 50 coordinates are zero) = 0.9**50 ~ 0.005: the few such rows stay exactly zero
    assert (~nonzero).sum() < 15
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_tms_sparsity_and_value_distribution(sparsity: float) -> None:
    n, d = 50, 4000
    x = tms_dataset(n, d, sparsity, seed=1, normalize=False).double()
    frac = (x != 0).double().mean().item()
    sigma = math.sqrt(sparsity * (1 - sparsity) / (n * d))
    assert abs(frac - (1 - sparsity)) <= 5 * sigma + 1e-12
    values = x[x != 0]
    m = values.numel()
    assert abs(values.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / m)  # U[0, 1): mean 1/2
    assert values.var().item() == pytest.approx(1 / 12, rel=0.03)  # variance 1/12
    assert values.max() < 1


def test_tms_all_zero_rows_are_counted_as_expected_and_stay_zero() -> None:
    d, n, s = 20000, 3, 0.8
    x = tms_dataset(n, d, s, seed=2)
    zero_rows = int((x == 0).all(dim=1).sum())
    expected = d * s**n  # 10240
    assert abs(zero_rows - expected) < 5 * math.sqrt(d * s**n * (1 - s**n))
    assert torch.isfinite(x).all()


def test_tms_normalisation_is_a_row_scaling_of_the_raw_draw() -> None:
    raw = tms_dataset(10, 200, 0.5, seed=3, normalize=False).double()
    unit = tms_dataset(10, 200, 0.5, seed=3).double()
    norms = raw.norm(dim=1, keepdim=True)
    keep = norms.squeeze(1) > 0
    assert torch.allclose(unit[keep], raw[keep] / norms[keep], atol=1e-6)


def test_generators_depend_on_the_seed_only() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = tms_dataset(seed=5)
    sa = modadd_dataset(11, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    torch.rand(17)
    b = tms_dataset(seed=5)
    sb = modadd_dataset(11, seed=5)
    assert torch.equal(a, b)
    assert torch.equal(sa.train_idx, sb.train_idx)
    assert not torch.equal(a, tms_dataset(seed=6))
    assert not torch.equal(sa.train_idx, modadd_dataset(11, seed=6).train_idx)


def test_modadd_pairs_are_enumerated_row_major() -> None:
    p = 7
    data = modadd_dataset(p)
    assert data.inputs.shape == (p * p, 2 * p) and data.inputs.dtype == torch.float32
    for a in range(p):
        for b in range(p):
            i = a * p + b
            expected = torch.zeros(2 * p)
            expected[a] = expected[p + b] = 1.0
            assert torch.equal(data.inputs[i], expected)
            assert (int(data.a[i]), int(data.b[i]), int(data.labels[i])) == (a, b, (a + b) % p)
    assert data.labels.dtype == torch.int64


def test_modadd_split_partitions_all_pairs() -> None:
    data = modadd_dataset(29, 0.7, seed=0)
    assert (data.n_train, data.n_test) == (589, 252)  # floor(0.7 * 841 + 0.5) = 589
    both = torch.cat([data.train_idx, data.test_idx])
    assert torch.equal(both.sort().values, torch.arange(841))
    assert torch.equal(data.train_idx, data.train_idx.sort().values)
    assert torch.equal(data.test_idx, data.test_idx.sort().values)
    # every label still occurs in the training set (a sanity check on the randomness)
    assert data.labels[data.train_idx].unique().numel() == 29


def test_modadd_targets_are_one_hot_labels() -> None:
    data = modadd_dataset(5)
    t = data.targets
    assert t.shape == (25, 5) and t.dtype == torch.float32
    assert torch.equal(t.argmax(dim=1), data.labels)
    assert torch.equal(t.sum(dim=1), torch.ones(25))
    assert torch.equal(modadd_onehot_targets(torch.tensor([0, 4]), 5)[1], torch.eye(5)[4])


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: tms_dataset(sparsity=1.0), InvalidArgumentError, r"sparsity must be in \[0, 1\)"),
        (lambda: tms_dataset(sparsity=-0.1), InvalidArgumentError, "sparsity"),
        (lambda: tms_dataset(sparsity=float("nan")), InvalidArgumentError, "sparsity"),
        (lambda: tms_dataset(n_points=0), InvalidArgumentError, "n_points"),
        (lambda: tms_dataset(seed=-1), InvalidArgumentError, "seed"),
        (lambda: tms_importance(4, decay=0.0), InvalidArgumentError, "decay"),
        (lambda: modadd_dataset(1), InvalidArgumentError, "p must be an integer >= 2"),
        (lambda: modadd_dataset(2.0), InvalidTypeError, "p must be an integer"),
        (lambda: modadd_dataset(7, 1.0), InvalidArgumentError, "train_fraction"),
        (lambda: modadd_dataset(7, 0.0), InvalidArgumentError, "train_fraction"),
        (lambda: modadd_dataset(2, 0.1), InvalidArgumentError, "empty"),
    ],
)
def test_invalid_arguments(call, error, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=fragment):
        call()
