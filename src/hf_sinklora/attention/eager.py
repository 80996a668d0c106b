"""Masked softmax attention in plain matmuls: what SDPA cannot do (tanh soft-capping), and the
plain-torch stand-in for the flash-attn kernel in tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float,
    dropout: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``softmax(softcap(q k^T * scale) + mask) v``, the softmax in at least float32.

    Args:
        query: ``(..., Lq, D)``.
        key, value: ``(..., Lk, D)`` with the same leading dims (GQA heads already repeated).
        mask: broadcastable to ``(..., Lq, Lk)``: bool (True = visible) or additive float; None: all visible.
        softcap: Gemma2-style ``tanh`` logit soft-capping (None or 0: off).

    Returns:
        ``(..., Lq, D)``.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, value)
