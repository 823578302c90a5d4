"""A Llama/Qwen-style decoder's sizes from its config fields (``config.json``): parameters and
the bytes of keys and values each token keeps in a KV cache. Used by the recipe estimates and by
the generation engine's batch sized from free memory."""

from __future__ import annotations

import json
from pathlib import Path


def parameters_of_shape(shape: dict) -> int:
    """Parameters of a Llama/Qwen-style decoder from its config fields."""
    h, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads", heads)
    head_dim = shape.get("head_dim") or h // heads
    vocab = shape["vocab_size"]
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    if shape.get("attention_bias"):  # Qwen2: biases on q, k, v
        attention += heads * head_dim + 2 * kv * head_dim
    per_layer = attention + 3 * h * inter + 2 * h
    embeddings = vocab * h * (1 if shape.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def kv_bytes_per_token(shape: dict, dtype_bytes: int) -> int:
    """Bytes of keys and values one token holds in a KV cache, over all layers."""
    heads = shape["num_attention_heads"]
    kv = shape.get("num_key_value_heads") or heads
    head_dim = shape.get("head_dim") or shape["hidden_size"] // heads
    return 2 * shape["num_hidden_layers"] * kv * head_dim * dtype_bytes


def shape_of(model_dir: str | Path) -> dict:
    """The decoder's config fields of a model directory (a multimodal config's text part)."""
    data = json.loads((Path(model_dir) / "config.json").read_text())
    return data.get("text_config", data)
