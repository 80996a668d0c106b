"""Tiny configs of every supported family for the recipe tests (no downloads)."""

from __future__ import annotations

import functools

from .families import FAMILIES as SHARED
from .families import family_config, gemma3_factory

# The recipe tests' sizes on the shared family configs (tests/families.py): 64 positions to extend
# from, a small vocabulary, Gemma's tied embeddings (its default) and everyone else's untied.
COMMON = dict(vocab_size=96, max_position_embeddings=64, initializer_range=0.02, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_TIED = dict(tie_word_embeddings=True)

# family -> config factory
FAMILIES = {
    name: functools.partial(family_config, SHARED[shared][0], **COMMON, **(_TIED if name.startswith("gemma") else {}))
    for name, shared in (("llama", "llama"), ("mistral", "mistral"), ("qwen2", "qwen2"), ("qwen3", "qwen3_gqa_split"),
                         ("gemma", "gemma"), ("gemma2", "gemma2"), ("phi3", "phi3"), ("gpt_neox", "gpt_neox"))
}
gemma3_config = functools.partial(family_config, gemma3_factory, **COMMON)


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
