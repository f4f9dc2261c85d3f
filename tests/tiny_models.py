"""Tiny Hugging Face models built from configs (no download), shared by the tests."""

from __future__ import annotations

from typing import Any


def tiny_bert(*, layers: int = 2, hidden: int = 8, intermediate: int = 16, heads: int = 2) -> Any:
    """A float32 BertModel (no pooler) with eager attention, vocabulary 20, 12 positions."""
    import transformers

    config = transformers.BertConfig(
        num_hidden_layers=layers,
        num_attention_heads=heads,
        hidden_size=hidden,
        intermediate_size=intermediate,
        vocab_size=20,
        max_position_embeddings=12,
    )
    config._attn_implementation = "eager"
    return transformers.BertModel(config, add_pooling_layer=False)
