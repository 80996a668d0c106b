"""The column sums of :func:`~hf_sinklora.cache.lse_scores.key_mass_from_lse` as one Triton kernel.

Each program owns a block of ``BLOCK_N`` slots of one (row, KV head): it loads their keys once,
walks the query blocks that can see them (for every query head of the KV head), rebuilds each
``BLOCK_M x BLOCK_N`` tile of probabilities ``exp(q . k * scale - lse)`` in registers and adds its
column sums. Only ``slots`` floats per (row, KV head) ever reach memory. Under ``TRITON_INTERPRET=1``
(set before this module is imported) the same kernel runs on CPU tensors, which is how the tests
check it without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2_E = math.log2(math.e)


@triton.jit
def _key_mass_kernel(
    query_ptr, key_ptr, lse_ptr, out_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_lm,
    stride_ob, stride_oh, stride_on,
    num_kv_heads, group, num_queries, num_slots, past, scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    FULL_PRECISION: tl.constexpr,
):
    block_n = tl.program_id(0)
    row_head = tl.program_id(1)
    row = (row_head // num_kv_heads).to(tl.int64)  # offsets past 2**31 elements stay exact
    kv_head = row_head % num_kv_heads
    slots = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    key = tl.load(
        key_ptr + row * stride_kb + kv_head * stride_kh + slots[:, None] * stride_kn + dims[None, :] * stride_kd,
        mask=(slots[:, None] < num_slots) & (dims[None, :] < HEAD_DIM), other=0.0,
    )
    mass = tl.zeros([BLOCK_N], dtype=tl.float32)
    # query i sees slot j iff j <= past + i: the first query block that sees any slot of this block
    first_query = tl.maximum(block_n * BLOCK_N - past, 0)
    start = (first_query // BLOCK_M) * BLOCK_M
    for member in range(group):
        head = kv_head * group + member
        q_base = query_ptr + row * stride_qb + head * stride_qh
        lse_base = lse_ptr + row * stride_lb + head * stride_lh
        for block_start in range(start, num_queries, BLOCK_M):
            queries = block_start + tl.arange(0, BLOCK_M)
            inside = queries < num_queries
            query = tl.load(q_base + queries[:, None] * stride_qm + dims[None, :] * stride_qd,
                            mask=inside[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
            lse = tl.load(lse_base + queries * stride_lm, mask=inside, other=0.0)
            if FULL_PRECISION:  # float32 inputs: no TF32 rounding, as the float32 fused kernels
                logits = tl.dot(query, tl.trans(key), input_precision="ieee")
            else:
                logits = tl.dot(query, tl.trans(key))  # (BLOCK_M, BLOCK_N), float32 accumulation
            probability = tl.exp2(logits * scale_log2 - lse[:, None] * 1.4426950408889634)
            visible = inside[:, None] & (slots[None, :] <= past + queries[:, None])
            mass += tl.sum(tl.where(visible, probability, 0.0), axis=0)
    tl.store(out_ptr + row * stride_ob + kv_head * stride_oh + slots * stride_on, mass / group,
             mask=slots < num_slots)


def _blocks(head_dim: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)``: tiles that keep a key block and a query block in registers."""
    if head_dim <= 64:
        return 64, 128, 4
    return 64, 64, 4


def triton_key_mass(query: torch.Tensor, keys: torch.Tensor, lse: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Each slot's probability summed over the queries (query ``i`` sees slots ``<= slots - q + i``).

    Args:
        query: ``(B, Hq, q, D)``; ``keys``: ``(B, Hkv, slots, D)``; ``lse``: ``(B, Hq, q)`` float32.

    Returns:
        ``(B, Hkv, slots)`` float32, averaged over the query heads of each KV head.
    """
    batch, num_heads, num_queries, head_dim = query.shape
    num_kv_heads, num_slots = keys.shape[1], keys.shape[2]
    keys = keys.to(query.dtype)
    lse = lse.float()
    out = torch.empty(batch, num_kv_heads, num_slots, dtype=torch.float32, device=query.device)
    block_m, block_n, num_warps = _blocks(head_dim)
    grid = (triton.cdiv(num_slots, block_n), batch * num_kv_heads)
    _key_mass_kernel[grid](
        query, keys, lse, out,
        *query.stride(), *keys.stride(), *lse.stride(), *out.stride(),
        num_kv_heads, num_heads // num_kv_heads, num_queries, num_slots, num_slots - num_queries, scale * LOG2_E,
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), BLOCK_M=block_m, BLOCK_N=block_n,
        FULL_PRECISION=query.dtype == torch.float32, num_warps=num_warps,
    )
    return out
