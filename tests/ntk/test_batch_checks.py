"""Regression tests: samples that interact inside a batch, layers whose rows are not the
samples, structured-path fallbacks, and the error messages of the review of the eNTK engine.

Every kernel is compared with the brute-force reference (float64, per sample and output
``autograd.grad``) at 1e-10 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ntk_reference import MLP, Routed, reference_jacobian, reference_kernel, relative_error
from torch import nn

import entk_fast.ntk.probe as probe_module
import entk_fast.ntk.sources.cotangents as cotangents_module
import entk_fast.ntk.sources.layer_search as layer_search
from entk_fast import EntkError, empirical_ntk, entk_topk
from entk_fast.errors import InvalidArgumentError, MemoryBudgetError
from entk_fast.ntk.probe import probe_indices
from entk_fast.ntk.problem import prepare

TOL = 1e-10


def _check(model: nn.Module, inputs: tuple[torch.Tensor, ...], **kwargs: object) -> dict:
    """Structured and general kernels both equal the reference; returns the structured paths."""
    model = model.double().eval()
    reduction = str(kwargs.get("reduction", "flattened"))
    ref = reference_kernel(reference_jacobian(model, inputs), reduction)
    paths = {}
    for structured in (True, False):
        result = empirical_ntk(model, inputs, progress=False, structured=structured, **kwargs)
        assert relative_error(result.kernel, ref) < TOL, structured
        if structured:
            paths = result.paths
    return paths


class Prototypes(nn.Module):
    """Logits = ⟨enc(x), proj(prototype_k)⟩: ``proj`` runs on the 2 prototypes, not the samples."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 6)
        self.proj = nn.Linear(5, 6)
        self.prototypes = nn.Parameter(torch.randn(2, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.enc(x)) @ self.proj(self.prototypes).T


@pytest.mark.parametrize("n", [1, 2, 3, 8, 11])
@pytest.mark.parametrize("reduction", ["flattened", "trace"])
def test_linear_on_learned_prototypes_is_not_structured(n: int, reduction: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(n, 4, dtype=torch.float64)
    paths = _check(Prototypes(), (x,), reduction=reduction)
    assert paths["enc.weight"] == "structured"
    if n > 1:  # with one sample, the one prototype row pass is exactly one use: still exact
        assert paths["proj.weight"] == paths["proj.bias"] == "general"


class Flip(nn.Module):
    """The linear layer sees the samples in reverse order; the model is still per-sample."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x.flip(0)).flip(0)))


class SortUnsort(Flip):
    """Samples sorted by a feature before ``a`` and unsorted after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(x[:, 0])
        return self.b(torch.tanh(self.a(x[order])[torch.argsort(order)]))


@pytest.mark.parametrize("cls", [Flip, SortUnsort])
@pytest.mark.parametrize("n", [5, 6, 13])
def test_rows_permuted_around_a_linear_take_the_general_path(cls: type, n: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(n, 4, dtype=torch.float64)
    paths = _check(cls(), (x,))
    assert paths["a.weight"] == paths["a.bias"] == "general"
    assert paths["b.weight"] == "structured"


class BatchSign(nn.Module):
    """Output sign set by the whole batch's sum: samples interact (alone: their own sum)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(x)) * torch.where(x.sum() > 0, 1.0, -1.0)


@pytest.mark.parametrize("n, outlier", [(6, 5), (8, 7), (30, 2), (30, 29)])
def test_batch_interaction_beyond_the_first_two_samples(n: int, outlier: int) -> None:
    x = torch.ones(n, 4, dtype=torch.float64)
    x[outlier] = -10.0 * n
    assert outlier in probe_indices(n)
    paths = _check(BatchSign(), (x,))
    assert set(paths.values()) == {"general"}


class MixedBackward(Flip):
    """Values are per sample, but a straight-through term sends sample i − 1's gradient to the
    layer's row i (alone, the row's own gradient doubles): only the cotangents differ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        shifted = h.roll(1, 0)
        return self.b(torch.tanh(h + (shifted - shifted.detach())))


@pytest.mark.parametrize("n", [3, 10])
def test_backward_that_mixes_samples_is_exact_on_the_structured_path(n: int) -> None:
    """The structured path runs every sample alone (one vmapped forward), so a batched
    backward that would mix samples never enters its cotangents."""
    torch.manual_seed(6)
    x = torch.randn(n, 4, dtype=torch.float64)
    paths = _check(MixedBackward(), (x,), reduction="trace")
    assert paths["a.weight"] == paths["a.bias"] == paths["b.weight"] == "structured"


@pytest.mark.parametrize("reduction", ["flattened", "mean_pairs"])
def test_batch_interaction_outside_the_probe_samples(reduction: str) -> None:
    n, outlier = 40, 10
    assert outlier not in probe_indices(n)
    x = torch.ones(n, 4, dtype=torch.float64)
    x[outlier] = -10.0 * n
    paths = _check(BatchSign(), (x,), reduction=reduction)
    # The probe cannot see the interaction; the structured path's lone runs make it moot.
    assert set(paths.values()) == {"structured"}


class FlipWhenLarge(Flip):
    """Reverses the rows around ``a`` only for batches larger than the probe's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flip(0)).flip(0) if x.shape[0] > 8 else self.a(x)
        return self.b(torch.tanh(h))


@pytest.mark.parametrize("max_memory", [None, "30kB"])
def test_rows_permuted_only_on_the_full_batch(max_memory: str | None) -> None:
    torch.manual_seed(7)
    x = torch.randn(12, 4, dtype=torch.float64)
    paths = _check(FlipWhenLarge(), (x,), reduction="trace", max_memory=max_memory)
    # Alone, every sample is a batch of one: the rows are the samples'.
    assert paths["a.weight"] == paths["b.weight"] == "structured"


def test_probe_runs_spread_samples_batched_and_alone() -> None:
    assert probe_indices(1) == (0,)
    assert probe_indices(5) == (0, 1, 2, 3, 4)
    picked = probe_indices(100)
    assert len(picked) == 8 and picked[:2] == (0, 1) and picked[-1] == 99
    assert len(set(picked)) == 8 and max(picked[2:-1]) > 8
    model = Flip().double().eval()
    problem = prepare(model, torch.randn(20, 4, dtype=torch.float64))
    assert problem.probe.indices == probe_indices(20)
    assert problem.probe.batch == 8
    assert problem.probe.batch_independent
    assert problem.probe.per_sample_layers == {"b"}


class MicroBatched(nn.Module):
    """Runs ``a`` on chunks of 5 samples when the batch is larger (a per-sample function)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(part) for part in x.split(5)])
        return self.b(torch.tanh(h))


class Doubled(MicroBatched):
    """Large batches run ``a`` on twice the rows, then keep the first half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.a(torch.cat([x, x]))[:n] if n > 8 else self.a(x)
        return self.b(torch.tanh(h))


@pytest.mark.parametrize("cls", [MicroBatched, Doubled])
def test_layer_that_misbehaves_on_larger_batches_is_exact(cls: type) -> None:
    torch.manual_seed(2)
    x = torch.randn(12, 4, dtype=torch.float64)
    if cls is MicroBatched:  # probe batch 8 > 5: `a` runs twice there already
        x = torch.randn(4, 4, dtype=torch.float64)
        _check(cls(), (x,))
        x = torch.randn(12, 4, dtype=torch.float64)
    paths = _check(cls(), (x,), layerwise=True)
    # MicroBatched runs ``a`` twice on the probe's batch of 8; Doubled misbehaves only on
    # batches the structured path never runs (it runs each sample alone).
    assert paths["a.weight"] == ("general" if cls is MicroBatched else "structured")
    assert paths["b.weight"] == "structured"


def test_routed_linear_gives_a_clear_error_not_a_size_mismatch() -> None:
    torch.manual_seed(3)
    n = 12
    x = torch.randn(n, 4, dtype=torch.float64)
    probed = list(probe_indices(n))
    x[:, 0] = -1.0
    x[probed, 0] = 1.0  # every probe sample goes to expert 1, the others to expert 0
    model = Routed().double().eval()
    expected = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    for structured in (True, False):
        # boolean-mask routing cannot run under vmap: the exact per-sample autograd fallback
        with pytest.warns(UserWarning, match="per-sample autograd"):
            result = empirical_ntk(model, x, progress=False, structured=structured)
        assert relative_error(result.kernel, expected) < 1e-10
    # the matrix-free products fall back to per-sample products too, exactly
    with pytest.warns(UserWarning, match="per-sample autograd"):
        top = entk_topk(model, x, 2, progress=False)
    np.testing.assert_allclose(top.eigenvalues, np.linalg.eigvalsh(expected)[::-1][:2], rtol=1e-8)


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x + 0.01 * torch.randn_like(x))


class Item(Noisy):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum().item() > 0 else -self.a(x)


@pytest.mark.parametrize("cls", [Noisy, Item])
def test_non_vmappable_forward_is_explained(cls: type) -> None:
    torch.manual_seed(4)
    x = torch.randn(5, 4)
    model = cls().eval()
    calls = []
    if cls is Noisy:  # a random forward has no eNTK: no fallback on any path
        calls += [
            lambda: entk_topk(model, x, 2, progress=False),
            lambda: empirical_ntk(model, x, progress=False),
            lambda: empirical_ntk(model, x, progress=False, structured=False),
        ]
    else:  # `.item()` only stops vmap: the per-sample products run, and say so
        with pytest.warns(UserWarning, match="per-sample autograd"):
            entk_topk(model, x, 2, progress=False)
    for call in calls:
        with pytest.raises(InvalidArgumentError, match=r"vmappable per sample.*\.item\(\)") as info:
            call()
        assert isinstance(info.value, EntkError)
        assert isinstance(info.value.__cause__, RuntimeError)


def test_float32_rank_deficient_metric_is_accepted() -> None:
    torch.manual_seed(5)
    model = MLP(4, (8,), 20).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    jac = reference_jacobian(model, (x,))
    for _ in range(3):
        v = torch.rand(20)
        a = torch.randn(20, 7)
        for metric, exact in (
            (torch.outer(v, v), np.outer(v.double().numpy(), v.double().numpy())),
            (a @ a.T, a.double().numpy() @ a.double().numpy().T),
        ):
            assert metric.dtype == torch.float32
            result = empirical_ntk(model, x, output_metric=metric, progress=False)
            # the metric itself is only float32-accurate
            assert relative_error(result.kernel, reference_kernel(jac, "flattened", exact)) < 1e-5
    # genuinely indefinite or asymmetric float32 metrics are still refused
    bad = torch.diag(torch.ones(20))
    bad[3, 3] = -1e-3
    with pytest.raises(InvalidArgumentError, match="positive semi-definite"):
        empirical_ntk(model, x, output_metric=bad, progress=False)
    skew = torch.eye(20)
    skew[0, 1] = 1e-3
    with pytest.raises(InvalidArgumentError, match="symmetric"):
        empirical_ntk(model, x, output_metric=skew, progress=False)
    # float64 metrics keep a float64-sized tolerance
    near = np.eye(20)
    near[3, 3] = -1e-8
    with pytest.raises(InvalidArgumentError, match="positive semi-definite"):
        empirical_ntk(model, x, output_metric=near, progress=False)


def test_groups_without_layerwise_warns_and_is_ignored() -> None:
    model = MLP().double().eval()
    x = torch.randn(4, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match="layerwise=True"):
        result = empirical_ntk(model, x, groups={"g": ["layers.0"]}, progress=False)
    assert result.layer_kernels == {}
    ref = reference_kernel(reference_jacobian(model, (x,)), "flattened")
    assert relative_error(result.kernel, ref) < TOL


def test_memory_hint_suggests_only_what_applies() -> None:
    model = MLP().double().eval()
    x = torch.randn(4, 4, dtype=torch.float64)
    for reduction in ("flattened", "trace"):
        with pytest.raises(MemoryBudgetError, match="reduction='mean_pairs'") as info:
            empirical_ntk(model, x, reduction=reduction, max_memory=100, structured=False)
        assert "trace /" not in str(info.value)
    with pytest.raises(MemoryBudgetError, match="raise max_memory") as info:
        empirical_ntk(model, x, reduction="mean_pairs", max_memory=100, structured=False)
    assert "reduction" not in str(info.value)


@pytest.mark.parametrize(
    "spelling, expected",
    [("double", np.float64), ("float", np.float64), ("single", np.float32), (float, np.float64)],
)
def test_numpy_dtype_spellings(spelling: object, expected: type) -> None:
    model = MLP().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    assert empirical_ntk(model, x, dtype=spelling, progress=False).kernel.dtype == expected


def test_bad_dtype_names_the_accepted_values() -> None:
    model = MLP().eval()
    x = torch.randn(3, 4)
    for bad in ("half", torch.float16, "int64"):
        with pytest.raises(InvalidArgumentError, match=r"float32 or float64.*'double'"):
            empirical_ntk(model, x, dtype=bad, progress=False)


def test_forward_that_needs_a_batch_is_explained() -> None:
    model = nn.Sequential(
        nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)
    ).eval()
    with pytest.raises(InvalidArgumentError, match="run alone .*batch of one"):
        empirical_ntk(model, torch.randn(6, 4), progress=False)


def _vmap_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the probe's vmapped lone runs fail, so its sample-by-sample runs take over."""
    monkeypatch.setattr(probe_module, "_vmapped_lone_runs", lambda *a, **k: None)


class _Sequence(nn.Module):
    """Embedding, nn.MultiheadAttention (causal), a Linear at every position and a layer that
    sees a permuted batch (its rows are not the samples): the probe's lone runs tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Linear(32, 32)
        self.flipped = nn.Linear(32, 32)
        self.unembed = nn.Linear(32, 5)
        self.register_buffer("mask", torch.triu(torch.ones(4, 4, dtype=torch.bool), 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.attn(x, x, x, attn_mask=self.mask, need_weights=False)[0]
        x = x + torch.relu(self.mlp(x))
        x = x + self.flipped(x.flip(0)).flip(0)
        return self.unembed(x[:, -1])


@pytest.mark.parametrize("n", [3, 30])
def test_vmapped_lone_runs_equal_the_sample_by_sample_runs(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's lone runs and the structured path's lone cotangents, vmapped, find what
    sample-by-sample runs find; the kernel is the reference either way."""
    torch.manual_seed(n)
    model = _Sequence().double().eval()
    tokens = torch.randint(0, 9, (n, 4), generator=torch.Generator().manual_seed(n))
    vmapped = prepare(model, tokens, reduction="mean_pairs")
    layers = layer_search.find_layers(vmapped)
    assert {layer.path for layer in layers} >= {"embed", "attn:in_proj", "mlp", "unembed"}
    assert "flipped" not in vmapped.probe.per_sample_layers
    head = (tokens[list(vmapped.probe.indices)],)
    weights = torch.randn(len(head[0]), 5, dtype=torch.float64)
    y, probes, _ = cotangents_module.lone_forward(vmapped, layers, head, vmapped.params)
    fast = torch.autograd.grad((y * weights).sum(), probes)
    for k, layer in enumerate(layers):
        slow = []
        for i in range(len(head[0])):  # a plain batch of one, no vmap
            y1, probes1, _ = layer_search.forward_with_probes(
                vmapped, layers, (head[0][i : i + 1],), vmapped.params
            )
            slow.append(torch.autograd.grad((y1 * weights[i]).sum(), probes1[k])[0])
        cot = torch.cat(slow)
        assert cot.abs().max() > 0, layer.path
        torch.testing.assert_close(fast[k].reshape(cot.shape), cot, rtol=1e-12, atol=1e-12)
    kernel = empirical_ntk(model, tokens, reduction="mean_pairs", progress=False)
    _vmap_free(monkeypatch)
    looped = prepare(model, tokens, reduction="mean_pairs")
    assert looped.probe.per_sample_layers == vmapped.probe.per_sample_layers
    assert looped.probe.batch_independent == vmapped.probe.batch_independent
    assert looped.probe.calls == vmapped.probe.calls
    again = empirical_ntk(model, tokens, reduction="mean_pairs", progress=False)
    assert again.paths == kernel.paths
    expected = reference_kernel(reference_jacobian(model, (tokens,)), "mean_pairs")
    assert relative_error(kernel.kernel, expected) < TOL
    assert relative_error(again.kernel, expected) < TOL


def test_attention_settings_hold_until_the_last_thread_leaves() -> None:
    """Torch keeps the MHA fast path and the SDPA backends process-wide: a thread that leaves
    per_sample_attention while another is inside must not restore the fused kernels (vmap has
    no batching rule or forward derivative for them); the last one out restores both."""
    import threading

    from entk_fast.ntk.vmapping import per_sample_attention

    def fused() -> tuple[bool, bool]:
        return torch.backends.mha.get_fastpath_enabled(), torch.backends.cuda.flash_sdp_enabled()

    assert fused() == (True, True)
    inside, release = threading.Event(), threading.Event()
    seen: list[tuple[bool, bool]] = []

    def other() -> None:
        with per_sample_attention():
            inside.set()
            release.wait(10)
            seen.append(fused())

    thread = threading.Thread(target=other)
    with per_sample_attention():
        thread.start()
        assert inside.wait(10)
        with per_sample_attention():  # nested in one thread too
            assert fused() == (False, False)
    assert fused() == (False, False)  # the other thread is still inside
    release.set()
    thread.join(10)
    assert seen == [(False, False)]
    assert fused() == (True, True)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_child_forked_inside_per_sample_attention_gets_the_fused_kernels_back() -> None:
    import os

    from entk_fast.ntk.vmapping import per_sample_attention

    with per_sample_attention():
        pid = os.fork()
        if pid == 0:  # the child: nobody there will leave the context
            fused = torch.backends.mha.get_fastpath_enabled()
            flash = torch.backends.cuda.flash_sdp_enabled()
            os._exit(0 if fused and flash else 1)
        assert not torch.backends.mha.get_fastpath_enabled()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert torch.backends.mha.get_fastpath_enabled()
