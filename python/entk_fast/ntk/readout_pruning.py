"""The last transformer block at the read position only: the cached-layer products' suffix
without the work no readout uses.

When a model's output is read at one position per sample (``positions=``) from the last block's
hidden state, that block's attention needs every position's keys and values, but its query,
attention output, MLP and norms only at the read position: in a 64-token context about four
fifths of the block's work is thrown away by the readout, and the products run it twice per
vector (a backward and its transpose). `LastBlockAtPositions` runs the model's forward up
to the last block (a pre-hook stops it there with the block's inputs), then the block itself at
the read positions, from the block's own submodules; only the attention scores are written
out here. It applies to BERT-style encoder blocks (``attention.self.query/key/value``,
``attention.output``, ``intermediate``, ``output``: BERT, RoBERTa, MiniLM, ...), and the caller
checks on its first chunk that it reproduces the model's own readout before trusting it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LastBlockAtPositions", "find_last_block"]


class _Stop(Exception):  # noqa: N818 - control flow: the forward stops at the last block
    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__("stopped at the last block")
        self.args_ = args
        self.kwargs_ = kwargs


def _is_bert_block(block: nn.Module) -> bool:
    attention = getattr(block, "attention", None)
    core = getattr(attention, "self", None)
    return (
        core is not None
        and all(isinstance(getattr(core, n, None), nn.Linear) for n in ("query", "key", "value"))
        and hasattr(attention, "output")
        and hasattr(block, "intermediate")
        and hasattr(block, "output")
        and not getattr(block, "is_decoder", False)
        and not hasattr(block, "crossattention")
        and getattr(block, "chunk_size_feed_forward", 0) == 0
        and hasattr(core, "num_attention_heads")
        and hasattr(core, "attention_head_size")
    )


def find_last_block(model: nn.Module, layer_path: str) -> tuple[str, nn.Module] | None:
    """The last block of the ModuleList that holds ``layer_path``'s block, when it is a later
    block of a supported kind (None otherwise)."""
    parts = layer_path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[: cut - 1])
        container = model.get_submodule(parent) if parent else model
        if isinstance(container, nn.ModuleList) and parts[cut - 1].isdigit():
            index = int(parts[cut - 1])
            last = len(container) - 1
            if index >= last or not _is_bert_block(container[last]):
                return None
            return (f"{parent}.{last}" if parent else str(last)), container[last]
    return None


class LastBlockAtPositions:
    """Runs ``forward()`` up to ``block`` and the block at ``positions`` only: (n, d)."""

    def __init__(self, path: str, block: nn.Module) -> None:
        self.path = path
        self.block = block

    def __call__(self, forward: Any, positions: Tensor) -> Tensor:
        def stop(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            raise _Stop(args, kwargs)

        handle = self.block.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            forward()
        except _Stop as stopped:
            args, kwargs = stopped.args_, stopped.kwargs_
        else:  # pragma: no cover - the block did not run: the caller's check refuses
            raise RuntimeError(f"the forward did not reach {self.path}")
        finally:
            handle.remove()
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        return self._block(hidden, mask, positions)

    def _block(self, hidden: Tensor, mask: Tensor | None, positions: Tensor) -> Tensor:
        # a BERT-style block (checked by find_last_block): its submodules by name
        block: Any = self.block
        core: Any = block.attention.self
        n, length, _ = hidden.shape
        rows = torch.arange(n, device=hidden.device)
        here = hidden[rows, positions]  # (n, d)
        heads, size = int(core.num_attention_heads), int(core.attention_head_size)
        query = core.query(here).view(n, heads, 1, size)
        key = core.key(hidden).view(n, length, heads, size).transpose(1, 2)
        value = core.value(hidden).view(n, length, heads, size).transpose(1, 2)
        scaling = getattr(core, "scaling", size**-0.5)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (n, h, 1, T)
        if mask is not None:
            if mask.dim() == 4 and mask.shape[2] == length:
                mask = mask[rows, :, positions].unsqueeze(2)  # the read query's row
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, value).transpose(1, 2).reshape(n, 1, heads * size)
        attended = block.attention.output(context, here.unsqueeze(1))
        return block.output(block.intermediate(attended), attended)[:, 0]
