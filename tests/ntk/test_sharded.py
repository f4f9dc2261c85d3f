"""entk_topk(..., client=): the products spread over Dask workers, each holding its shard.

Checked against the single-process solve (itself checked against dense eigendecompositions in
test_spectrum / test_layer_operator): float64 eigenpairs equal to 1e-10, on the kept-graph
products (an MLP, flattened and trace) and the cached-layer products (a padded BERT layer read
at positions); a worker killed mid-solve; a product retried after the cluster lost its data."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import tiny_bert
from torch import nn

import entk_fast as ef
from entk_fast.errors import EntkError, InvalidArgumentError, InvalidTypeError
from entk_fast.ntk import sharded

pytest.importorskip("distributed")

from entk_fast.batch.cluster import open_client  # noqa: E402


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with open_client(workers=2, dashboard=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return model, torch.randn(41, 5, dtype=torch.float64)


def _bert() -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    torch.manual_seed(1)
    model = tiny_bert().double().eval()
    ids = torch.randint(0, 20, (30, 10))
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0  # padded rows
    options = {
        "params": "encoder.layer.0.intermediate.dense.weight",
        "output_fn": lambda out: out.last_hidden_state,
        "positions": torch.arange(30) % 6,
    }
    return model, {"input_ids": ids, "attention_mask": mask}, options


class _Gone:
    """The last worker a KilledWorker names (it prints its address)."""

    address = "tcp://127.0.0.1:1"


_GONE = _Gone()


def _assert_same_eigenpairs(got: ef.NTKSpectrum, ref: ef.NTKSpectrum) -> None:
    scale = float(ref.eigenvalues[0])
    np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-10 * scale)
    # eigenvalues are simple here: each eigenvector equal up to its sign
    overlap = np.abs(np.sum(got.eigenvectors * ref.eigenvectors, axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-10)


@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_distributed_solve_equals_the_single_process_one(client: Any, reduction: str) -> None:
    model, x = _mlp()
    ref = ef.entk_topk(model, x, 5, reduction=reduction, structured=False)
    got = ef.entk_topk(model, x, 5, reduction=reduction, client=client)
    _assert_same_eigenpairs(got, ref)
    spread = got.info["distributed"]
    assert spread["shards"] == 2 and spread["bounds"] == [(0, 20), (20, 41)]
    assert spread["builds"] == 2 and spread["rebuilds"] == 0 and spread["retries"] == 0
    assert got.info["products"] == "autograd" and got.info["converged"]
    # a vector's parts are the parameter-sized Mᵀ v (C of them for trace), float64
    n_params = sum(p.numel() for p in model.parameters())
    copies = 3 if reduction == "trace" else 1
    assert spread["part_bytes_per_vector"] == 8 * n_params * copies
    assert spread["seconds_per_product"] >= spread["compute_per_product"] > 0
    # the workers forgot the solve's shards
    held = client.run(lambda: len(sharded._SHARDS) + len(sharded._MODELS))
    assert set(held.values()) == {0}


def test_cached_layer_products_of_a_padded_bert_read_at_positions(client: Any) -> None:
    model, inputs, options = _bert()
    ref = ef.entk_topk(model, inputs, 6, **options)
    got = ef.entk_topk(model, inputs, 6, client=client, **options)
    assert ref.info["products"] == got.info["products"] == "cached_layer"
    _assert_same_eigenpairs(got, ref)
    # one vector's parts: the layer's d_out × d_in weight (and its bias slot), float64
    assert got.info["distributed"]["part_bytes_per_vector"] == 8 * (16 * 8 + 16)


def test_a_worker_killed_mid_solve_is_rebuilt_elsewhere_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL of the process holding shard 1 before the third product: its tasks rerun on a
    live worker, which builds the shard again from the replicated spec; the solve goes on to
    the single-process eigenpairs."""
    model, inputs, options = _bert()
    ref = ef.entk_topk(model, inputs, 6, **options)
    original = sharded.DistributedProducts._product
    killed: list[int] = []

    def product(self: sharded.DistributedProducts, block: np.ndarray) -> np.ndarray:
        if self.n_products == 2 and not killed:
            pids = self.client.run(os.getpid)
            victim = self.assigned[1]
            killed.append(pids[victim])
            os.kill(pids[victim], signal.SIGKILL)
        return original(self, block)

    monkeypatch.setattr(sharded.DistributedProducts, "_product", product)
    with open_client(workers=2, dashboard=False) as c:
        c.wait_for_workers(2, timeout=60)
        got = ef.entk_topk(model, inputs, 6, client=c, **options)
    assert killed
    _assert_same_eigenpairs(got, ref)
    assert got.info["distributed"]["rebuilds"] >= 1


def test_a_product_whose_data_was_lost_runs_again(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed.scheduler import KilledWorker

    model, x = _mlp()
    ref = ef.entk_topk(model, x, 4, structured=False)
    original = sharded.DistributedProducts._product
    failures = [KilledWorker("entk-pull-x", _GONE, 3)]

    def product(self: sharded.DistributedProducts, block: np.ndarray) -> np.ndarray:
        if self.n_products == 1 and failures:
            raise failures.pop()
        return original(self, block)

    monkeypatch.setattr(sharded.DistributedProducts, "_product", product)
    got = ef.entk_topk(model, x, 4, client=client)
    _assert_same_eigenpairs(got, ref)
    assert got.info["distributed"]["retries"] == 1


def test_a_cluster_that_keeps_failing_raises_after_the_retries(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed.scheduler import KilledWorker

    def product(self: sharded.DistributedProducts, block: np.ndarray) -> np.ndarray:
        raise KilledWorker("entk-pull-x", _GONE, 3)

    monkeypatch.setattr(sharded.DistributedProducts, "_product", product)
    model, x = _mlp()
    with pytest.raises(EntkError, match="failed 4 times"):
        ef.entk_topk(model, x, 4, client=client)
    held = client.run(lambda: len(sharded._SHARDS))
    assert set(held.values()) == {0}


def test_errors_on_a_worker_name_the_users_sample_and_are_not_retried(client: Any) -> None:
    """A Jacobian that turns non-finite on a worker's shard only (here: output_fn makes
    sample 25's output NaN in the worker processes) is raised as in one process, naming the
    user's sample 25 (the second shard's sixth), not the shard's; it is not taken for a
    cluster failure (no retries)."""
    model, x = _mlp()
    in_client = __import__("multiprocessing").current_process().name
    with torch.no_grad():
        marked = model(x[25:26])[0]

    def poisoned(out: torch.Tensor) -> torch.Tensor:
        if __import__("multiprocessing").current_process().name == in_client:
            return out
        hit = (out - marked).abs().amax(dim=-1, keepdim=True) < 1e-12
        return out + torch.where(hit, float("nan"), 0.0)

    with pytest.raises(InvalidArgumentError, match="NaN or infinite at sample 25,"):
        ef.entk_topk(model, x, 4, output_fn=poisoned, client=client)


def test_client_must_be_a_connected_dask_client(client: Any) -> None:
    model, x = _mlp()
    with pytest.raises(InvalidTypeError, match="client must be a dask.distributed.Client"):
        ef.entk_topk(model, x, 4, client="tcp://127.0.0.1:8786")
    with pytest.raises(InvalidArgumentError, match="k = 123 must be smaller"):
        ef.entk_topk(model, x, 123, client=client)
    from distributed import Client

    closed = Client(client.scheduler.address)
    closed.close()
    with pytest.raises(InvalidArgumentError, match="client is closed: open a new one"):
        ef.entk_topk(model, x, 4, client=closed)


def test_rows_too_large_for_the_task_graph_are_scattered(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks past EMBED_BYTES reach their shard by client.scatter, not inside the task (Dask
    warns about graphs past 10 MB, and the suite turns warnings into errors): same result."""
    model, x = _mlp()
    ref = ef.entk_topk(model, x, 5, structured=False)
    monkeypatch.setattr(sharded, "EMBED_BYTES", 0)
    sent: list[int] = []
    original = client.scatter

    def scatter(data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, np.ndarray):
            sent.append(data.nbytes)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", scatter)
    got = ef.entk_topk(model, x, 5, client=client)
    _assert_same_eigenpairs(got, ref)
    assert len(sent) == 2 * got.info["distributed"]["products"]  # one a shard a product
