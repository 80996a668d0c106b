"""Tiny random model configs of every supported family, and builders for them (no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
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

import hf_sinklora

VOCAB = 128
PAD = 0
SF_PARAMS = {"group_size_ratio": 0.25, "num_sink_tokens": 4, "shifted_head_ratio": 0.5}


_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    initializer_range=0.2,  # sharp (non-uniform) attention, so that the masks matter
    attention_dropout=0.0,
    pad_token_id=PAD,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def _llama(common):
    return LlamaConfig(**common, num_key_value_heads=2)


def _mistral(common):
    return MistralConfig(**common, num_key_value_heads=2, sliding_window=8)


def _qwen2(common):
    return Qwen2Config(**common, num_key_value_heads=2)


def _qwen3_gqa_split(common):
    # 4 query heads / 2 key-value heads, 1 shifted head: the unshifted/shifted boundary
    # (head 3) cuts the second GQA group (heads 2, 3) in half.
    return Qwen3Config(**common, num_key_value_heads=2, head_dim=8)


def _qwen3_sliding(common):
    # layer 0 full attention, layer 1 a window of 8 (< G = 10)
    return Qwen3Config(**common, num_key_value_heads=2, head_dim=8, use_sliding_window=True, sliding_window=8,
                       max_window_layers=1)


def _gemma(common):
    return GemmaConfig(**common, num_key_value_heads=1, head_dim=8)


def _gemma2(common):
    return Gemma2Config(
        **common, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        attn_logit_softcapping=2.0,  # small enough to bind with these weights
        final_logit_softcapping=5.0,
    )


def _phi3(common):
    return Phi3Config(**common, num_key_value_heads=2, resid_pdrop=0.0, embd_pdrop=0.0,
                      original_max_position_embeddings=common["max_position_embeddings"])


def _gpt_neox(common):
    common = {k: v for k, v in common.items() if k != "attention_dropout"}
    return GPTNeoXConfig(**common, attention_dropout=0.0, hidden_dropout=0.0, rotary_pct=0.5,
                         use_parallel_residual=True)


def gemma3_factory(common):
    """Per-layer-type ``rope_parameters`` (``{"sliding_attention": ..., "full_attention": ...}``)."""
    return Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"])


def family_config(factory, **overrides):
    """A config from one of the factories above, with ``overrides`` of the common settings."""
    return factory({**_COMMON, **overrides})


# family -> (config factory, extra sf_attention settings, eval-mode baseline implementation)
FAMILIES = {
    "llama": (_llama, {}, "sdpa"),
    "mistral": (_mistral, {}, "sdpa"),
    "qwen2": (_qwen2, {}, "sdpa"),
    "qwen3_gqa_split": (_qwen3_gqa_split, {"shifted_head_ratio": 0.25}, "sdpa"),
    "qwen3_sliding": (_qwen3_sliding, {}, "sdpa"),
    "gemma": (_gemma, {}, "sdpa"),
    "gemma2": (_gemma2, {}, "eager"),  # sdpa refuses soft-capping
    "phi3": (_phi3, {}, "sdpa"),
    "gpt_neox": (_gpt_neox, {}, "sdpa"),
}
FAMILY_NAMES = list(FAMILIES)


def make_config(family: str):
    factory, extra, _ = FAMILIES[family]
    config = family_config(factory)
    hf_sinklora.configure_sf_attention(config, **{**SF_PARAMS, **extra})
    return config


def build(family: str, attn_implementation: str, state_dict=None, seed: int = 0, dtype=torch.float64):
    """A (fp64) model of ``family`` with the given attention (same weights for the same seed)."""
    torch.manual_seed(seed)
    # built in fp64 directly (not .double() afterwards), so that buffers computed at init, like
    # Gemma's embedding scale, are the same as after from_pretrained(..., dtype=torch.float64)
    model = AutoModelForCausalLM.from_config(
        make_config(family), attn_implementation=attn_implementation, dtype=dtype
    )
    assert all(p.dtype == dtype for p in model.parameters())
    if state_dict is not None:
        model.load_state_dict(state_dict)
    assert model.config._attn_implementation == attn_implementation
    return model


def twins(family: str, *implementations: str, dtype=torch.float64):
    first = build(family, implementations[0], dtype=dtype)
    return [first] + [build(family, impl, state_dict=first.state_dict(), dtype=dtype) for impl in implementations[1:]]
