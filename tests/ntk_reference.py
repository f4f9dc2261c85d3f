"""Independent brute-force eNTK reference and tiny test models for the tests under tests/ntk/.

The reference loops ``torch.autograd.grad`` over every sample and output (float64), builds the
full Jacobian J (N, C, P) and reduces it with plain numpy / scipy; it shares no code with the
engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from torch import nn

from entk_fast.toys import TMS, ModAddMLP

__all__ = [
    "MLP",
    "BagOfTokens",
    "Routed",
    "ConvNet",
    "ModAddMLP",
    "TMS",
    "TinyAttention",
    "TokenMLP",
    "TwoInputs",
    "make_case",
    "reference_jacobian",
    "reference_kernel",
    "relative_error",
]


class MLP(nn.Module):
    """Linear -> tanh -> Linear -> tanh -> Linear, with biases."""

    def __init__(self, d_in: int = 4, widths: Sequence[int] = (6, 5), d_out: int = 3) -> None:
        super().__init__()
        sizes = [d_in, *widths, d_out]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


class Routed(nn.Module):
    """Top-1 routing by boolean masks: each expert runs on its own samples only (data-dependent
    control flow: vmap cannot run it)."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(4, 5), nn.Linear(4, 5)])
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = (x[:, 0] > 0).long()
        h = torch.zeros(x.shape[0], 5, dtype=x.dtype)
        for i, expert in enumerate(self.experts):
            mask = route == i
            if mask.any():
                h = h.index_put((mask.nonzero()[:, 0],), expert(x[mask]))
        return self.out(torch.tanh(h))


class TokenMLP(nn.Module):
    """One token id per sample -> embedding -> Linear (both structured)."""

    def __init__(
        self, vocab: int = 7, dim: int = 4, d_out: int = 3, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.out = nn.Linear(dim, d_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.sin(self.emb(tokens)))


class BagOfTokens(nn.Module):
    """Two token ids per sample -> embedding (used at two positions: general path) -> MLP."""

    def __init__(self, vocab: int = 6, dim: int = 3, d_out: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(2 * dim, d_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).flatten(1)
        return self.fc(torch.tanh(h)) ** 2


class ConvNet(nn.Module):
    """Conv2d -> ReLU-like (softplus) -> BatchNorm (eval) -> Linear on 5×5 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(nn.functional.softplus(self.conv(x))).flatten(1))


class TwoInputs(nn.Module):
    """f(x, z) = (A x) ⊙ (B z) + a frozen offset, reshaped to (N, 2, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4, bias=False)
        self.offset = nn.Parameter(torch.randn(4), requires_grad=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.a(x)) * self.b(z) + self.offset).reshape(-1, 2, 2)


class TinyAttention(nn.Module):
    """Token + position embeddings, causal multi-head attention, LayerNorm, last-position head."""

    def __init__(self, vocab: int = 6, dim: int = 8, d_out: int = 5, length: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(length, dim))
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, d_out, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(length, length, dtype=torch.bool), 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos
        a, _ = self.attn(h, h, h, attn_mask=self.mask, need_weights=False)
        return self.out(self.norm(h + a)[:, -1])


def make_case(name: str, n: int = 5, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A float64 model in eval mode and its inputs."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model: nn.Module
    if name == "mlp":
        model, inputs = MLP(), (torch.randn(n, 4, generator=gen),)
    elif name == "tms":
        model = TMS(6, 3, generator=gen)
        with torch.no_grad():
            model.b.uniform_(-0.1, 0.3, generator=gen)
        inputs = (torch.rand(n, 6, generator=gen),)
    elif name == "modadd":
        p = 5
        model = ModAddMLP(p, hidden=8, generator=gen)
        a = torch.randint(0, p, (n,), generator=gen)
        b = torch.randint(0, p, (n,), generator=gen)
        x = torch.cat([nn.functional.one_hot(a, p), nn.functional.one_hot(b, p)], dim=1)
        inputs = (x.double(),)
    elif name == "tokens":
        model, inputs = TokenMLP(), (torch.randint(0, 7, (n,), generator=gen),)
    elif name == "bag":
        model, inputs = BagOfTokens(), (torch.randint(0, 6, (n, 2), generator=gen),)
    elif name == "conv":
        model, inputs = ConvNet(), (torch.randn(n, 1, 5, 5, generator=gen),)
    elif name == "two_inputs":
        model = TwoInputs()
        inputs = (torch.randn(n, 3, generator=gen), torch.randn(n, 2, generator=gen))
    elif name == "attention":
        model, inputs = TinyAttention(), (torch.randint(0, 6, (n, 3), generator=gen),)
    else:
        raise KeyError(name)
    model = model.double().eval()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    return model, inputs


def trainable(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def reference_jacobian(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], names: Sequence[str] | None = None
) -> np.ndarray:
    """J (N, C, P): one ``autograd.grad`` per sample and output, parameters in ``names`` order."""
    named = dict(model.named_parameters())
    names = trainable(model) if names is None else list(names)
    tensors = [named[name] for name in names]
    n = inputs[0].shape[0]
    rows = []
    for i in range(n):
        out = model(*(x[i : i + 1] for x in inputs)).reshape(-1)
        per_output = []
        for c in range(out.numel()):
            grads = torch.autograd.grad(out[c], tensors, retain_graph=True, allow_unused=True)
            flat = [
                (g if g is not None else torch.zeros_like(t)).reshape(-1)
                for g, t in zip(grads, tensors, strict=True)
            ]
            per_output.append(torch.cat(flat))
        rows.append(torch.stack(per_output))
    return torch.stack(rows).detach().double().numpy()


def metric_root(metric: np.ndarray | None, c: int) -> np.ndarray:
    if metric is None:
        return np.eye(c)
    metric = np.asarray(metric, dtype=np.float64)
    if metric.ndim == 1:
        return np.diag(np.sqrt(metric))
    # The symmetric PSD root by scipy's eigh (sqrtm loses accuracy on singular metrics).
    w, v = scipy.linalg.eigh(metric)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def reference_kernel(
    jac: np.ndarray, reduction: str, metric: np.ndarray | None = None
) -> np.ndarray:
    """The reduced kernel from J (N, C, P) and a metric (weights (C,) or PSD (C, C))."""
    n, c, p = jac.shape
    jm = np.einsum("ab,nbp->nap", metric_root(metric, c), jac)
    if reduction == "flattened":
        flat = jm.reshape(n * c, p)
        return flat @ flat.T
    if reduction == "trace":
        return np.einsum("ncp,mcp->nm", jm, jm) / c
    if reduction == "mean_pairs":
        mean = jm.sum(axis=1) / c
        return mean @ mean.T
    raise KeyError(reduction)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b|."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max() / max(np.abs(b).max(), 1e-300))
