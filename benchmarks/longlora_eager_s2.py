"""LongLoRA's eager S2-Attn as the SinkLoRA repository trains it: a benchmark-only baseline.

Written from its description, for the benchmarks' comparisons only (``long_context.py``): the
package never registers it and never offers it to users. Half of the heads (the last ``Hq // 2``)
have their queries, keys and values *rolled* by ``-G/2`` along the sequence with wrap-around, then
every head attends causally inside groups of ``G`` tokens, and the shifted heads' outputs are
rolled back.
In the rolled order the last group holds the sequence's last ``G/2`` tokens followed by its first
``G/2``, so shifted-head queries ``0 .. G/2 - 1`` see the last ``G/2`` tokens of the sequence: a
future leak (LongLoRA issues #15/#90) that SF-Attn and the package's ``s2_attention`` do not have.

In eval mode it is full causal attention, as both papers evaluate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "longlora_eager_s2"
training_calls = 0
"""Calls of :func:`attention_forward` in training mode (each one runs :func:`longlora_eager_s2`) in
this process: a benchmark reads it before and after a run to show the run trained through it."""


def longlora_eager_s2(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, group_size: int, *, scale: float
) -> torch.Tensor:
    """Shifted short attention with wrap-around.

    Args:
        query: ``(B, H, n, D)``; key/value: ``(B, H, n, D)`` (GQA heads already repeated).
        group_size: ``G``; ``n`` must be a multiple of ``G`` and ``G`` even (LongLoRA's own limits).

    Returns:
        ``(B, H, n, D)``.
    """
    batch, heads, n, dim = query.shape
    if n % group_size or group_size % 2:
        raise ValueError(f"LongLoRA's S2 needs n % G == 0 and an even G; got n={n}, G={group_size}")
    half, shifted = group_size // 2, heads // 2

    def roll(tensor: torch.Tensor, shift: int) -> torch.Tensor:
        return torch.cat([tensor[:, : heads - shifted], tensor[:, heads - shifted :].roll(shift, dims=2)], dim=1)

    q, k, v = (roll(t, -half).reshape(batch, heads, n // group_size, group_size, dim) for t in (query, key, value))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)  # causal inside each group
    return roll(out.reshape(batch, heads, n, dim), half)


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: LongLoRA's eager S2 while training, SDPA causal in eval mode."""
    global training_calls
    if not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask.all()):
        raise ValueError("the LongLoRA eager S2 baseline takes full rows only (no padding)")
    ratio = module.config.sf_attention.get("group_size_ratio", 0.25)
    group_size = round(query.shape[2] * ratio)
    repeats = query.shape[1] // key.shape[1]
    training_calls += 1
    out = longlora_eager_s2(query, repeat_kv(key, repeats), repeat_kv(value, repeats), group_size,
                            scale=scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Registers the baseline for this process only (benchmarks call it); returns its name."""
    AttentionInterface.register(NAME, attention_forward)
    return NAME
