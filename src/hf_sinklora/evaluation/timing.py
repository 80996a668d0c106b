"""Timed ``generate()`` runs: prefill time, decode tokens/s and KV bytes of any cache.

Used by ``examples/generate_with_h2o.py`` and ``hf-sinklora demo`` to put ``H2OCache`` and
the full ``DynamicCache`` side by side. Timestamps come from a ``transformers`` streamer, so
the numbers are those of a plain ``model.generate`` call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer

from ..cache import cache_kv_bytes


class _Clock(BaseStreamer):
    """Records when ``generate`` hands out the prompt and each new token (batch size 1)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@dataclass
class GenerationRun:
    """One timed ``generate`` call.

    Attributes:
        new_tokens: tokens generated.
        prefill_s: from the call to the first new token (the prompt's forward).
        decode_tokens_per_s: the following tokens per second (``nan`` for fewer than 2 tokens).
        kv_bytes: bytes of every layer's key and value tensors after generation.
        sequences: ``(1, prompt + new_tokens)`` token ids.
    """

    new_tokens: int
    prefill_s: float
    decode_tokens_per_s: float
    kv_bytes: int
    sequences: torch.Tensor = field(repr=False)


@torch.no_grad()
def timed_generate(model: Any, input_ids: torch.Tensor, cache: Cache, **generate_kwargs: Any) -> GenerationRun:
    """Runs ``model.generate(input_ids, cache=cache, **generate_kwargs)`` and times it.

    Args:
        input_ids: ``(1, n)`` prompt (a streamer needs batch size 1).
        cache: a fresh cache (``DynamicCache(config=model.config)``, ``H2OCache(...)``).
        **generate_kwargs: ``max_new_tokens``, ``prefill_chunk_size``, sampling options...
    """
    if input_ids.shape[0] != 1:
        raise ValueError(f"timed_generate needs a batch of 1 prompt, got input_ids of shape {tuple(input_ids.shape)}")
    clock = _Clock()
    started = time.perf_counter()
    sequences = model.generate(input_ids, cache=cache, streamer=clock, **generate_kwargs)
    new_tokens = sequences.shape[1] - input_ids.shape[1]
    token_times = clock.times[1:]  # the first put() is the prompt
    prefill_s = (token_times[0] if token_times else time.perf_counter()) - started
    decode_s = token_times[-1] - token_times[0] if len(token_times) > 1 else 0.0
    return GenerationRun(
        new_tokens=new_tokens,
        prefill_s=prefill_s,
        decode_tokens_per_s=(len(token_times) - 1) / decode_s if decode_s > 0 else float("nan"),
        kv_bytes=cache_kv_bytes(cache),
        sequences=sequences,
    )
