"""Independent dense reference of the SF-Attn rule (docs/sf_attention.md, "The rule"), for tests only.

Builds the full boolean ``(B, Hq, n, n)`` mask straight from the rule, from a plain
per-token description (segment id, position inside the segment), then runs eager
softmax attention. Deliberately naive: it shares no code with the package.
"""

from __future__ import annotations

import math

import torch


def describe_tokens(seq_len: int, rows: list[list[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token segment id and position from ``rows[b] = [(start, length), ...]``.

    Returns ``segment_id (B, n)`` (-1 outside every segment) and ``position (B, n)``.
    """
    segment_id = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    position = torch.zeros((len(rows), seq_len), dtype=torch.long)
    next_id = 0
    for b, segments in enumerate(rows):
        for start, length in segments:
            segment_id[b, start : start + length] = next_id
            position[b, start : start + length] = torch.arange(length)
            next_id += 1
    return segment_id, position


def sf_reference_mask(
    segment_id: torch.Tensor,
    position: torch.Tensor,
    num_heads: int,
    *,
    group_size_ratio: float = 0.25,
    group_size: int | None = None,
    num_sink_tokens: int = 4,
    shifted_head_ratio: float = 0.5,
    sliding_window: int | None = None,
    key_valid: torch.Tensor | None = None,
    **_backend_settings,
) -> torch.Tensor:
    """``(B, Hq, n, n)`` bool: may query ``i`` of head ``h`` attend to key ``j``.

    Settings that do not change the rule (``eval_mode``, ``backend``) are accepted and ignored.
    """
    batch, n = segment_id.shape
    num_shifted = math.ceil(num_heads * shifted_head_ratio - 1e-9)
    seg_len = {sid: int((segment_id == sid).sum()) for sid in segment_id.unique().tolist() if sid >= 0}
    mask = torch.zeros(batch, num_heads, n, n, dtype=torch.bool)
    for b in range(batch):
        for i in range(n):
            si = int(segment_id[b, i])
            if si < 0:
                continue
            G = group_size if group_size is not None else max(1, math.ceil(seg_len[si] * group_size_ratio - 1e-9))
            for j in range(i + 1):
                if int(segment_id[b, j]) != si:
                    continue
                pi, pj = int(position[b, i]), int(position[b, j])
                if pj > pi:
                    continue
                if sliding_window is not None and pi - pj >= sliding_window:
                    continue
                if key_valid is not None and not bool(key_valid[b, j]):
                    continue
                for h in range(num_heads):
                    shift = G // 2 if h >= num_heads - num_shifted else 0
                    if pj < num_sink_tokens or (pi + shift) // G == (pj + shift) // G:
                        mask[b, h, i, j] = True
    return mask


def dense_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float | None = None,
    softcap: float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Eager attention under a ``(B, Hq, n, n)`` mask; ``(B, n, Hq, D)``, zeros on empty rows.

    ``upcast=True`` computes in float64; ``upcast=False`` as a low-precision kernel would: matrix
    products in the inputs' dtype, softmax in float32 (the rounding a bf16/fp16 kernel cannot avoid)."""
    repeats = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(repeats, dim=1)
    value = value.repeat_interleave(repeats, dim=1)
    compute = torch.float64 if upcast else query.dtype
    softmax_dtype = torch.float64 if upcast else torch.float32
    scores = (query.to(compute) @ key.to(compute).transpose(-1, -2)).to(softmax_dtype) * (scale or query.shape[-1] ** -0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return (probs.to(compute) @ value.to(compute)).to(query.dtype).transpose(1, 2)
