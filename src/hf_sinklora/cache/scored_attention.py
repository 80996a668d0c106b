"""Causal attention over an :class:`H2OLayer`'s slots that also returns what each key received.

SDPA and flash kernels never expose the probabilities H2O scores with, so this is plain
matmul + softmax. Queries are processed in chunks, so a long prefill holds at most
``chunk x slots`` scores per head, never ``n x n``. Slots are not in position order (a
decode step writes into whichever slot was freed), so visibility comes from positions:
key ``j`` is visible to query ``i`` iff ``pos(j) <= pos(i)``, the slot holds a real token
and, for sliding-window layers, ``pos(i) - pos(j) < window``.
"""

from __future__ import annotations

import torch

from .h2o_layer import H2OLayer
from .lse_scores import fused_step_attention, lse_path_applies, lse_scored_attention, plain_layout, window_key_mass

# Scores materialised per query chunk (elements): 2**22 float32 = 16 MiB on the CPU. On CUDA 2**26
# (256 MiB): every chunk costs a few host syncs and a dozen kernel launches, and at 2**22 a 16k-token
# prefill of 32 heads ran 8-query chunks, 22x slower than SDPA on an H100.
SCORE_CHUNK_ELEMENTS = 2**22
CUDA_SCORE_CHUNK_ELEMENTS = 2**26


def scored_attention(
    query: torch.Tensor,
    layer: H2OLayer,
    *,
    scale: float,
    queries_real: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    chunk_elements: int | None = None,
    scored_from: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the step's queries over every slot of ``layer``.

    Args:
        query: ``(B, Hq, q, D)``, the last ``q`` tokens the layer has seen; ``Hq`` a multiple of ``Hkv``.
        layer: holds ``keys/values (B, Hkv, slots, D)``, ``slot_positions`` and which slots are real.
        scale: softmax scale.
        queries_real: ``(B, q)`` bool, False for padding queries, which see only themselves
            (their output is unused and they give no score); None when all are real.
        sliding_window: keys ``window`` or more positions back are hidden.
        softcap: Gemma2-style ``tanh`` logit soft-capping.
        chunk_elements: bound on the scores held at once (default :data:`SCORE_CHUNK_ELEMENTS`,
            :data:`CUDA_SCORE_CHUNK_ELEMENTS` on CUDA).
        scored_from: queries before this index attend but give no score (an observation window).

    Returns:
        ``out (B, q, Hq, D)`` and ``key_mass (B, Hkv, slots)`` float32: each slot's probability
        summed over the queries and averaged over the query heads sharing its KV head.
    """
    batch, num_heads, num_queries, head_dim = query.shape
    keys, values = layer.keys, layer.values
    num_kv_heads, num_slots = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    key_pos = layer.slot_positions[:, :, None, :]  # (B, Hkv, 1, slots)
    real = layer.attendable()[:, :, None, :]
    all_real = bool(real.all())
    query_pos = layer.query_positions(num_queries)
    if queries_real is not None:
        queries_real = queries_real.to(device=query.device, dtype=torch.bool)[:, None, :, None]  # (B, 1, q, 1)
    grouped = query.view(batch, num_kv_heads, group, num_queries, head_dim)
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    slot_index = torch.arange(num_slots, device=query.device)

    if chunk_elements is None:
        chunk_elements = CUDA_SCORE_CHUNK_ELEMENTS if query.is_cuda else SCORE_CHUNK_ELEMENTS
    chunk = max(1, chunk_elements // max(1, batch * num_heads * num_slots))
    key_mass = torch.zeros(batch, num_kv_heads, num_slots, dtype=softmax_dtype, device=query.device)
    out = query.new_empty(batch, num_kv_heads, group, num_queries, head_dim)
    # one score buffer for every chunk: chunks differ in width (slots past the chunk's last query are
    # skipped), and scores allocated afresh in growing sizes fragment the CPU heap (a one-shot 8k
    # prefill held 4x its live memory); matmul writes into it and the softmax runs in place
    scores = query.new_empty(batch * num_heads * min(chunk, num_queries) * num_slots, dtype=softmax_dtype)
    for start in range(0, num_queries, chunk):
        pos = query_pos[start : start + chunk, None]  # (c, 1)
        size = pos.shape[0]
        # slots past the last one any query of the chunk can see are skipped: in a multi-token step
        # the slots are in position order, so a causal prefill does about half the work (a decode
        # step's single query is the newest token: it sees every slot)
        width = num_slots
        if num_queries > 1:
            width = int(torch.where(key_pos[:, :, 0] <= pos[-1, 0], slot_index, -1).max()) + 1
        first = 0  # columns before `first` are seen by every query of the chunk: no mask there
        if num_queries == 1 and queries_real is None and sliding_window is None:
            hidden = None if all_real else ~real  # decoding: every kept token is in the past, the query itself too
        else:
            if queries_real is None and sliding_window is None and all_real:
                first = int(torch.where(key_pos[:, :, 0] > pos[0, 0], slot_index, num_slots).min().clamp(max=width))
            kpos = key_pos[..., first:width]
            hidden = kpos > pos  # (B, Hkv, c, width - first): the future
            if sliding_window is not None:
                hidden = hidden | (pos - kpos >= sliding_window)
            if not all_real:
                hidden = hidden | ~real[..., :width]
            if queries_real is not None:
                hidden = (hidden | ~queries_real[:, :, start : start + size]) & (kpos != pos)  # a pad query sees itself
        q = grouped[:, :, :, start : start + size].reshape(batch, num_kv_heads, group * size, head_dim)
        logits = scores[: batch * num_heads * size * width].view(batch, num_kv_heads, group * size, width)
        if softmax_dtype == query.dtype:
            torch.matmul(q * scale, keys[:, :, :width].transpose(-1, -2), out=logits)
        else:
            logits.copy_(torch.matmul(q * scale, keys[:, :, :width].transpose(-1, -2)))
        logits = logits.view(batch, num_kv_heads, group, size, width)
        if softcap is not None:
            logits.div_(softcap).tanh_().mul_(softcap)
        if hidden is not None:
            logits[..., first:].masked_fill_(hidden[:, :, None], float("-inf"))
        # softmax in place (every query sees at least itself, so no row is all -inf), left unnormalised:
        # each row's 1 / sum scales its output row and weighs it in a matrix-vector product for the key
        # mass, two passes over the scores fewer than dividing them and summing the probabilities
        logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
        weights = logits.view(batch, num_kv_heads, group * size, width)
        inverse_sums = weights.sum(dim=-1, keepdim=True).reciprocal_()  # (B, Hkv, group * size, 1)
        if start + size > scored_from:
            counted = inverse_sums
            if start < scored_from:  # rows of queries before the window weigh nothing
                observed = torch.arange(start, start + size, device=query.device) >= scored_from
                counted = inverse_sums * observed.repeat(group)[:, None]
            key_mass[..., :width] += torch.matmul(counted.transpose(-1, -2), weights).squeeze(-2)
        chunk_out = torch.matmul(weights.to(values.dtype), values[:, :, :width]).mul_(inverse_sums)
        out[:, :, :, start : start + size] = chunk_out.view(batch, num_kv_heads, group, size, head_dim)
    if group > 1:
        key_mass = key_mass / group
    return out.reshape(batch, num_heads, num_queries, head_dim).transpose(1, 2), key_mass.float()


def h2o_layer_of(key: torch.Tensor) -> H2OLayer | None:
    """The :class:`H2OLayer` whose ``update`` returned ``key``, if any (no global state: the tag
    travels on the tensor the model hands to its attention function)."""
    return getattr(key, "h2o_layer", None)


def h2o_attention(
    query: torch.Tensor,
    layer: H2OLayer,
    attention_mask: torch.Tensor | None,
    *,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One attention step under H2O: marks padding, attends over the kept + new keys, scores, evicts.

    Args:
        query: ``(B, Hq, q, D)``.
        layer: the layer ``update`` just stored the step's keys in.
        attention_mask: the 2-D ``(B, kv)`` padding mask (its last ``q`` columns are the step's
            tokens), or None when every token is real.

    Returns:
        ``(B, q, Hq, D)``.
    """
    num_new = query.shape[2]
    new_tokens_real = None
    if attention_mask is not None:
        if attention_mask.ndim != 2:
            raise ValueError(
                f"H2OCache needs the 2-D (batch, seq_len) padding mask; got a {attention_mask.ndim}-D mask"
            )
        new_tokens_real = attention_mask[:, -num_new:]
    layer.begin_step(num_new, new_tokens_real)
    window = layer.policy.observation_window(num_new)
    plain = num_new > 1 and plain_layout(layer.holds_only_real_tokens(), new_tokens_real, sliding_window, softcap)
    if plain and window < num_new:
        # a fused kernel attends; only the observation window's queries (if any) are scored
        out, _ = fused_step_attention(query, layer.keys, layer.values, scale=scale)
        key_mass = window_key_mass(query, layer.keys, scale=scale, window=window)
    elif plain and lse_path_applies(query.device, num_new, True, None, None, None):
        # every query scores: a fused kernel attends, its log-sum-exp gives the scores
        out, key_mass = lse_scored_attention(query, layer.keys, layer.values, scale=scale)
    else:
        out, key_mass = scored_attention(
            query, layer, scale=scale, queries_real=new_tokens_real, sliding_window=sliding_window, softcap=softcap,
            scored_from=num_new - window,
        )
    layer.end_step(layer.policy.step_mass(key_mass, num_new), sliding_window)
    return out
