"""flash-attn varlen backend: every SF-Attn group becomes one variable-length "sequence".

Group ``g`` contributes its members as queries and ``[its sinks, its members]`` as keys.
flash-attn's causal mask is aligned bottom-right when keys outnumber queries, so member
``a`` sees all prepended sinks and members ``<= a`` -- exactly the rule. The layout
(:func:`build_varlen_layout`) is plain torch so it is tested on CPU through
:func:`varlen_reference_attention`, which computes what ``flash_attn_varlen_func`` does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .eager import eager_attention
from .groups import GroupLayout


@dataclass
class VarlenLayout:
    """Inputs of ``flash_attn_varlen_func`` for one head class.

    Attributes:
        query_index: ``(Tq,)`` flat token index of each query, group by group.
        key_index: ``(Tk,)`` flat token index of each key (sinks then members, group by group).
        cu_seqlens_q, cu_seqlens_k: ``(Ng + 1,)`` int32 cumulative lengths.
        max_seqlen_q, max_seqlen_k: longest group, in queries and in keys.
    """

    query_index: torch.Tensor
    key_index: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)


def build_varlen_layout(layout: GroupLayout) -> VarlenLayout:
    """Turns a :class:`GroupLayout` into flash-attn varlen indices and ``cu_seqlens``."""
    device = layout.length.device
    group_ids = torch.arange(len(layout.length), device=device)
    key_lengths = layout.num_sinks + layout.length
    cu_q, cu_k = _cumulative(layout.length), _cumulative(key_lengths)

    query_group = torch.repeat_interleave(group_ids, layout.length)
    query_offset = torch.arange(len(query_group), device=device) - cu_q[query_group]
    query_index = layout.token_start[query_group] + query_offset

    key_group = torch.repeat_interleave(group_ids, key_lengths)
    key_offset = torch.arange(len(key_group), device=device) - cu_k[key_group]
    sinks = layout.num_sinks[key_group]
    key_index = torch.where(
        key_offset < sinks,
        layout.segment_token_start[key_group] + key_offset,
        layout.token_start[key_group] + key_offset - sinks,
    )
    return VarlenLayout(
        query_index=query_index,
        key_index=key_index,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=int(layout.length.max()),
        max_seqlen_k=int(key_lengths.max()),
    )


@functools.cache
def flash_attn_available() -> bool:
    """Whether ``flash_attn`` imports (it needs CUDA; never true on CPU-only machines)."""
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return False
    return True


def can_use_flash(query: torch.Tensor) -> bool:
    """flash-attn runs on CUDA fp16/bf16 tensors only."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()


def flash_grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: GroupLayout,
    *,
    scale: float,
    dropout: float = 0.0,
    softcap: float | None = None,
    kernel=None,
) -> torch.Tensor:
    """SF-Attn for one head class with ``flash_attn_varlen_func`` (or another kernel of its signature).

    Shapes as :func:`~hf_sinklora.attention.grouped_sdpa.grouped_attention`: query
    ``(T, Hq, D)``, key/value ``(T, Hkv, D)``, returns ``(T, Hq, D)`` with zeros for padding.
    """
    if kernel is None:
        from flash_attn import flash_attn_varlen_func as kernel
    varlen = build_varlen_layout(layout)
    out = kernel(
        query[varlen.query_index],
        key[varlen.key_index],
        value[varlen.key_index],
        cu_seqlens_q=varlen.cu_seqlens_q,
        cu_seqlens_k=varlen.cu_seqlens_k,
        max_seqlen_q=varlen.max_seqlen_q,
        max_seqlen_k=varlen.max_seqlen_k,
        dropout_p=dropout,
        softmax_scale=scale,
        causal=True,
        softcap=0.0 if softcap is None else softcap,
    )
    return query.new_zeros(query.shape).index_copy(0, varlen.query_index, out)


def varlen_reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = True,
    softcap: float = 0.0,
) -> torch.Tensor:
    """What ``flash_attn_varlen_func`` computes, one sequence at a time in plain torch (for tests).

    q: ``(Tq, Hq, D)``, k/v: ``(Tk, Hkv, D)``; causal masking is bottom-right aligned.
    """
    if dropout_p:
        raise ValueError("varlen_reference_attention is deterministic: dropout_p must be 0")
    outputs = []
    for i in range(len(cu_seqlens_q) - 1):
        qs = q[cu_seqlens_q[i] : cu_seqlens_q[i + 1]].transpose(0, 1)
        ks = k[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].transpose(0, 1)
        vs = v[cu_seqlens_k[i] : cu_seqlens_k[i + 1]].transpose(0, 1)
        repeats = qs.shape[0] // ks.shape[0]
        ks, vs = ks.repeat_interleave(repeats, 0), vs.repeat_interleave(repeats, 0)
        visible = None
        if causal:
            lq, lk = qs.shape[1], ks.shape[1]
            visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        out = eager_attention(qs, ks, vs, visible, scale=softmax_scale or qs.shape[-1] ** -0.5, softcap=softcap)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)
