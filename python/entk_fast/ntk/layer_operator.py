"""Kernel-vector products for one affine layer deep inside a model, from a cached prefix.

When the kernel's parameters are those of a single affine module (``nn.Linear``, or the
``Conv1D`` of GPT-2-style Hugging Face models) that runs once per forward, a sample's Jacobian
factors through that module: with a_{n,t} the module's input at position t of sample n,
y_{n,t} = W a_{n,t} + b its output and h_n the (metric-weighted) readout,

    Jᵀ v = Σ_{n,t} g_{n,t} a_{n,t}ᵀ   (and Σ g_{n,t} for b),   g_{n,t} = (∂h_n/∂y_{n,t})ᵀ v_n,
    J G  = (∂h_n/∂y_n) · (G a_{n,t} (+ b-part))_t,

(arXiv 2510.00468, the layerwise eNTK of a language-model layer). So the model runs up to and
through the module once per chunk of samples: the module's inputs are cached, and only the
part of the graph after it (the *suffix*, from the module's output to the readout) is kept.
A product of a block of b vectors is then one batched backward through the suffix (the g's),
two batched matrix products with the cached inputs (the layer's own contraction, over every
position of every sample in the chunk and the whole block), and one batched backward through
the suffix's transpose (∂h/∂y · dy, exact because the backward is linear in its cotangent).

The batch runs as the model's ordinary batched forward, not one sample at a time under vmap:
padded batches with a 2-D attention mask (which Hugging Face models cannot run under vmap)
keep this fast path. The probe has shown the model batch-independent, and the module's input
is checked to have one row per sample. Where the path cannot apply, `cached_layer_reason`
says why and the caller uses the general products. With ``positions=`` and a BERT-style last
block, that block runs at the read positions only (`.readout_pruning`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InvalidArgumentError
from .checks import close, require_finite
from .problem import Problem
from .readout_pruning import LastBlockAtPositions, find_last_block
from .vmapping import per_sample_attention, quiet_batching_fallback

__all__ = ["AffineLayer", "CachedLayerOperator", "cached_layer_reason", "find_affine_layer"]


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): y = x @ W + b with W (in, out); matched by name so
    that transformers stays optional."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


@dataclass(frozen=True)
class AffineLayer:
    """The one affine module the kernel's parameters belong to."""

    path: str
    module: nn.Module
    weight: str | None
    """Canonical name of the selected weight (None: only the bias is selected)."""
    bias: str | None
    """Canonical name of the selected bias (None: not selected or absent)."""
    d_in: int
    d_out: int
    transposed: bool
    """True for Conv1D (weight stored (in, out))."""


def find_affine_layer(problem: Problem) -> tuple[AffineLayer | None, str]:
    """The affine module whose parameters are exactly the selected ones, or (None, why not)."""
    owners = {problem.index.infos[name].owner for name in problem.selected}
    if len(owners) != 1:
        return None, "the selected parameters belong to more than one module"
    path = owners.pop()
    module = problem.model.get_submodule(path) if path else problem.model
    if isinstance(module, nn.Linear):
        transposed = False
        d_in, d_out = module.in_features, module.out_features
    elif _is_conv1d(module):
        transposed = True
        stored = module.get_parameter("weight")
        d_in, d_out = int(stored.shape[0]), int(stored.shape[1])
    else:
        return None, f"module {path!r} is a {type(module).__name__}, not nn.Linear or Conv1D"
    weight = bias = None
    for name in problem.selected:
        info = problem.index.infos[name]
        if info.aliases:
            return None, f"parameter {name!r} is tied to {info.aliases[0]!r}"
        leaf = name.rpartition(".")[2]
        if leaf == "weight":
            weight = name
        elif leaf == "bias":
            bias = name
        else:
            return None, f"parameter {name!r} is not the module's weight or bias"
    calls = problem.probe.calls.get(path, 0)
    if calls != 1:
        return None, f"module {path!r} runs {calls} times per forward (the cached path needs 1)"
    for name in problem.selected:
        if problem.probe.usage.get(name, 0) != 1:
            return None, f"parameter {name!r} is used by more than the module's one call"
    if not problem.probe.batch_independent:
        return None, "the model's samples interact inside a batch"
    return AffineLayer(path, module, weight, bias, d_in, d_out, transposed), ""


def cached_layer_reason(problem: Problem) -> str | None:
    """None when the cached-layer products apply to ``problem``, else the reason they do not."""
    if problem.reduction.rows_concatenated:
        return f"reduction {problem.reduction.name!r} concatenates a sample's output rows"
    if problem.n_samples2:
        return "a cross kernel"
    layer, why = find_affine_layer(problem)
    return why if layer is None else None


@dataclass
class _Chunk:
    """One chunk's cached prefix: the layer's inputs and the suffix graph after it."""

    start: int
    stop: int
    inputs: Tensor
    """(n·L, d_in): the module's input at every position of the chunk's samples."""
    positions: int
    """L, the positions per sample."""
    leaf: Tensor
    """(n, ..., d_out), L positions: the module's output, the suffix's input (requires
    grad; kept as the module returned it, a view of it would not be in the graph)."""
    out: Tensor
    """(n, C_r): the readout R f, with the graph back to ``leaf``."""
    transpose: tuple[Tensor, Tensor] | None = None
    """(g(u) (n, L, d_out), u (n, C_r)): the suffix's backward at a symbolic cotangent u,
    whose own backward gives ∂h/∂y · dy; kept when memory allows, else rebuilt per product."""


_NOT_DIFFERENTIABLE = (
    "the model's backward after the selected layer is not differentiable as its forward is "
    "({}): the matrix-free products take the transpose of that backward, so they need a "
    "model whose custom autograd Functions have differentiable backwards"
)

#: Samples of the first chunk, which measures a sample's cached forward.
FIRST_CHUNK = 16
#: Most samples a chunk: its batched backward is then a matrix product of 64·T rows, past
#: which larger chunks gain nothing.
MAX_CHUNK = 64


class CachedLayerOperator:
    """K V = M (Mᵀ V) for the single affine layer of ``problem`` (see the module docstring).

    ``columns`` vectors per batched backward. The first chunk (at most `FIRST_CHUNK`
    samples) measures what a sample's cached forward holds (the tensors autograd saves for the
    suffix, and the layer's inputs); the chunk size is then the most samples whose batched
    backward (about three graphs' worth a sample and column) fits ``transient`` bytes, at most
    `MAX_CHUNK`. Chunks stay cached (layer
    inputs and suffix graph) while they fit ``keep_bytes``, and so do their transposes'
    graphs when every chunk's forward fits; chunks beyond run their forward per product
    (and a transpose is rebuilt per block product: one unbatched backward). ``n_matvec``
    counts vector products.
    """

    def __init__(self, problem: Problem, columns: int, transient: int, keep_bytes: int) -> None:
        layer, why = find_affine_layer(problem)
        if layer is None:
            raise InvalidArgumentError(f"the cached-layer products do not apply: {why}")
        self.problem = problem
        self.layer = layer
        self.columns = max(1, int(columns))
        self.transient = max(1, int(transient))
        self.keep_bytes = max(0, int(keep_bytes))
        self.kept: dict[int, _Chunk] = {}
        self.kept_bytes = 0
        self.n_matvec = 0
        self.chunk = min(problem.n_samples, FIRST_CHUNK)
        self.sample_bytes = 0
        """Bytes one sample's cached forward holds (inputs and suffix graph), measured."""
        self.graph_bytes = 0
        self._bounds: list[tuple[int, int]] | None = None
        last = find_last_block(problem.model, layer.path) if problem.call.positions else None
        self.pruner = None if last is None else LastBlockAtPositions(*last)
        """The last block at the read positions (`.readout_pruning`), or None."""
        self._pruning_checked = False
        self._keep_transposes = False
        self._checked = False

    @property
    def size(self) -> int:
        return self.problem.kernel_size

    @property
    def kept_transposes(self) -> int:
        return sum(1 for c in self.kept.values() if c.transpose is not None)

    def _slices(self) -> list[tuple[int, int]]:
        if self._bounds is None:
            n, first = self.problem.n_samples, self.chunk
            bounds = [(0, first)]
            bounds += [(s, min(s + self.chunk, n)) for s in range(first, n, self.chunk)]
            self._bounds = bounds
        return self._bounds

    def _run(self, start: int, stop: int) -> _Chunk:
        """The model's batched forward on samples ``start:stop`` with the layer's output made
        the graph's leaf: only the suffix after the layer is recorded."""
        problem = self.problem
        seen: list[tuple[Tensor, Tensor]] = []

        def hook(_module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor:
            if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise InvalidArgumentError(
                    f"module {self.layer.path!r} must take and return tensors for the "
                    "cached-layer products"
                )
            leaf = output.detach().requires_grad_(True)
            seen.append((args[0].detach(), leaf))
            return leaf

        saved: dict[tuple[int, int], int] = {}

        def pack(t: Tensor) -> Tensor:
            # the bytes the suffix graph holds (each storage once)
            storage = t.untyped_storage()
            saved[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            return t

        handle = self.layer.module.register_forward_hook(hook)
        xs = tuple(x[start:stop] for x in problem.inputs)
        try:
            with (
                torch.enable_grad(),
                per_sample_attention(),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                out = self._readout(xs)
        finally:
            handle.remove()
        if self.pruner is not None and not self._pruning_checked:
            if not self._pruning_holds(xs, out):
                return self._run(start, stop)
        self.graph_bytes = sum(saved.values())
        n = stop - start
        if len(seen) != 1:
            raise InvalidArgumentError(
                f"module {self.layer.path!r} ran {len(seen)} times in one forward; the "
                "cached-layer products need exactly one call"
            )
        inputs, leaf = seen[0]
        if inputs.dim() < 2 or inputs.shape[0] != n or leaf.shape[0] != n:
            raise InvalidArgumentError(
                f"module {self.layer.path!r} must see the samples along dim 0 (input shape "
                f"{tuple(inputs.shape)} for {n} samples)"
            )
        require_finite(out, "output", problem.samples_from(start))
        positions = int(inputs[0].numel() // self.layer.d_in)
        return _Chunk(
            start,
            stop,
            inputs.reshape(n * positions, self.layer.d_in),
            positions,
            leaf,
            out,
        )

    def _readout(self, xs: tuple[Tensor, ...]) -> Tensor:
        """R f on the chunk's inputs ``xs``: the model's own forward, or with the last block
        run at the read positions only, once that has reproduced the model's readout."""
        problem = self.problem
        if self.pruner is None:
            return problem.out_map.apply(problem.forward(xs))
        n = int(xs[0].shape[0])
        pruned = self.pruner(lambda: problem.forward(xs), xs[-1])
        return problem.out_map.apply(pruned.reshape(n, -1))

    def _pruning_holds(self, xs: tuple[Tensor, ...], out: Tensor) -> bool:
        """Whether the pruned readout ``out`` equals the model's own on ``xs`` (checked once;
        a mismatch turns pruning off: the readout is not the last block at the positions)."""
        self._pruning_checked = True
        with torch.no_grad(), per_sample_attention():
            full = self.problem.out_map.apply(self.problem.forward(xs))
        if full.shape == out.shape and close(out.detach(), full):
            return True
        self.pruner = None
        return False

    @staticmethod
    def _make_transpose(chunk: _Chunk) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            u = torch.zeros_like(chunk.out, requires_grad=True)
            (g,) = torch.autograd.grad(chunk.out, chunk.leaf, u, create_graph=True)
        if not g.requires_grad:
            raise InvalidArgumentError(_NOT_DIFFERENTIABLE.format("its backward is detached"))
        return g, u

    def _measure(self) -> _Chunk:
        """Run the first chunk, measure a sample's share, and size the other chunks."""
        first = self._run(0, self.chunk)
        held = self.graph_bytes + first.inputs.numel() * first.inputs.element_size()
        self.sample_bytes = max(1, held // self.chunk)
        per = 3 * self.sample_bytes * self.columns
        self.chunk = int(min(self.problem.n_samples, MAX_CHUNK, max(1, self.transient // per)))
        n_forward = self.sample_bytes * self.problem.n_samples
        # A transpose graph holds about twice the forward graph.
        self._keep_transposes = 3 * n_forward <= self.keep_bytes
        self._bounds = None
        return first

    def _chunks(self) -> list[_Chunk]:
        """Every chunk: the kept ones, and the others run afresh (kept while they fit)."""
        first = None if self._bounds is not None else self._measure()
        slices = self._slices()
        if first is not None and first.stop != slices[0][1]:
            first = None  # the first chunk is now of another size: rerun as planned
        out = []
        for index, (start, stop) in enumerate(slices):
            chunk = self.kept.get(index)
            if chunk is None:
                chunk = first if (index == 0 and first is not None) else self._run(start, stop)
                cost = self.sample_bytes * (stop - start) * (3 if self._keep_transposes else 1)
                if self.kept_bytes + cost <= self.keep_bytes:
                    if self._keep_transposes:
                        chunk.transpose = self._make_transpose(chunk)
                    self.kept[index] = chunk
                    self.kept_bytes += cost
            if not self._checked:
                self._check_adjoint(chunk)
            out.append(chunk)
        return out

    def _check_adjoint(self, chunk: _Chunk) -> None:
        """⟨∂h/∂y · w, u⟩ = ⟨w, (∂h/∂y)ᵀ u⟩ on random u, w: a backward that is not itself
        differentiable (a custom Function that detaches) would make M silently wrong."""
        self._checked = True
        gen = torch.Generator(device=chunk.out.device).manual_seed(0)
        u = torch.randn(chunk.out.shape, generator=gen, dtype=chunk.out.dtype)
        w = torch.randn(chunk.leaf.shape, generator=gen, dtype=chunk.leaf.dtype)
        pulled = torch.autograd.grad(chunk.out, chunk.leaf, u, retain_graph=True)[0]
        g, sym = chunk.transpose if chunk.transpose is not None else self._make_transpose(chunk)
        pushed = torch.autograd.grad(g, sym, w, retain_graph=True)[0]
        lhs, rhs = float((pushed * u).sum()), float((pulled * w).sum())
        scale = float(pushed.norm() * u.norm() + pulled.norm() * w.norm()) or 1.0
        # Loose enough for models that compute parts in float32 whatever the dtype (Gemma's
        # RMSNorm), tight enough for a backward that is wrong, not rounded.
        tol = 1e-4
        # round-off of a Jacobian that is zero (a mean of normalised outputs) is no error
        floor = 100 * torch.finfo(u.dtype).eps * float(u.norm() * w.norm())
        if abs(lhs - rhs) > tol * scale + floor:
            raise InvalidArgumentError(
                _NOT_DIFFERENTIABLE.format(f"adjoint test {lhs:.6g} vs {rhs:.6g}")
            )

    def _grads(self, out: Tensor, wrt: Tensor, cot: Tensor) -> Tensor:
        """Batched backward: cot (b, *out.shape) -> (b, *wrt.shape)."""
        if cot.shape[0] == 1:
            return torch.autograd.grad(out, wrt, cot[0], retain_graph=True)[0].unsqueeze(0)
        with quiet_batching_fallback():
            return torch.autograd.grad(out, wrt, cot, retain_graph=True, is_grads_batched=True)[0]

    def _block(self, chunks: list[_Chunk], v: Tensor) -> Tensor:
        """K V for one block V (b, N, C_r) -> (b, N, C_r)."""
        return self._push(chunks, self._pull(chunks, v))

    def _pull(self, chunks: list[_Chunk], v: Tensor) -> list[Tensor]:
        """Mᵀ V for a block V (b, n, C_r) of the samples of ``chunks``: the layer-sized
        [weight (b, d_out, d_in), bias (b, 1, d_out)] (zero where not selected). Sums over
        samples: the parts of disjoint sample sets add up to the whole."""
        layer = self.layer
        b = v.shape[0]
        weight = torch.zeros(b, layer.d_out, layer.d_in, dtype=v.dtype, device=v.device)
        bias = torch.zeros(b, 1, layer.d_out, dtype=v.dtype, device=v.device)
        offset = chunks[0].start
        for chunk in chunks:
            cot = v[:, chunk.start - offset : chunk.stop - offset]
            g = self._grads(chunk.out, chunk.leaf, cot)
            g = g.reshape(b, -1, layer.d_out)  # (b, n·L, d_out)
            if layer.weight is not None:
                weight.add_(g.transpose(1, 2) @ chunk.inputs)
            if layer.bias is not None:
                bias.add_(g.sum(dim=1, keepdim=True))
            del g
        return [weight, bias]

    def _push(self, chunks: list[_Chunk], parts: list[Tensor]) -> Tensor:
        """M W for the layer-sized W = [weight, bias] of `_pull`: (b, n, C_r) for the samples
        of ``chunks``."""
        layer = self.layer
        weight, bias = parts
        b = weight.shape[0]
        offset = chunks[0].start
        n = chunks[-1].stop - offset
        result = torch.empty(b, n, self.problem.rows_per_sample, dtype=weight.dtype)
        for chunk in chunks:
            dy = chunk.inputs @ weight.transpose(1, 2) if layer.weight is not None else 0.0
            dy = dy + bias  # (b, n·L, d_out)
            g_sym, u = (
                chunk.transpose if chunk.transpose is not None else self._make_transpose(chunk)
            )
            pushed = self._grads(g_sym, u, dy.reshape(b, *chunk.leaf.shape))
            require_finite(pushed, "jacobian", self.problem.samples_from(chunk.start), dim=1)
            result[:, chunk.start - offset : chunk.stop - offset] = pushed
            del dy, pushed
        return result

    def pull(self, block: np.ndarray) -> list[np.ndarray]:
        """Mᵀ V for V (R, b) over this problem's samples: the layer-sized parts
        [weight (b, d_out, d_in), bias (b, 1, d_out)] in the problem's dtype (see `_pull`);
        K V = `push` of the sum of every sample set's parts."""
        vectors = self._vectors(block)
        chunks = self._chunks()
        parts = [
            self._pull(chunks, vectors[s : s + self.columns])
            for s in range(0, vectors.shape[0], self.columns)
        ]
        return [torch.cat(column).detach().cpu().numpy() for column in zip(*parts, strict=True)]

    def push(self, parts: list[np.ndarray]) -> np.ndarray:
        """M W for the summed parts of `pull` (their leading dimension b): returns (R, b) in the
        problem's dtype."""
        problem = self.problem
        tensors = [torch.as_tensor(p, device=problem.device).to(problem.dtype) for p in parts]
        chunks = self._chunks()
        b = tensors[0].shape[0]
        out = [
            self._push(chunks, [t[s : s + self.columns] for t in tensors])
            for s in range(0, b, self.columns)
        ]
        self.n_matvec += b
        flat = torch.cat(out).reshape(b, -1).T.detach().cpu().numpy()
        return np.ascontiguousarray(flat, dtype=problem.numpy_dtype)

    def _vectors(self, block: np.ndarray) -> Tensor:
        """V (R, b) as the problem's (b, N, C_r) tensor."""
        problem = self.problem
        n, rows = problem.n_samples, problem.rows_per_sample
        vectors = torch.as_tensor(np.ascontiguousarray(np.asarray(block).T), device=problem.device)
        return vectors.to(problem.dtype).reshape(-1, n, rows)

    def dense_kernel(self, kernel: np.ndarray, progress: Callable[[int], Any]) -> None:
        """Write K = M Mᵀ (N·C_r × N·C_r) into ``kernel``: every sample's readout Jacobian
        with respect to the layer's output, M_n = ∂h_n/∂y_n (C_r, L, d_out), by C_r batched
        backwards a chunk, then per pair of samples

            K_{nn'} = Σ_{t,t'} ⟨a_{n,t}, a_{n',t'}⟩ M_{n,t} M_{n',t'}ᵀ

        (a bias adds 1 to each input product: its Jacobian is Σ_t M_{n,t}). Holds every M_n:
        N·C_r·L·d_out values. ``progress(k)`` is told of each finished block row.
        """
        problem, layer = self.problem, self.layer
        rows = problem.rows_per_sample
        chunks = self._chunks()
        positions = chunks[0].positions
        jac: list[Tensor] = []
        inputs: list[Tensor] = []
        for chunk in chunks:
            n = chunk.stop - chunk.start
            for c0 in range(0, rows, self.columns):
                b = min(self.columns, rows - c0)
                cot = torch.zeros(b, n, rows, dtype=chunk.out.dtype, device=chunk.out.device)
                cot[torch.arange(b), :, c0 + torch.arange(b)] = 1.0
                g = self._grads(chunk.out, chunk.leaf, cot).reshape(b, n, positions, -1)
                require_finite(g.transpose(0, 1), "jacobian", problem.samples_from(chunk.start))
                jac.append(g.transpose(0, 1))  # (n, b, L, d_out) for rows c0..c0+b
            a = chunk.inputs.reshape(n, positions, layer.d_in)
            if layer.weight is None:
                a = a[..., :0]
            if layer.bias is not None:
                a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
            inputs.append(a)
        per_chunk = -(-rows // self.columns)
        m = torch.cat(
            [torch.cat(jac[i * per_chunk : (i + 1) * per_chunk], dim=1) for i in range(len(chunks))]
        )  # (N, C_r, L, d_out)
        del jac
        a_all = torch.cat(inputs)  # (N, L, d_in (+1))
        n_all = m.shape[0]
        flat = m.reshape(n_all, rows, -1)
        out = torch.from_numpy(kernel)
        for i in range(n_all):
            s = torch.einsum("td,nud->ntu", a_all[i], a_all[i:])  # (N−i, L, L)
            y = torch.einsum("ntu,ncuo->ncto", s, m[i:])  # Σ_u ⟨a_it, a_nu⟩ M_nu
            block = flat[i] @ y.reshape(n_all - i, rows, -1).transpose(1, 2)  # (N−i, C, C)
            block = block.permute(1, 0, 2).reshape(rows, -1)
            out[i * rows : (i + 1) * rows, i * rows :] = block.to(out.dtype)
            out[i * rows :, i * rows : (i + 1) * rows] = block.T.to(out.dtype)
            progress(1)

    def matmat(self, block: np.ndarray) -> np.ndarray:
        """K V for V (R, b) (any float dtype); returns (R, b) in the problem's dtype."""
        problem = self.problem
        vectors = self._vectors(block)
        chunks = self._chunks()
        parts = [
            self._block(chunks, vectors[s : s + self.columns])
            for s in range(0, vectors.shape[0], self.columns)
        ]
        del chunks
        self.n_matvec += vectors.shape[0]
        out = torch.cat(parts).reshape(vectors.shape[0], -1).T.detach().cpu().numpy()
        return np.ascontiguousarray(out, dtype=problem.numpy_dtype)
