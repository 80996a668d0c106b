"""Ordinary (dense) causal attention: what ``sf_attention`` runs in eval mode ``"full"``.

Unpadded batches go straight to transformers' own ``sdpa_attention_forward`` with
``is_causal``, so logits are SDPA's. Padding, sliding windows and KV caches (queries
aligned to the end of the keys) get a boolean ``(B, 1, q, kv)`` mask, exactly like stock
SDPA builds; soft-capping (Gemma2), which SDPA cannot do, runs the same math eagerly.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from .eager import eager_attention


def dense_causal_mask(
    padding_mask: torch.Tensor | None,
    batch_size: int,
    q_len: int,
    kv_len: int,
    sliding_window: int | None,
    device: torch.device,
) -> torch.Tensor:
    """``(B, 1, q_len, kv_len)`` bool: causal (queries are the last ``q_len`` keys), window, padding.

    Each query may also see itself, so padding rows stay finite (their output is unused).
    """
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed = allowed & (q_pos - k_pos < sliding_window)
    mask = allowed.expand(batch_size, 1, q_len, kv_len)
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, -kv_len:].bool()
    return mask | (k_pos == q_pos)


def full_causal_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    padding_mask: torch.Tensor | None,
    *,
    scale: float,
    dropout: float,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Dense causal attention.

    Args:
        query: ``(B, Hq, q, D)``; key/value ``(B, Hkv, kv, D)`` with ``kv >= q``.
        padding_mask: ``(B, kv)`` 2-D padding mask, a prepared 4-D mask, or None.

    Returns:
        ``(B, q, Hq, D)`` like every transformers attention function.
    """
    batch_size, _, q_len, _ = query.shape
    kv_len = key.shape[2]
    window_binds = sliding_window is not None and kv_len > sliding_window
    if padding_mask is not None and padding_mask.ndim == 4:
        mask = padding_mask
    elif padding_mask is None and not window_binds and (q_len == kv_len or q_len == 1):
        mask = None  # sdpa_attention_forward then uses is_causal (or attends to all keys when decoding)
    else:
        mask = dense_causal_mask(padding_mask, batch_size, q_len, kv_len, sliding_window if window_binds else None, query.device)

    if softcap is None:
        out, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scale)
        return out

    repeats = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    if mask is None:
        mask = dense_causal_mask(None, batch_size, q_len, kv_len, None, query.device)
    if mask.dtype == torch.bool:  # 0 / finfo.min like eager's mask: fully masked (padding) rows stay finite
        mask = torch.where(mask, torch.zeros((), dtype=query.dtype, device=mask.device), torch.finfo(query.dtype).min)
    out = eager_attention(query, key, value, mask, scale=scale, dropout=dropout, softcap=softcap)
    return out.transpose(1, 2).contiguous()
