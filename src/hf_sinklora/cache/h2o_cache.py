"""``H2OCache``: Heavy-Hitter Oracle KV eviction (arXiv 2306.14048) as a ``transformers.Cache``.

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sf_attention")
    model.generate(**inputs, cache=H2OCache(budget=1024), max_new_tokens=256)

(``past_key_values=`` works too; transformers 5 renamed it ``cache``.) The container only
dispatches to one :class:`H2OLayer` per attention layer, created on first use.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache

from .h2o_layer import NOT_SCORED_HINT, H2OLayer
from .policy import H2OPolicy
from .timing import cache_kv_bytes


class H2OCache(Cache):
    """Keeps at most ``budget`` tokens per layer, batch row and KV head, chosen as H2O does.

    Args:
        budget: tokens kept, an int ``>= num_sink_tokens + 1``; or a float in (0, 1]: that
            fraction of the first forward's length (the prompt), fixed then.
        recent_ratio: share of the budget kept for the most recent tokens, in [0, 1].
        num_sink_tokens: first tokens of each row that are always kept.

    The rest of the budget goes to the tokens with the highest accumulated attention
    (summed over every query since they entered, averaged over a KV head's query heads).
    Needs ``attn_implementation="sf_attention"``, which computes those probabilities.
    ``get_seq_length()`` counts every token seen; ``layers[i].positions`` gives the absolute
    positions of the kept tokens, ``(B, Hkv, kept)``.

    Raises:
        ValueError: a setting is out of range (the message names it).
    """

    def __init__(self, budget: int | float, *, recent_ratio: float = 0.5, num_sink_tokens: int = 4):
        self.policy = H2OPolicy(budget=budget, recent_ratio=recent_ratio, num_sink_tokens=num_sink_tokens)
        super().__init__(layer_class_to_replicate=functools.partial(H2OLayer, self.policy))

    @classmethod
    def streaming_llm(cls, budget: int | float, *, num_sink_tokens: int = 4) -> H2OCache:
        """Sinks + recent window, no heavy hitters (StreamingLLM, arXiv 2309.17453), for comparison."""
        return cls(budget, recent_ratio=1.0, num_sink_tokens=num_sink_tokens)

    @classmethod
    def recent_window(cls, budget: int | float) -> H2OCache:
        """Only the most recent ``budget`` tokens, for comparison."""
        return cls(budget, recent_ratio=1.0, num_sink_tokens=0)

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
        policy = self.policy
        return (
            f"H2OCache(budget={policy.budget}, recent_ratio={policy.recent_ratio}, "
            f"num_sink_tokens={policy.num_sink_tokens}, layers={len(self.layers)})"
        )
