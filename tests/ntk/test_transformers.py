"""Tiny Hugging Face models built from a config (no download): dict inputs with an attention
mask, ``output_fn`` on the ``ModelOutput``, against the brute-force reference. GPT-2 and BERT
with a mask cannot run under vmap, so this exercises the per-sample autograd fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from ntk_reference import reference_jacobian, reference_kernel, relative_error
from torch import nn

from entk_fast import empirical_ntk

transformers = pytest.importorskip("transformers")


class Positional(nn.Module):
    """The reference's view of a keyword model: (ids, mask) -> output_fn(model(...))."""

    def __init__(self, model: nn.Module, pick: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.pick = pick

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pick(self.model(input_ids=ids, attention_mask=mask))


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=12, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        num_hidden_layers=1,
        num_attention_heads=2,
        hidden_size=8,
        intermediate_size=16,
        vocab_size=12,
        max_position_embeddings=8,
    )
    return transformers.BertModel(config, add_pooling_layer=False)


CASES = {
    "gpt2": (_gpt2, lambda o: o.logits[:, -1]),
    "bert": (_bert, lambda o: o.last_hidden_state[:, 0]),
}


@pytest.mark.parametrize("reduction", ["flattened", "trace", "mean_pairs"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_transformers_match_the_reference(name: str, reduction: str) -> None:
    build, pick = CASES[name]
    torch.manual_seed(0)
    model = build().double().eval()
    ids = torch.randint(0, 12, (4, 5))
    mask = torch.ones(4, 5, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded sequence
    expected = reference_kernel(reference_jacobian(Positional(model, pick), (ids, mask)), reduction)
    with pytest.warns(UserWarning, match="per-sample autograd"):
        result = empirical_ntk(
            model,
            {"input_ids": ids, "attention_mask": mask},
            output_fn=pick,
            reduction=reduction,
            progress=False,
        )
    assert relative_error(result.kernel, expected) < 1e-9
