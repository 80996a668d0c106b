"""KV-cache eviction as a ``transformers.Cache``: ``H2OCache`` (Heavy-Hitter Oracle, arXiv
2306.14048) and ``EvictingCache`` for any :class:`~hf_sinklora.cache.policy.EvictionPolicy`.

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sf_attention")
    model.generate(**inputs, cache=H2OCache(budget=1024), max_new_tokens=256)
    model.generate(**inputs, cache=EvictingCache(StreamingLLMPolicy(1024)), max_new_tokens=256)

The container only dispatches to one :class:`H2OLayer` per attention layer, created on first use.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache

from .h2o_layer import NOT_SCORED_HINT, H2OLayer
from .policy import EvictionPolicy, H2OPolicy


def cache_kv_bytes(cache: Cache) -> int:
    """Bytes held by the key and value tensors of every layer of ``cache`` (any ``Cache``)."""
    return sum(
        layer.keys.nbytes + layer.values.nbytes
        for layer in cache.layers
        if getattr(layer, "keys", None) is not None and layer.values is not None
    )


class EvictingCache(Cache):
    """Keeps at most ``policy``'s budget of tokens per layer, batch row and KV head.

    Args:
        policy: which tokens stay (:class:`H2OPolicy`, :class:`StreamingLLMPolicy`,
            :class:`RecentWindowPolicy` or your own :class:`EvictionPolicy`).

    Needs ``attn_implementation="sf_attention"``, which computes the attention probabilities
    the scores accumulate. ``get_seq_length()`` counts every token seen; ``layers[i].positions``
    gives the absolute positions of the kept tokens, ``(B, Hkv, kept)``.
    """

    def __init__(self, policy: EvictionPolicy):
        if not isinstance(policy, EvictionPolicy):
            raise TypeError(f"policy must be an EvictionPolicy, got {type(policy).__name__}")
        self.policy = policy
        super().__init__(layer_class_to_replicate=functools.partial(H2OLayer, policy))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores ``(B, Hkv, q, D)`` keys/values of layer ``layer_idx``; returns its slots.

        Raises early when the previous layer's attention never reported its probabilities,
        i.e. the model runs another attention implementation.
        """
        if 0 < layer_idx <= len(self.layers) and self.layers[layer_idx - 1].awaiting_scores:
            raise ValueError(NOT_SCORED_HINT)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    @property
    def kv_bytes(self) -> int:
        """Bytes held by every layer's key and value tensors (a spare decode slot included)."""
        return cache_kv_bytes(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy!r}, layers={len(self.layers)})"


class H2OCache(EvictingCache):
    """Keeps at most ``budget`` tokens per layer, batch row and KV head, chosen as H2O does.

    Args:
        budget: tokens kept, an int ``>= num_sink_tokens + 1``; or a float in (0, 1]: that
            fraction of the first forward's length (the prompt), fixed then.
        recent_ratio: share of the budget kept for the most recent tokens, in [0, 1].
        num_sink_tokens: first tokens of each row that are always kept.

    The rest of the budget goes to the tokens with the highest accumulated attention
    (summed over every query since they entered, averaged over a KV head's query heads).

    Left padding with ``generate(..., prefill_chunk_size=C)``: eviction runs after each chunk of
    the *padded* batch, so a row with ``p`` left pads keeps exactly what the same row alone keeps
    when prefilled in a first step of ``C - p % C`` tokens, then steps of ``C`` (independent of the
    padding when ``p % C == 0`` or without chunked prefill). Pads are never attended or scored and
    are evicted first. See docs/h2o.md.

    Raises:
        ValueError: a setting is out of range (the message names it).
    """

    def __init__(self, budget: int | float, *, recent_ratio: float = 0.5, num_sink_tokens: int = 4):
        super().__init__(H2OPolicy(budget, recent_ratio=recent_ratio, num_sink_tokens=num_sink_tokens))
