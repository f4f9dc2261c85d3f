"""The structured sequence path: Linear / Embedding layers applied at T positions of a sample.

Its eNTK block is Σ_{t,t'} ⟨a_t, a'_t'⟩ ⟨g_t, g'_t'⟩ (the per-sample Jacobian Σ_t g_t a_tᵀ);
every test compares with the brute-force per-sample autograd Jacobian (float64), on models
with token and position embeddings, attention with its own Q/K/V/O projections, residual
streams and weights shared across positions, under every reduction, layerwise, tiled, with
row groups and as a cross kernel. The Rust kernel behind it is checked against numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ntk_reference import reference_jacobian, reference_kernel, relative_error, trainable
from torch import nn

from entk_fast import empirical_ntk, entk_topk, linalg
from entk_fast.errors import InvalidArgumentError, InvalidTypeError
from entk_fast.ntk.plan import plan_structured
from entk_fast.ntk.problem import evaluation_mode, prepare
from entk_fast.ntk.sources.layer_search import find_layers

TOL = 1e-10
REDUCTIONS = ("flattened", "trace", "mean_pairs")


class Attention(nn.Module):
    """Causal multi-head attention with its own bias-free Q, K, V and O projections."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.W_Q = nn.Linear(d, d, bias=False)
        self.W_K = nn.Linear(d, d, bias=False)
        self.W_V = nn.Linear(d, d, bias=False)
        self.W_O = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.W_Q(x)), split(self.W_K(x)), split(self.W_V(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        z = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        return self.W_O(z.transpose(1, 2).reshape(n, t, d))


class TinyTransformer(nn.Module):
    """Token + position embeddings, one attention layer, a ReLU MLP with biases, residuals,
    and an unembedding of the last position: every layer but the unembedding runs at T
    positions."""

    def __init__(self, vocab: int = 7, d: int = 16, heads: int = 2, d_mlp: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos_embed = nn.Embedding(3, d)
        self.attn = Attention(d, heads)
        self.mlp_in = nn.Linear(d, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d)
        self.unembed = nn.Linear(d, 5, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.embed(tokens) + self.pos_embed(positions)
        x = x + self.attn(x)
        x = x + self.mlp_out(torch.relu(self.mlp_in(x)))
        return self.unembed(x[:, -1])


class GridLinear(nn.Module):
    """One Linear (with bias) applied over a 2 × 2 grid of positions per sample, then pooled
    with a nonlinearity: positions along two dims."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(x)).pow(2).mean(dim=(1, 2)))


class LongSequence(nn.Module):
    """A 4→4 Linear over 40 positions: 820 position pairs cost more than its Jacobian."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(x)).mean(dim=1))


class ProjectionReused(nn.Module):
    """A Linear at 3 positions whose weight is used again elsewhere: not a single use."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.proj(x)).sum(dim=1)
        return self.out(h @ self.proj.weight)


def _tokens(n: int, vocab: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab - 1, (n, 3), generator=gen)
    tokens[:, 2] = vocab - 1  # a fixed "=" token, as in the paper's transformer
    return tokens


def _transformer(seed: int = 0) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer().double().eval()


def _reference(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], reduction: str, names: list[str]
) -> np.ndarray:
    return reference_kernel(reference_jacobian(model, inputs, names), reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_transformer_kernel_equals_brute_force_with_every_layer_structured(
    reduction: str,
) -> None:
    model = _transformer()
    tokens = _tokens(6)
    result = empirical_ntk(model, tokens, reduction=reduction, layerwise=True, progress=False)
    assert set(result.paths.values()) == {"structured"}
    jac = reference_jacobian(model, (tokens,))
    assert relative_error(result.kernel, reference_kernel(jac, reduction)) < TOL
    names = trainable(model)
    sizes = [dict(model.named_parameters())[name].numel() for name in names]
    offsets = np.cumsum([0, *sizes])
    assert len(result.layer_kernels) == 9
    for module, kernel in result.layer_kernels.items():  # weight (+ bias) of one module
        cols = [i for i, name in enumerate(names) if name.rsplit(".", 1)[0] == module]
        assert cols, module
        layer = np.concatenate([jac[:, :, offsets[i] : offsets[i + 1]] for i in cols], axis=2)
        assert relative_error(kernel, reference_kernel(layer, reduction)) < TOL


def test_kernel_per_parameter_matches_the_reference_with_biases_apart() -> None:
    model = _transformer(1)
    tokens = _tokens(5, seed=1)
    for name in ("mlp_in.weight", "mlp_in.bias", "attn.W_V.weight", "pos_embed.weight"):
        result = empirical_ntk(model, tokens, params=[name], reduction="trace", progress=False)
        assert result.paths == {name: "structured"}
        expected = _reference(model, (tokens,), "trace", [name])
        assert relative_error(result.kernel, expected) < TOL


def _budget_where(model: nn.Module, tokens: torch.Tensor, reduction: str, wanted) -> int:  # type: ignore[no-untyped-def]
    """The smallest budget whose layerwise structured plan keeps every layer and is ``wanted``."""
    with evaluation_mode(model):
        problem = prepare(model, tokens, reduction=reduction)
        layers = find_layers(problem)
        for budget in (int(1.25**i) for i in range(40, 80)):
            sweeps, rejected = plan_structured(problem, layers, budget, layerwise=True)
            if not rejected and wanted(problem, sweeps):
                return budget
    raise AssertionError("no budget gives that plan")


def _tiled(problem, sweeps) -> bool:  # type: ignore[no-untyped-def]
    return any(1 < sweep.tile < problem.n_samples for sweep in sweeps)


def _row_groups(problem, sweeps) -> bool:  # type: ignore[no-untyped-def]
    return any(
        sweep.tile >= problem.n_samples and sweep.group < problem.rows_per_sample
        for sweep in sweeps
    )


@pytest.mark.parametrize(
    ("reduction", "plan"),
    [("flattened", _tiled), ("mean_pairs", _tiled), ("trace", _row_groups)],
)
def test_tiled_and_row_group_plans_give_the_same_kernel(reduction: str, plan) -> None:  # type: ignore[no-untyped-def]
    model = _transformer(2)
    tokens = _tokens(9, seed=2)
    budget = _budget_where(model, tokens, reduction, plan)
    tight = empirical_ntk(
        model, tokens, reduction=reduction, max_memory=budget, layerwise=True, progress=False
    )
    assert set(tight.paths.values()) == {"structured"}
    jac = reference_jacobian(model, (tokens,))
    assert relative_error(tight.kernel, reference_kernel(jac, reduction)) < TOL
    loose = empirical_ntk(model, tokens, reduction=reduction, layerwise=True, progress=False)
    for key, kernel in loose.layer_kernels.items():
        assert relative_error(tight.layer_kernels[key], kernel) < TOL


def test_cross_kernel_between_two_token_sets() -> None:
    model = _transformer(3)
    x, x2 = _tokens(4, seed=3), _tokens(3, seed=4)
    for reduction in REDUCTIONS:
        result = empirical_ntk(model, x, x2, reduction=reduction, progress=False)
        assert "structured" in result.paths.values()
        both = torch.cat([x, x2])
        full = reference_kernel(reference_jacobian(model, (both,)), reduction)
        rows = result.kernel.shape[0]
        assert relative_error(result.kernel, full[:rows, rows:]) < TOL


def test_positions_along_two_dims_with_a_bias() -> None:
    torch.manual_seed(5)
    model = GridLinear().double().eval()
    x = torch.randn(5, 2, 2, 32, dtype=torch.float64)
    for reduction in REDUCTIONS:
        result = empirical_ntk(model, x, reduction=reduction, progress=False)
        assert result.paths["proj.weight"] == result.paths["proj.bias"] == "structured"
        expected = reference_kernel(reference_jacobian(model, (x,)), reduction)
        assert relative_error(result.kernel, expected) < TOL


def test_layers_that_do_not_qualify_fall_back_to_the_general_path() -> None:
    torch.manual_seed(6)
    long = LongSequence().double().eval()
    x = torch.randn(4, 40, 4, dtype=torch.float64)
    result = empirical_ntk(long, x, reduction="trace", progress=False)
    assert result.paths["proj.weight"] == "general"  # too many position pairs
    assert result.paths["out.weight"] == "structured"
    assert (
        relative_error(result.kernel, reference_kernel(reference_jacobian(long, (x,)), "trace"))
        < TOL
    )
    reused = ProjectionReused().double().eval()
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    result = empirical_ntk(reused, x, progress=False)
    assert result.paths["proj.weight"] == "general"  # used outside its layer
    assert (
        relative_error(
            result.kernel, reference_kernel(reference_jacobian(reused, (x,)), "flattened")
        )
        < TOL
    )


def test_float32_sequence_kernel_is_accurate() -> None:
    model = _transformer(7).float()
    tokens = _tokens(40, seed=7)
    result = empirical_ntk(model, tokens, reduction="mean_pairs", progress=False)
    assert set(result.paths.values()) == {"structured"}
    expected = reference_kernel(reference_jacobian(model.double(), (tokens,)), "mean_pairs")
    assert relative_error(result.kernel, expected) < 1e-5


@settings(max_examples=25, deadline=None)
@given(
    positions=st.integers(1, 4),
    samples=st.integers(1, 40),
    block=st.integers(1, 3),
    width=st.integers(1, 6),
    inputs=st.integers(1, 5),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_position_kernels_equal_numpy(
    positions: int, samples: int, block: int, width: int, inputs: int, dtype: type, seed: int
) -> None:
    """Both forms of K += α Σ_{t,u} S_tu ∘ (G_t G_uᵀ) against a numpy loop over position
    pairs, from a symmetric start, for every block size and dtype."""
    rng = np.random.default_rng(seed)
    rows = samples * block
    g = rng.standard_normal((positions * rows, width)).astype(dtype)
    a = rng.standard_normal((positions * samples, inputs)).astype(dtype)
    start = rng.standard_normal((rows, rows))
    start = (start + start.T).astype(dtype)
    s = a.astype(np.float64) @ a.T.astype(np.float64)
    gg = g.astype(np.float64) @ g.T.astype(np.float64)
    expected = start.astype(np.float64).copy()
    for t in range(positions):
        for u in range(positions):
            s_tu = s[t * samples : (t + 1) * samples, u * samples : (u + 1) * samples]
            g_tu = gg[t * rows : (t + 1) * rows, u * rows : (u + 1) * rows]
            expected += 0.5 * np.kron(s_tu, np.ones((block, block))) * g_tu
    tol = 1e-11 if dtype == np.float64 else 2e-4
    scale = max(np.abs(expected).max(), 1.0)
    via_gram = start.copy()
    linalg.hadamard_gram_accumulate(
        via_gram, g, s.astype(dtype), block=block, alpha=0.5, positions=positions
    )
    assert np.abs(via_gram - expected).max() / scale < tol
    via_factor = start.copy()
    linalg.hadamard_gram_factored_accumulate(
        via_factor, g, a, block=block, alpha=0.5, positions=positions
    )
    assert np.abs(via_factor - expected).max() / scale < tol


def _term_block(g: np.ndarray, a: np.ndarray, block: int, positions: int) -> np.ndarray:
    """Σ_{t,u} (S_tu ⊗ 1_b) ∘ G_t G_uᵀ in float64 by numpy, S = A Aᵀ."""
    rows = g.shape[0] // positions
    samples = rows // block
    s = a.astype(np.float64) @ a.T.astype(np.float64)
    gg = g.astype(np.float64) @ g.T.astype(np.float64)
    out = np.zeros((rows, rows))
    for t in range(positions):
        for u in range(positions):
            s_tu = s[t * samples : (t + 1) * samples, u * samples : (u + 1) * samples]
            out += (
                np.kron(s_tu, np.ones((block, block)))
                * gg[t * rows : (t + 1) * rows, u * rows : (u + 1) * rows]
            )
    return out


@settings(max_examples=40, deadline=None)
@given(
    terms=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([1, 2]), st.integers(1, 4), st.integers(1, 4)),
        min_size=1,
        max_size=3,
    ),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**16),
)
def test_factored_terms_in_one_call_equal_numpy(
    terms: list[tuple[int, int, int, int]], dtype: type, seed: int
) -> None:
    """Several layers into one K in one call (different T, block, widths; zero positions and
    column bands, as a causal model's cotangents have) against numpy, term by term."""
    rng = np.random.default_rng(seed)
    rows = 12
    start = rng.standard_normal((rows, rows))
    start = (start + start.T).astype(dtype)
    expected = start.astype(np.float64).copy()
    packed = []
    for positions, block, width, inputs in terms:
        g = rng.standard_normal((positions * rows, width)).astype(dtype)
        a = rng.standard_normal((positions * rows // block, inputs)).astype(dtype)
        if positions > 1:
            g[:rows] = 0  # the first position's cotangents are zero
            g[rows : 2 * rows, : width // 2] = 0  # a band of columns only later positions use
        packed.append((g, a, block, positions))
        expected += 0.5 * _term_block(g, a, block, positions)
    k = start.copy()
    linalg.hadamard_gram_factored_accumulate_many(k, packed, alpha=0.5)
    tol = 1e-11 if dtype == np.float64 else 2e-4
    assert np.abs(k - expected).max() / max(np.abs(expected).max(), 1.0) < tol
    np.testing.assert_array_equal(k, k.T)


def test_factored_terms_are_all_checked_before_k_changes() -> None:
    rng = np.random.default_rng(0)
    k = np.eye(6)
    good = (rng.standard_normal((12, 3)), rng.standard_normal((12, 2)), 1, 2)
    bad_g = good[0].copy()
    bad_g[7, 1] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN|finite"):
        linalg.hadamard_gram_factored_accumulate_many(k, [good, (bad_g, *good[1:])])
    with pytest.raises(InvalidArgumentError, match="A"):
        linalg.hadamard_gram_factored_accumulate_many(k, [good, (good[0], good[1][:5], 1, 2)])
    with pytest.raises(InvalidArgumentError, match=r"terms\[1\] must be a tuple of 4"):
        linalg.hadamard_gram_factored_accumulate_many(k, [good, good[:3]])
    with pytest.raises(InvalidTypeError, match="one dtype"):
        linalg.hadamard_gram_factored_accumulate_many(
            k, [good, (good[0].astype(np.float32), *good[1:])]
        )
    np.testing.assert_array_equal(k, np.eye(6))


def test_position_kernels_name_a_bad_positions_argument() -> None:
    k = np.zeros((4, 4))
    g = np.ones((12, 2))
    with pytest.raises(InvalidArgumentError, match="positions"):
        linalg.hadamard_gram_factored_accumulate(k, g[:11], np.ones((12, 3)), positions=3)
    with pytest.raises(InvalidArgumentError, match="positions"):
        linalg.hadamard_gram_accumulate(k, g, np.eye(12), positions=0)
    with pytest.raises(InvalidArgumentError, match="A"):
        linalg.hadamard_gram_factored_accumulate(k, g, np.ones((11, 3)), positions=3)


class TorchAttentionModel(nn.Module):
    """Token + position embeddings, one ``nn.MultiheadAttention`` (packed in_proj with bias,
    out_proj) and a residual; masks and attention weights as a user would pass them."""

    def __init__(self, *, batch_first: bool, padding: bool, weights: bool) -> None:
        super().__init__()
        self.batch_first, self.padding, self.weights = batch_first, padding, weights
        self.embed = nn.Embedding(7, 16)
        self.pos_embed = nn.Embedding(3, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)
        self.unembed = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.embed(tokens) + self.pos_embed(positions)
        causal = torch.triu(torch.ones(3, 3, dtype=torch.bool, device=x.device), 1)
        padding = tokens == 0 if self.padding else None  # token 0 is padding
        h = x if self.batch_first else x.transpose(0, 1)
        a, w = self.attn(
            h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=self.weights
        )
        a = a if self.batch_first else a.transpose(0, 1)
        out = self.unembed((x + a)[:, -1])
        return out + w[:, -1, :1] if self.weights else out


class CrossAttention(nn.Module):
    """Queries from one embedding, keys and values from another: not self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 16)
        self.memory = nn.Embedding(7, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.unembed = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, m = self.embed(tokens), self.memory(tokens)
        return self.unembed(self.attn(x, m, m, need_weights=False)[0][:, -1])


@pytest.mark.parametrize(
    ("batch_first", "padding", "weights"),
    [(True, False, False), (False, True, False), (True, True, True)],
)
def test_multihead_attention_projections_take_the_structured_path(
    batch_first: bool, padding: bool, weights: bool
) -> None:
    torch.manual_seed(8)
    model = TorchAttentionModel(batch_first=batch_first, padding=padding, weights=weights)
    model = model.double().eval()
    tokens = _tokens(6, seed=8)
    tokens[:, 0] = tokens[:, 0].clamp(min=1)  # a padded first key would mask a whole row
    tokens[0, 1] = 0  # one padded key
    for reduction in REDUCTIONS:
        result = empirical_ntk(model, tokens, reduction=reduction, layerwise=True, progress=False)
        for name in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            assert result.paths[f"attn.{name}"] == "structured"
        expected = reference_kernel(reference_jacobian(model, (tokens,)), reduction)
        assert relative_error(result.kernel, expected) < TOL
        general = empirical_ntk(
            model, tokens, reduction=reduction, layerwise=True, structured=False, progress=False
        )
        for key, kernel in general.layer_kernels.items():
            assert relative_error(result.layer_kernels[key], kernel) < TOL


def test_cross_attention_falls_back_to_the_general_path() -> None:
    torch.manual_seed(9)
    model = CrossAttention().double().eval()
    tokens = _tokens(5, seed=9)
    result = empirical_ntk(model, tokens, reduction="trace", progress=False)
    assert result.paths["attn.in_proj_weight"] == result.paths["attn.out_proj.weight"] == "general"
    assert result.paths["unembed.weight"] == "structured"
    expected = reference_kernel(reference_jacobian(model, (tokens,)), "trace")
    assert relative_error(result.kernel, expected) < TOL


class CausalHint(nn.Module):
    """``is_causal=True`` beside a mask that masks nothing: torch's attention then applies the
    causal mask and drops the given one, which the structured recomputation (the mask as
    given) does not reproduce."""

    def __init__(self, hint: bool = True) -> None:
        super().__init__()
        self.hint = hint
        self.embed = nn.Embedding(7, 32)  # wide enough for the structured attention path
        self.attn = nn.MultiheadAttention(32, 2, batch_first=True)
        self.unembed = nn.Linear(32, 3)
        self.register_buffer("mask", torch.zeros(4, 4, dtype=torch.bool))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        a, _ = self.attn(x, x, x, attn_mask=self.mask, is_causal=self.hint, need_weights=False)
        return self.unembed((x + a)[:, -1])


@pytest.mark.parametrize("n", [5, 20])
def test_attention_recomputation_that_differs_falls_back(n: int) -> None:
    torch.manual_seed(10)
    model = CausalHint().double().eval()
    tokens = torch.randint(0, 7, (n, 4), generator=torch.Generator().manual_seed(10))
    result = empirical_ntk(model, tokens, reduction="mean_pairs", progress=False)
    assert result.paths["attn.in_proj_weight"] == result.paths["attn.out_proj.weight"] == "general"
    assert result.paths["embed.weight"] == result.paths["unembed.weight"] == "structured"
    expected = reference_kernel(reference_jacobian(model, (tokens,)), "mean_pairs")
    assert relative_error(result.kernel, expected) < TOL
    model.hint = False  # the same model without the hint: the recomputation holds
    result = empirical_ntk(model, tokens, reduction="mean_pairs", progress=False)
    assert set(result.paths.values()) == {"structured"}
    expected = reference_kernel(reference_jacobian(model, (tokens,)), "mean_pairs")
    assert relative_error(result.kernel, expected) < TOL


def test_matrix_free_top_k_through_multihead_attention_with_an_earlier_layer_selected() -> None:
    """``entk_topk`` with only a layer before the attention selected: the products run under
    ``no_grad``, where ``nn.MultiheadAttention`` would pick its fused inference kernel (no
    derivative); the operator turns that fast path off and matches the dense eigenpairs."""
    torch.manual_seed(10)
    model = TorchAttentionModel(batch_first=True, padding=False, weights=False).double().eval()
    tokens = _tokens(12, seed=10)
    params = ["pos_embed.weight"]
    assert torch.backends.mha.get_fastpath_enabled()
    spec = entk_topk(model, tokens, k=4, params=params, reduction="trace", progress=False)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    kernel = reference_kernel(
        reference_jacobian(model, (tokens,), [n for n in trainable(model) if n in params]), "trace"
    )
    expected = np.linalg.eigvalsh(kernel)[::-1][:4]
    assert np.allclose(spec.eigenvalues, expected, rtol=1e-8)
