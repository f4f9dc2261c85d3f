"""Cached-layer matrix-free products (one affine layer deep inside a Hugging Face model) and
the per-sample readout ``positions=``: float64 eigenpairs against a brute-force per-sample
autograd kernel on small config-built GPT-2 (Conv1D), Gemma-3 and BERT models, padded batches
with a 2-D attention mask, and the fallbacks with their reasons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import tiny_bert
from torch import nn
from torch.func import functional_call

from entk_fast import InvalidArgumentError, empirical_ntk, entk_topk
from entk_fast.ntk.layer_operator import CachedLayerOperator
from entk_fast.ntk.problem import evaluation_mode, prepare

transformers = pytest.importorskip("transformers")


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=8, vocab_size=20, n_positions=12, bos_token_id=0, eos_token_id=0
    )
    config._attn_implementation = "eager"
    return transformers.GPT2LMHeadModel(config).base_model


def _gemma() -> nn.Module:
    config = transformers.Gemma3TextConfig(
        vocab_size=20,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        max_position_embeddings=16,
        sliding_window=16,
    )
    config._attn_implementation = "eager"
    return transformers.Gemma3ForCausalLM(config).base_model


def _bert() -> nn.Module:
    return tiny_bert()


#: model, layer, relative tolerance (Gemma's RMSNorm computes in float32 in a float64 model)
CASES: dict[str, tuple[Callable[[], nn.Module], str, float]] = {
    "gpt2-conv1d": (_gpt2, "h.0.mlp.c_proj", 1e-10),
    "gemma3-down_proj": (_gemma, "layers.0.mlp.down_proj", 1e-5),
    "bert-output.dense": (_bert, "encoder.layer.0.output.dense", 1e-10),
}


def _inputs(n: int = 5, t: int = 7) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (n, t), generator=gen)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 5:] = 0  # padded samples: the 2-D mask of a padded batch
    mask[3, 3:] = 0
    positions = mask.sum(dim=1) - 1  # the last real token of each sample
    return {"input_ids": ids, "attention_mask": mask}, positions


def _brute_force(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    positions: torch.Tensor,
    names: list[str],
    metric_root: np.ndarray | None = None,
) -> np.ndarray:
    """K = J Jᵀ with J_n the Jacobian of sample n alone (its own batch of one), row-wise."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = []
    for n in range(len(positions)):
        sample = {k: v[n : n + 1] for k, v in inputs.items()}

        def f(*chosen: torch.Tensor, sample: dict[str, Any] = sample, n: int = n) -> torch.Tensor:
            merged = {**params, **dict(zip(names, chosen, strict=True))}
            out = functional_call(model, merged, (), sample).last_hidden_state
            return out[0, positions[n]]

        jac = torch.autograd.functional.jacobian(f, tuple(params[k] for k in names))
        rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1))
    jacobian = torch.cat(rows).numpy()
    if metric_root is not None:
        c = metric_root.shape[0]
        jacobian = np.einsum("ij,njp->nip", metric_root, jacobian.reshape(-1, c, jacobian.shape[1]))
        jacobian = jacobian.reshape(-1, jacobian.shape[-1])
    return jacobian @ jacobian.T


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_bias", [False, True])
def test_cached_layer_eigenpairs_equal_the_brute_force_kernel(case: str, with_bias: bool) -> None:
    torch.manual_seed(1)
    build, layer, rtol = CASES[case]
    model = build().double().eval()
    inputs, positions = _inputs()
    if with_bias and model.get_submodule(layer).bias is None:
        pytest.skip("the layer has no bias")
    names = [f"{layer}.weight"] + ([f"{layer}.bias"] if with_bias else [])
    kernel = _brute_force(model, inputs, positions, names)
    expected = np.linalg.eigvalsh(kernel)[::-1]
    k = 6
    spec = entk_topk(
        model,
        inputs,
        k,
        params=names,
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        tol=max(1e-12, rtol / 10),
        progress=False,
    )
    assert spec.info["products"] == "cached_layer"
    assert spec.info["cached_layer"] == layer
    np.testing.assert_allclose(spec.eigenvalues, expected[:k], rtol=rtol, atol=rtol * expected[0])
    # the eigenvectors are the kernel's: K v = λ v
    residual = kernel @ spec.eigenvectors - spec.eigenvectors * spec.eigenvalues
    assert np.abs(residual).max() <= 10 * rtol * expected[0]


def test_cached_layer_applies_the_output_metric() -> None:
    torch.manual_seed(2)
    model = _gpt2().double().eval()
    inputs, positions = _inputs()
    layer = "h.1.mlp.c_proj"
    unembed = torch.randn(30, 8, dtype=torch.float64).numpy()
    metric = unembed.T @ unembed  # S = UᵀU, as for a causal LM's logits
    w, v = np.linalg.eigh(metric)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    kernel = _brute_force(model, inputs, positions, [f"{layer}.weight"], metric_root=root)
    expected = np.linalg.eigvalsh(kernel)[::-1]
    spec = entk_topk(
        model,
        inputs,
        5,
        params=f"{layer}.weight",
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        output_metric=metric,
        tol=1e-12,
        progress=False,
    )
    assert spec.info["products"] == "cached_layer"
    np.testing.assert_allclose(spec.eigenvalues, expected[:5], rtol=1e-9)


def test_dense_kernel_with_positions_and_a_padded_mask_equals_the_brute_force() -> None:
    torch.manual_seed(3)
    model = _bert().double().eval()
    inputs, positions = _inputs()
    layer = "encoder.layer.1.attention.output.dense"
    kernel = _brute_force(model, inputs, positions, [f"{layer}.weight"])
    ntk = empirical_ntk(
        model,
        inputs,
        params=f"{layer}.weight",
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        progress=False,
    )
    # the padded batch stays on a fast path: no per-sample autograd fallback (no warning)
    assert ntk.paths == {f"{layer}.weight": "cached_layer"}
    np.testing.assert_allclose(ntk.kernel, kernel, rtol=1e-10, atol=1e-12 * np.abs(kernel).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_cached_layer_kernel_with_bias_and_metric(case: str) -> None:
    torch.manual_seed(5)
    build, layer, rtol = CASES[case]
    model = build().double().eval()
    inputs, positions = _inputs()
    names = [f"{layer}.weight"] + (
        [f"{layer}.bias"] if model.get_submodule(layer).bias is not None else []
    )
    rng = np.random.default_rng(0)
    u = rng.standard_normal((8, 8))
    metric = u @ u.T
    w, v = np.linalg.eigh(metric)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    kernel = _brute_force(model, inputs, positions, names, metric_root=root)
    ntk = empirical_ntk(
        model,
        inputs,
        params=names,
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        output_metric=metric,
        progress=False,
    )
    # vmappable models with small Jacobians keep the general path: check the cached-layer
    # kernel itself on every model too
    assert set(ntk.paths.values()) <= {"cached_layer", "general"}
    np.testing.assert_allclose(ntk.kernel, kernel, rtol=rtol, atol=rtol * np.abs(kernel).max())
    with evaluation_mode(model):
        problem = prepare(
            model,
            inputs,
            params=names,
            output_fn=lambda o: o.last_hidden_state,
            positions=positions,
            output_metric=metric,
        )
    cached = np.zeros_like(kernel)
    rows_done: list[int] = []
    CachedLayerOperator(problem, columns=3, transient=2**20, keep_bytes=2**30).dense_kernel(
        cached, rows_done.append
    )
    assert sum(rows_done) == 5
    np.testing.assert_allclose(cached, kernel, rtol=rtol, atol=rtol * np.abs(kernel).max())
    mean = empirical_ntk(
        model,
        inputs,
        params=names,
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        reduction="mean_pairs",
        progress=False,
    )
    plain = _brute_force(model, inputs, positions, names)
    c = 8
    expected = plain.reshape(5, c, 5, c).mean(axis=(1, 3))
    # (after BERT's final LayerNorm the mean output barely moves: compare on the full scale)
    np.testing.assert_allclose(mean.kernel, expected, rtol=rtol, atol=rtol * np.abs(plain).max())


def test_the_cached_path_says_why_it_does_not_apply() -> None:
    model = _bert().double().eval()
    padded, positions = _inputs()
    # no mask: the general products run the model per sample under vmap, which a 2-D mask
    # prevents (transformers tests it with a Python `if`)
    inputs = {"input_ids": padded["input_ids"]}
    common: dict[str, Any] = {
        "output_fn": lambda o: o.last_hidden_state,
        "positions": positions,
        "tol": 1e-8,
        "progress": False,
    }
    two = ["encoder.layer.0.output.dense.weight", "encoder.layer.1.output.dense.weight"]
    spec = entk_topk(model, inputs, 2, params=two, **common)
    assert spec.info["products"] == "autograd"
    assert "more than one module" in spec.info["cached_layer_reason"]
    spec = entk_topk(model, inputs, 2, params="encoder.layer.0.output.LayerNorm.weight", **common)
    assert "LayerNorm, not nn.Linear or Conv1D" in spec.info["cached_layer_reason"]
    spec = entk_topk(
        model,
        inputs,
        2,
        params="encoder.layer.0.output.dense.weight",
        reduction="trace",
        **common,
    )
    assert "concatenates" in spec.info["cached_layer_reason"]


class _Shared(nn.Module):
    """One Linear applied twice: its weight's Jacobian does not factor through one call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_a_layer_called_twice_takes_the_general_products() -> None:
    torch.manual_seed(0)
    model = _Shared().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    spec = entk_topk(model, x, 3, params="inner.weight", tol=1e-10, progress=False)
    assert spec.info["products"] == "autograd"
    assert "runs 2 times" in spec.info["cached_layer_reason"]
    dense = np.linalg.eigvalsh(empirical_ntk(model, x, params="inner.weight").kernel)[::-1]
    np.testing.assert_allclose(spec.eigenvalues, dense[:3], rtol=1e-8)


class _Detach(torch.autograd.Function):
    """tanh whose backward is not differentiable (it detaches): the transpose would be 0."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return (grad * (1 - y**2)).detach()


class _DetachingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_Detach.apply(self.inner(x)))


def test_a_backward_that_is_not_differentiable_is_refused() -> None:
    torch.manual_seed(0)
    model = _DetachingModel().double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="backward after the selected layer is not"):
        entk_topk(model, x, 2, params="inner.weight", structured=False, progress=False)


@pytest.mark.parametrize(
    ("positions", "error", "match"),
    [
        (torch.tensor([0, 1, 2]), InvalidArgumentError, r"positions must have shape \(5,\)"),
        (torch.tensor([0, 1, 2, 3, 7]), InvalidArgumentError, r"positions\[4\] = 7 is outside"),
        (torch.zeros(5), TypeError, "positions must hold integers"),
        ("last", TypeError, "positions must be an integer tensor"),
    ],
)
def test_bad_positions_name_the_argument(positions: Any, error: type, match: str) -> None:
    model = _bert().double().eval()
    inputs, _ = _inputs()
    with pytest.raises(error, match=match):
        entk_topk(
            model,
            inputs,
            2,
            params="encoder.layer.0.output.dense.weight",
            output_fn=lambda o: o.last_hidden_state,
            positions=positions,
            progress=False,
        )


def test_negative_positions_count_from_the_end() -> None:
    torch.manual_seed(4)
    model = _gpt2().double().eval()
    inputs = {"input_ids": torch.randint(1, 20, (4, 6))}
    common: dict[str, Any] = {
        "params": "h.1.mlp.c_fc.weight",
        "output_fn": lambda o: o.last_hidden_state,
        "progress": False,
    }
    last = empirical_ntk(model, inputs, positions=torch.full((4,), -1), **common).kernel
    explicit = empirical_ntk(model, inputs, positions=torch.full((4,), 5), **common).kernel
    np.testing.assert_allclose(last, explicit, rtol=1e-12)


def test_the_last_block_runs_at_the_read_positions_only_when_that_is_the_readout() -> None:
    torch.manual_seed(6)
    model = _bert().double().eval()
    inputs, positions = _inputs()
    layer = "encoder.layer.0.output.dense"
    names = [f"{layer}.weight"]
    kernel = _brute_force(model, inputs, positions, names)
    expected = np.linalg.eigvalsh(kernel)[::-1][:4]
    common: dict[str, Any] = {"params": names, "positions": positions, "tol": 1e-12}
    pruned = entk_topk(
        model, inputs, 4, output_fn=lambda o: o.last_hidden_state, progress=False, **common
    )
    assert pruned.info["pruned_block"] == "encoder.layer.1"
    np.testing.assert_allclose(pruned.eigenvalues, expected, rtol=1e-10)
    # a readout that is not the last block's state: its own check turns the pruning off
    doubled = entk_topk(
        model, inputs, 4, output_fn=lambda o: 2 * o.last_hidden_state, progress=False, **common
    )
    assert doubled.info["pruned_block"] is None
    np.testing.assert_allclose(doubled.eigenvalues, 4 * expected, rtol=1e-10)
    # the layer in the last block itself: nothing after it to prune
    last = entk_topk(
        model,
        inputs,
        4,
        output_fn=lambda o: o.last_hidden_state,
        params="encoder.layer.1.output.dense.weight",
        positions=positions,
        tol=1e-10,
        progress=False,
    )
    assert last.info["pruned_block"] is None


def test_constant_keyword_inputs_reach_the_model() -> None:
    torch.manual_seed(7)
    model = _bert().double().eval()
    inputs, positions = _inputs()
    layer = "encoder.layer.0.output.dense.weight"
    plain = empirical_ntk(
        model, inputs, params=layer, output_fn=lambda o: o.last_hidden_state[:, 0], progress=False
    )
    flagged = empirical_ntk(
        model,
        {**inputs, "output_hidden_states": True},
        params=layer,
        output_fn=lambda o: o.hidden_states[-1][:, 0],
        progress=False,
    )
    np.testing.assert_allclose(flagged.kernel, plain.kernel, rtol=1e-12)
    top = entk_topk(
        model,
        {**inputs, "output_hidden_states": True},
        3,
        params=layer,
        output_fn=lambda o: o.hidden_states[-1],
        positions=torch.zeros(5, dtype=torch.long),
        tol=1e-10,
        progress=False,
    )
    expected = np.linalg.eigvalsh(plain.kernel)[::-1][:3]
    np.testing.assert_allclose(top.eigenvalues, expected, rtol=1e-8)
    with pytest.raises(TypeError, match="no tensor among its keywords"):
        empirical_ntk(model, {"output_hidden_states": True}, params=layer, progress=False)
    with pytest.raises(TypeError, match=r"inputs\['flags'\] must be a tensor"):
        empirical_ntk(model, {**inputs, "flags": [1, 2]}, params=layer, progress=False)


def test_a_wide_layer_of_a_padded_model_vmap_cannot_run_takes_the_cached_kernel() -> None:
    """A layer wide enough for the structured path (T(T+1)/2·(d_in + d_out) ≤ d_in·d_out) in a
    model whose padded forward vmap cannot run: the dense kernel comes from the cached layer
    (as entk_topk's products do), not from per-sample autograd, and equals the brute force."""
    torch.manual_seed(5)
    model = tiny_bert(hidden=16, intermediate=64).double().eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 20, (4, 3), generator=gen)
    mask = torch.ones(4, 3, dtype=torch.long)
    mask[1, 2:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    positions = mask.sum(dim=1) - 1
    name = "encoder.layer.1.output.dense.weight"  # 64 -> 16: structured at T = 3
    kernel = _brute_force(model, inputs, positions, [name])
    ntk = empirical_ntk(
        model,
        inputs,
        params=name,
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        progress=False,
    )
    assert ntk.paths == {name: "cached_layer"}
    np.testing.assert_allclose(ntk.kernel, kernel, rtol=1e-10, atol=1e-12 * np.abs(kernel).max())


def test_one_sample_of_a_model_vmap_cannot_run_takes_the_cached_kernel() -> None:
    """With one sample the probe still tries vmap (a Hugging Face mask check calls .item() even
    on one unpadded sample), so the kernel takes the cached layer, not a vmap that fails."""
    torch.manual_seed(2)
    model = _bert().double().eval()
    ids = torch.randint(1, 20, (1, 5), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    positions = torch.tensor([4])
    name = "encoder.layer.1.output.dense.weight"
    ntk = empirical_ntk(
        model,
        inputs,
        params=name,
        output_fn=lambda o: o.last_hidden_state,
        positions=positions,
        progress=False,
    )
    assert ntk.paths == {name: "cached_layer"}
    kernel = _brute_force(model, inputs, positions, [name])
    np.testing.assert_allclose(ntk.kernel, kernel, rtol=1e-10, atol=1e-12 * np.abs(kernel).max())
