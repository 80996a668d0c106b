"""H2O's scores from the softmax normaliser: a fused kernel attends, one more pass scores the keys.

Fused attention kernels (flash / memory-efficient SDPA on CUDA, the flash kernel torch ships for
the CPU) never expose the probabilities H2O scores with, but they return each query's
log-sum-exp ``lse_i``. Query ``i`` gives key ``j`` the probability ``exp(q_i . k_j * scale - lse_i)``,
so a key's score for the step is a column sum that needs one blocked pass of ``Q K^T``: no
``P V``, no row maximum, no normalisation, and never an ``n x n`` buffer.

This path serves multi-token steps (a prefill, a prefill chunk) on CUDA whose layout is the plain one:
the step's ``q`` tokens are the layer's last ``q`` slots in position order, every earlier slot is
an earlier real token, and no query is padding, no sliding window or soft-capping applies.
:func:`lse_path_applies` says when; :mod:`.scored_attention` keeps the general path for the rest.

On CUDA with Triton the column sums are one fused kernel (:mod:`.key_mass_triton`); elsewhere,
blocked matmuls over query chunks.
"""

from __future__ import annotations

import torch

# Devices whose multi-token steps take this path. Not the CPU: there the fused kernel does the two
# matmuls the general path does and the column sums redo one, so a one-shot 8k / 16k prefill of
# bench_h2o_prefill's model took 1.65x / 1.84x SDPA's time against 1.38x / 1.64x (same run, 2 cores).
LSE_PATH_DEVICE_TYPES = frozenset({"cuda"})
# Scores materialised per query chunk by the blocked column sums (elements), as in scored_attention.
BLOCKED_CHUNK_ELEMENTS = 2**22
CUDA_BLOCKED_CHUNK_ELEMENTS = 2**26
KEY_MASS_IMPLEMENTATIONS = ("auto", "triton", "blocked")


def lse_path_applies(
    device: torch.device,
    num_queries: int,
    all_slots_real: bool,
    queries_real: torch.Tensor | None,
    sliding_window: int | None,
    softcap: float | None,
) -> bool:
    """Whether a step can attend with a fused kernel and score from its log-sum-exp.

    Args:
        device: where the step runs (:data:`LSE_PATH_DEVICE_TYPES`).
        num_queries: ``q``, tokens in the step (decoding, ``q = 1``, keeps the general path: it
            reads the slots once and its slots are not in position order).
        all_slots_real: every slot of the layer holds a real token.
        queries_real: ``(B, q)`` bool padding mask of the step, or None.
        sliding_window, softcap: the layer's; either one keeps the general path.
    """
    if device.type not in LSE_PATH_DEVICE_TYPES or num_queries < 2:
        return False
    return plain_layout(all_slots_real, queries_real, sliding_window, softcap)


def plain_layout(
    all_slots_real: bool, queries_real: torch.Tensor | None, sliding_window: int | None, softcap: float | None
) -> bool:
    """A multi-token step that fused kernels can attend: no padding among the slots or the step's
    queries, no sliding window, no soft-capping (the step's tokens are the last slots, in order)."""
    if not all_slots_real or sliding_window is not None or softcap is not None:
        return False
    return queries_real is None or bool(queries_real.all())


def attention_with_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention that also returns each query's log-sum-exp.

    Args:
        query: ``(B, H, q, D)``.
        key, value: ``(B, H, k, D)`` (as many heads as ``query``).
        causal: query ``i`` sees keys ``<= i`` (only with ``q == k``).

    Returns:
        ``out (B, H, q, D)`` in the query's dtype and ``lse (B, H, q)`` float32 (natural log).
    """
    if causal and query.shape[2] != key.shape[2]:
        raise ValueError(f"causal attention_with_lse needs q == k, got {query.shape[2]} and {key.shape[2]}")
    ops = torch.ops.aten
    if query.is_cuda:
        if query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256 and query.shape[-1] % 8 == 0:
            result = ops._scaled_dot_product_flash_attention(query, key, value, 0.0, causal, False, scale=scale)
            return result[0], result[1].float()
        out, lse = ops._scaled_dot_product_efficient_attention(query, key, value, None, True, 0.0, causal, scale=scale)[:2]
        return out, lse[..., : query.shape[2]].float()  # the kernel pads the query axis of lse
    out, lse = ops._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, causal, scale=scale)
    return out, lse.to(torch.promote_types(lse.dtype, torch.float32))


def _expand_heads(tensor: torch.Tensor, group: int) -> torch.Tensor:
    """``(B, Hkv, k, D)`` -> ``(B, Hkv * group, k, D)``, each KV head repeated for its query heads."""
    if group == 1:
        return tensor
    batch, heads, length, dim = tensor.shape
    return tensor[:, :, None].expand(batch, heads, group, length, dim).reshape(batch, heads * group, length, dim)


def lse_scored_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    scale: float,
    implementation: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a step's ``q`` queries over a layer's slots, and what each slot received.

    The layout is the one :func:`lse_path_applies` vouches for: slots ``[0, past)`` are earlier
    tokens, every one visible to every query; slots ``[past, past + q)`` are the step's tokens in
    order (causal among themselves). With ``past > 0`` the two parts are attended separately and
    merged through their log-sum-exps, so every kernel call is a plain or a square causal one.

    Args:
        query: ``(B, Hq, q, D)``.
        keys, values: ``(B, Hkv, past + q, D)``; ``Hq`` a multiple of ``Hkv``.
        implementation: how the column sums run (see :func:`key_mass_from_lse`).

    Returns:
        ``out (B, q, Hq, D)`` and ``key_mass (B, Hkv, slots)`` float32: each slot's probability
        summed over the queries and averaged over the query heads sharing its KV head.
    """
    out, lse = fused_step_attention(query, keys, values, scale=scale)
    key_mass = key_mass_from_lse(query, keys, lse, scale=scale, implementation=implementation)
    return out, key_mass


def fused_step_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention of :func:`lse_scored_attention` (same layout), without any score.

    Returns:
        ``out (B, q, Hq, D)`` and ``lse (B, Hq, q)`` float32.
    """
    num_queries = query.shape[2]
    past = keys.shape[2] - num_queries
    group = query.shape[1] // keys.shape[1]
    keys_h, values_h = _expand_heads(keys, group), _expand_heads(values, group)
    out, lse = attention_with_lse(query, keys_h[:, :, past:], values_h[:, :, past:], scale=scale, causal=True)
    if past > 0:
        out_past, lse_past = attention_with_lse(query, keys_h[:, :, :past], values_h[:, :, :past], scale=scale, causal=False)
        merged = torch.logaddexp(lse, lse_past)
        dtype = torch.promote_types(query.dtype, torch.float32)
        out = out.to(dtype) * (lse - merged).exp()[..., None] + out_past.to(dtype) * (lse_past - merged).exp()[..., None]
        out, lse = out.to(query.dtype), merged
    return out.transpose(1, 2), lse


def window_key_mass(query: torch.Tensor, keys: torch.Tensor, *, scale: float, window: int) -> torch.Tensor:
    """What each slot receives from a step's last ``window`` queries (SnapKV's observation window).

    Same layout as :func:`key_mass_from_lse`; only ``window x slots`` scores per head are formed.

    Args:
        query: ``(B, Hq, q, D)``; keys: ``(B, Hkv, slots, D)``; ``window`` in ``[0, q]``.

    Returns:
        ``(B, Hkv, slots)`` float32, averaged over the query heads of each KV head.
    """
    batch, num_heads, num_queries, head_dim = query.shape
    num_kv_heads, num_slots = keys.shape[1], keys.shape[2]
    key_mass = torch.zeros(batch, num_kv_heads, num_slots, dtype=torch.float32, device=query.device)
    if window == 0:
        return key_mass
    group = num_heads // num_kv_heads
    observed = query[:, :, num_queries - window :].reshape(batch, num_kv_heads, group * window, head_dim)
    dtype = torch.promote_types(query.dtype, torch.float32)
    logits = torch.matmul(observed, keys.transpose(-1, -2)).to(dtype).mul_(scale)  # (B, Hkv, group * window, slots)
    first = num_slots - window  # slot of the window's first query
    index = torch.arange(num_slots, device=query.device)
    future = (index[None, :] > first + torch.arange(window, device=query.device)[:, None]).repeat(group, 1)
    probabilities = logits.masked_fill_(future, float("-inf")).softmax(dim=-1)
    return (probabilities.sum(dim=2) / group).float()


def key_mass_from_lse(
    query: torch.Tensor,
    keys: torch.Tensor,
    lse: torch.Tensor,
    *,
    scale: float,
    implementation: str = "auto",
    chunk_elements: int | None = None,
) -> torch.Tensor:
    """Each slot's attention probability summed over the step's queries, from their log-sum-exp.

    Query ``i`` (of ``q``) sees slot ``j`` iff ``j <= past + i`` with ``past = slots - q``.

    Args:
        query: ``(B, Hq, q, D)``.
        keys: ``(B, Hkv, slots, D)``.
        lse: ``(B, Hq, q)`` float32 log-sum-exp of each query's scaled logits over what it sees.
        implementation: ``"triton"`` (one fused kernel, CUDA; under ``TRITON_INTERPRET=1`` also the
            CPU), ``"blocked"`` (matmuls over query chunks, any device) or ``"auto"`` (Triton on
            CUDA when it imports, blocked otherwise).
        chunk_elements: bound on the scores the blocked path holds at once.

    Returns:
        ``(B, Hkv, slots)`` float32, averaged over the query heads of each KV head.
    """
    if implementation not in KEY_MASS_IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {KEY_MASS_IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        implementation = "triton" if query.is_cuda and _triton_available() else "blocked"
    if implementation == "triton":
        from .key_mass_triton import triton_key_mass

        return triton_key_mass(query, keys, lse, scale=scale)
    return blocked_key_mass(query, keys, lse, scale=scale, chunk_elements=chunk_elements)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def blocked_key_mass(
    query: torch.Tensor, keys: torch.Tensor, lse: torch.Tensor, *, scale: float, chunk_elements: int | None = None
) -> torch.Tensor:
    """:func:`key_mass_from_lse` with matmuls over query chunks (at most ``chunk_elements`` scores at once)."""
    batch, num_heads, num_queries, head_dim = query.shape
    num_kv_heads, num_slots = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    past = num_slots - num_queries
    if chunk_elements is None:
        chunk_elements = CUDA_BLOCKED_CHUNK_ELEMENTS if query.is_cuda else BLOCKED_CHUNK_ELEMENTS
    chunk = max(1, chunk_elements // max(1, batch * num_heads * num_slots))
    score_dtype = torch.promote_types(query.dtype, torch.float32)
    grouped_query = query.view(batch, num_kv_heads, group, num_queries, head_dim)
    grouped_lse = lse.to(score_dtype).view(batch, num_kv_heads, group, num_queries, 1)
    key_mass = torch.zeros(batch, num_kv_heads, num_slots, dtype=score_dtype, device=query.device)
    # one buffer for every chunk (chunks differ in width; fresh allocations fragment the CPU heap)
    buffer = query.new_empty(batch * num_heads * min(chunk, num_queries) * num_slots, dtype=score_dtype)
    step = min(chunk, num_queries)
    future = torch.ones(step, step, dtype=torch.bool, device=query.device).triu_(1)
    for start in range(0, num_queries, chunk):
        size = min(chunk, num_queries - start)
        width = past + start + size  # slots the chunk's last query sees
        q = grouped_query[:, :, :, start : start + size].reshape(batch, num_kv_heads, group * size, head_dim)
        logits = buffer[: batch * num_heads * size * width].view(batch, num_kv_heads, group * size, width)
        if score_dtype == query.dtype:
            torch.matmul(q, keys[:, :, :width].transpose(-1, -2), out=logits)
        else:
            logits.copy_(torch.matmul(q, keys[:, :, :width].transpose(-1, -2)))
        logits = logits.view(batch, num_kv_heads, group, size, width)
        logits.mul_(scale).sub_(grouped_lse[:, :, :, start : start + size]).exp_()
        logits[..., past + start :].masked_fill_(future[:size, :size], 0.0)  # the chunk's own future
        key_mass[..., :width] += logits.sum(dim=(2, 3))
    if group > 1:
        key_mass /= group
    return key_mass.float()

