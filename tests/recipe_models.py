"""Tiny configs of every supported family for the recipe tests (no downloads)."""

from __future__ import annotations

from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)

# family -> config factory. Gemma/Gemma2 keep their default tied embeddings, the others are untied.
FAMILIES = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=16),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": lambda: Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                                   sliding_window=16, layer_types=["sliding_attention", "full_attention"]),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2, original_max_position_embeddings=64),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON, rotary_pct=0.5, tie_word_embeddings=False),
}


def gemma3_config() -> Gemma3TextConfig:
    """Per-layer-type ``rope_parameters`` (``{"sliding_attention": ..., "full_attention": ...}``)."""
    return Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"])


# What the recipe must find, written down per family from the modeling code (the independent side).
ATTENTION_PROJECTIONS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}
LAYER_NORMS = {
    "llama": ["input_layernorm", "post_attention_layernorm"],
    "mistral": ["input_layernorm", "post_attention_layernorm"],
    "qwen2": ["input_layernorm", "post_attention_layernorm"],
    "qwen3": ["input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm"],
    "gemma": ["input_layernorm", "post_attention_layernorm"],
    "gemma2": ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm"],
    "phi3": ["input_layernorm", "post_attention_layernorm"],
    "gpt_neox": ["input_layernorm", "post_attention_layernorm"],
}
ATTENTION_NAME = {"gpt_neox": "attention"}  # default "self_attn"
PREFIX = {"gpt_neox": "gpt_neox"}  # default "model"
EMBEDDING = {"gpt_neox": "embed_in"}  # default "embed_tokens"
FINAL_NORM = {"gpt_neox": "final_layer_norm"}  # default "norm"
