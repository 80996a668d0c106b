"""Grouped ``scaled_dot_product_attention``: SF-Attn without an ``n x n`` mask or score matrix.

Tokens are gathered into ``(groups, heads, sinks + group, dim)`` blocks, so memory is
``O(n * (G + s))``. The common case needs no mask at all: a group whose sink keys are all
present is laid out as ``[s sinks, G members]`` for keys *and* queries, and a top-left
causal SDPA then gives member ``a`` every sink plus members ``<= a`` (the sink query rows
are computed and dropped). Only ragged cases (sliding windows that bind, soft-capping,
holes in a padding mask, groups shorter than the sink count) build a small per-group mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .eager import eager_attention
from .groups import GroupLayout


def _member_slots(layout: GroupLayout, groups: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, width)`` flat token index and validity of the members of ``groups``.

    Slots past a group's length point at its first token; they sit after every real
    member, so causal masking already hides them from real queries.
    """
    offsets = torch.arange(width, device=groups.device)
    start = layout.token_start[groups, None]
    valid = offsets < layout.length[groups, None]
    return torch.where(valid, start + offsets, start), valid


def _sink_slots(layout: GroupLayout, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, s)`` flat token index and validity of the sink keys prepended to ``groups``."""
    offsets = torch.arange(layout.num_sink_tokens, device=groups.device)
    start = layout.segment_token_start[groups, None]
    valid = offsets < layout.num_sinks[groups, None]
    return torch.where(valid, start + offsets, start), valid


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(T, H, D)`` gathered by an ``(N, W)`` index into ``(N, H, W, D)``."""
    return flat[index].transpose(1, 2)


def _repeat_heads(tensor: torch.Tensor, repeats: int) -> torch.Tensor:
    return tensor if repeats == 1 else tensor.repeat_interleave(repeats, dim=1)


def needs_mask(layout: GroupLayout, sliding_window: int | None, softcap: float | None, has_holes: bool) -> bool:
    """True when the mask-free causal layout cannot express the rule exactly."""
    partial_sinks = bool(((layout.num_sinks > 0) & (layout.num_sinks < layout.num_sink_tokens)).any())
    window_binds = sliding_window is not None and layout.max_distance >= sliding_window
    return partial_sinks or window_binds or softcap is not None or has_holes


def grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: GroupLayout,
    *,
    scale: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """SF-Attn for one head class over a flattened batch.

    Args:
        query: ``(T, Hq, D)`` with ``T = batch * seq_len`` (token-major).
        key, value: ``(T, Hkv, D)``; ``Hq`` a multiple of ``Hkv`` (GQA).
        layout: the groups of this head class.
        scale: softmax scale.
        dropout: attention dropout probability (training only).
        sliding_window: keys more than ``sliding_window - 1`` positions back are hidden.
        softcap: Gemma2-style ``tanh`` logit soft-capping.
        key_valid: ``(T,)`` bool, False for masked holes inside segments.

    Returns:
        ``(T, Hq, D)``; tokens outside every segment (padding) get zeros.
    """
    num_tokens, num_heads, head_dim = query.shape
    repeats = num_heads // key.shape[1]
    if needs_mask(layout, sliding_window, softcap, key_valid is not None):
        blocks, slots = _masked_blocks(query, key, value, layout, scale, dropout, sliding_window, softcap, key_valid)
    else:
        blocks, slots = _causal_blocks(query, key, value, layout, scale, dropout, repeats)

    # Every member token appears in exactly one block row; padding reads the zero row.
    rows = torch.cat([b.transpose(1, 2).reshape(-1, num_heads, head_dim) for b in blocks] + [query.new_zeros(1, num_heads, head_dim)])
    token_slot = torch.full((num_tokens,), rows.shape[0] - 1, dtype=torch.long, device=query.device)
    for member_index, member_valid, slot in slots:
        token_slot[member_index[member_valid]] = slot[member_valid]
    return rows[token_slot]


def _causal_blocks(query, key, value, layout, scale, dropout, repeats):
    """Mask-free path: groups without sinks, and groups with all ``s`` sinks, each one causal SDPA."""
    blocks, slots, offset = [], [], 0
    for with_sinks in (False, True):
        groups = (layout.num_sinks > 0).nonzero().squeeze(1) if with_sinks else (layout.num_sinks == 0).nonzero().squeeze(1)
        if groups.numel() == 0:
            continue
        width = int(layout.length[groups].max())
        member_index, member_valid = _member_slots(layout, groups, width)
        index = member_index
        if with_sinks:
            index = torch.cat([_sink_slots(layout, groups)[0], member_index], dim=1)
        block_width = index.shape[1]
        out = F.scaled_dot_product_attention(
            _gather(query, index),
            _gather(key, index),
            _gather(value, index),
            dropout_p=dropout,
            is_causal=True,
            scale=scale,
            enable_gqa=repeats > 1,
        )
        blocks.append(out)
        prefix = block_width - width
        slot = offset + torch.arange(len(groups), device=index.device)[:, None] * block_width + prefix + torch.arange(width, device=index.device)
        slots.append((member_index, member_valid, slot))
        offset += len(groups) * block_width
    return blocks, slots


def _masked_blocks(query, key, value, layout, scale, dropout, sliding_window, softcap, key_valid):
    """General path: one block of ``(N, Hq, G, s + G)`` with an explicit per-group mask."""
    groups = torch.arange(len(layout.length), device=query.device)
    width = layout.max_length
    member_index, member_valid = _member_slots(layout, groups, width)
    sink_index, sink_valid = _sink_slots(layout, groups)
    key_index = torch.cat([sink_index, member_index], dim=1)

    member_pos = layout.position_start[:, None] + torch.arange(width, device=query.device)
    sink_pos = torch.arange(layout.num_sink_tokens, device=query.device).expand(len(groups), -1)
    key_pos = torch.cat([sink_pos, member_pos], dim=1)
    slot_valid = torch.cat([sink_valid, member_valid], dim=1)
    if key_valid is not None:
        slot_valid = slot_valid & key_valid[key_index]

    distance = member_pos[:, :, None] - key_pos[:, None, :]  # (N, G, s + G)
    allowed = slot_valid[:, None, :] & (distance >= 0)
    if sliding_window is not None:
        allowed = allowed & (distance < sliding_window)
    # A query always sees itself, so no row is empty (matters only for padding/hole rows).
    itself = torch.zeros_like(allowed)
    itself[:, :, layout.num_sink_tokens :] = torch.eye(width, dtype=torch.bool, device=query.device)
    mask = (allowed | itself)[:, None]

    q = _gather(query, member_index)
    k, v = _gather(key, key_index), _gather(value, key_index)
    repeats = query.shape[1] // key.shape[1]
    if softcap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=repeats > 1)
    else:
        k, v = _repeat_heads(k, repeats), _repeat_heads(v, repeats)
        out = eager_attention(q, k, v, mask, scale=scale, dropout=dropout, softcap=softcap)
    slot = groups[:, None] * width + torch.arange(width, device=query.device)
    return [out], [(member_index, member_valid, slot)]


def uniform_window_free(seq_len: int, group_size: int, shift: int, num_sink_tokens: int, sliding_window: int | None) -> bool:
    """Whether :func:`uniform_grouped_attention` applies: every later group has all ``s`` sinks
    and a sliding window (if any) covers every allowed pair."""
    if group_size - shift < min(num_sink_tokens, seq_len):
        return False
    has_later_groups = seq_len > group_size - shift
    max_distance = seq_len - 1 if (has_later_groups and num_sink_tokens) else min(seq_len, group_size) - 1
    return sliding_window is None or max_distance < sliding_window


def uniform_grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    shift: int,
    num_sink_tokens: int,
    *,
    scale: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """SF-Attn for one head class when every row is one whole segment (no padding, no packing).

    The sequence splits into the first group ``[0, G - shift)`` (plain causal SDPA), ``m``
    full groups and a shorter tail group. Full groups become ``(B * m, H, s + G, D)``
    blocks laid out ``[sinks, members]`` under top-left causal SDPA, so nothing is
    gathered and each input is copied once. Requires :func:`uniform_window_free`.

    Args:
        query: ``(B, Hq, n, D)``; key/value ``(B, Hkv, n, D)``.

    Returns:
        ``(B, n, Hq, D)`` (token-major, as attention functions return).
    """
    batch, num_heads, seq_len, _ = query.shape
    sdpa_kwargs = dict(dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=num_heads != key.shape[1])
    first = min(seq_len, group_size - shift)
    num_full = (seq_len - first) // group_size
    tail = seq_len - first - num_full * group_size
    sinks = num_sink_tokens

    def pieces(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(B, h, n, d)`` -> first group, full-group blocks ``(B * m, h, s + G, d)``, tail block."""
        heads, dim = x.shape[1], x.shape[-1]
        # split, not slicing: backward then assembles the gradient with one concatenation
        first_group, body, tail_group = x.split([first, num_full * group_size, tail], dim=2)
        sink_part = first_group[:, :, :sinks]
        blocks = None
        if num_full:
            blocks = body.view(batch, heads, num_full, group_size, dim).transpose(1, 2)
            if sinks:
                blocks = torch.cat([sink_part[:, None].expand(batch, num_full, heads, sinks, dim), blocks], dim=3)
            blocks = blocks.reshape(batch * num_full, heads, sinks + group_size, dim)
        tail_block = torch.cat([sink_part, tail_group], dim=2) if tail else None
        return first_group, blocks, tail_block

    (q0, q_blocks, q_tail), (k0, k_blocks, k_tail), (v0, v_blocks, v_tail) = map(pieces, (query, key, value))
    parts = [F.scaled_dot_product_attention(q0, k0, v0, **sdpa_kwargs).transpose(1, 2)]
    if num_full:
        out = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, **sdpa_kwargs)
        out = out.view(batch, num_full, num_heads, sinks + group_size, -1)[:, :, :, sinks:].transpose(2, 3)
        parts.extend(out.unbind(1))  # num_full views of (B, G, H, D): one copy in the final cat
    if tail:
        out = F.scaled_dot_product_attention(q_tail, k_tail, v_tail, **sdpa_kwargs)
        parts.append(out[:, :, sinks:].transpose(1, 2))
    return torch.cat(parts, dim=1)
