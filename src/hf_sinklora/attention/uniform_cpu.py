"""SF-Attn for whole rows on the CPU: torch's flash kernel on views of each group, output in place.

When every row is one segment (no padding, no packing), each group of a head class is a
slice ``[start, end)`` of the sequence, so its queries are a *view* of the input and causal
flash attention (``aten._scaled_dot_product_flash_attention_for_cpu``) runs on it without a
copy. A group after the first also sees the ``s`` sink keys: its keys and values become the
small copies ``[s sinks, members]`` and its queries the view that starts ``s`` rows early, so
the kernel's top-left causal mask gives each member every sink and the members before it (the
borrowed rows are dropped; see :class:`_Piece`). Outputs and log-sum-exps are written straight
into one buffer each, which backward reads again with the kernel's backward per group: nothing
the size of q, k or v is copied or saved, so the extra memory is that of full causal SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class HeadRun:
    """Query heads ``[q_start, q_end)`` with one group layout that one kernel call can take:
    query head ``q_start + j`` reads key head ``kv_start + j // repeats``.

    Attributes:
        q_start, q_end: the query heads.
        kv_start, kv_end: the key/value heads they read.
        shift: group shift of these heads (``G // 2`` for shifted heads, else 0).
    """

    q_start: int
    q_end: int
    kv_start: int
    kv_end: int
    shift: int


def head_runs(classes: list[tuple[int, int, bool]], repeats: int, group_size: int) -> list[HeadRun]:
    """Cuts head classes ``(first, end, shifted)`` into runs whose GQA mapping a kernel call can
    express: where a class boundary falls inside a GQA group, that group's heads form a run
    reading one key head."""
    runs = []
    for first, end, shifted in classes:
        shift = group_size // 2 if shifted else 0
        aligned_start, aligned_end = -(-first // repeats) * repeats, end // repeats * repeats
        if aligned_start > aligned_end:  # the class lies inside one GQA group
            cuts = [first, end]
        else:
            cuts = sorted({first, aligned_start, aligned_end, end})
        for start, stop in zip(cuts, cuts[1:]):
            runs.append(HeadRun(start, stop, start // repeats, (stop - 1) // repeats + 1, shift))
    return runs


def group_bounds(seq_len: int, group_size: int, shift: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every group: ``[0, G - shift)``, then steps of ``G``; the last may be shorter."""
    first = min(seq_len, group_size - shift)
    return [(0, first)] + [(start, min(start + group_size, seq_len)) for start in range(first, seq_len, group_size)]


def flash_cpu_available(query: torch.Tensor, dropout: float) -> bool:
    """Whether this path applies: CPU tensors of a dtype the kernel takes, no dropout."""
    return (
        query.device.type == "cpu"
        and query.dtype in _FLASH_DTYPES
        and dropout == 0.0
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )


class _Piece:
    """One group of one head run as the kernel sees it.

    A group ``[start, end)`` after the first one also sees the ``s`` sinks. Its keys and values
    become ``[s sinks, members]`` (small copies: GQA keeps them ``Hq / Hkv`` times smaller than
    the queries), and its queries the view ``[start - s, end)``: under the kernel's top-left
    causal mask member ``a`` then sees every sink and members ``<= a``. The ``s`` leading query
    rows belong to the previous group; their outputs are dropped, and backward gives them a zero
    gradient and an infinite log-sum-exp, so they add nothing.
    """

    def __init__(self, run: HeadRun, start: int, end: int, num_sink_tokens: int, batch_size: int):
        self.heads = slice(run.q_start, run.q_end)
        self.kv_heads = slice(run.kv_start, run.kv_end)
        self.start, self.end = start, end
        self.lead = num_sink_tokens if start else 0
        # torch's CPU flash backward splits GQA work by (row, key head) and runs many times slower
        # (30x measured, torch 2.13) when that leaves a thread without work; one key head is
        # then expanded (a stride-0 view) to every query head instead.
        self.expand_kv = run.kv_end - run.kv_start == 1 and batch_size < torch.get_num_threads()

    def inputs(self, query, key, value):
        """Query view ``(B, h, lead + L, D)``; keys and values ``(B, hk, lead + L, D)`` (``hk = h``
        when ``expand_kv``)."""
        q = query[:, self.heads, self.start - self.lead : self.end]
        k, v = (x[:, self.kv_heads, self.start : self.end] for x in (key, value))
        if self.lead:
            k, v = (torch.cat([x[:, self.kv_heads, : self.lead], part], dim=2) for x, part in ((key, k), (value, v)))
        if self.expand_kv:
            k, v = (x.expand(-1, q.shape[1], -1, -1) for x in (k, v))
        return q, k, v

    def padded(self, rows: torch.Tensor, fill: float) -> torch.Tensor:
        """``rows (B, L, h, ...)`` with ``lead`` rows of ``fill`` in front, as ``(B, h, lead + L, ...)``."""
        if not self.lead:
            return rows.transpose(1, 2)
        padded = rows.new_empty(rows.shape[0], self.lead + rows.shape[1], *rows.shape[2:])
        padded[:, : self.lead].fill_(fill)
        padded[:, self.lead :].copy_(rows)
        return padded.transpose(1, 2)


def _forward_piece(piece: _Piece, query, key, value, out, lse, scale: float) -> None:
    """Runs one piece and writes its rows of ``out (B, n, Hq, D)`` and ``lse (B, Hq, n)``.
    A function of its own so the piece's temporaries are freed before the next one starts."""
    piece_out, piece_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        *piece.inputs(query, key, value), 0.0, True, scale=scale
    )
    out[:, piece.start : piece.end, piece.heads].copy_(piece_out[:, :, piece.lead :].transpose(1, 2))
    lse[:, piece.heads, piece.start : piece.end].copy_(piece_lse[:, :, piece.lead :])


def _backward_piece(piece: _Piece, grad_out, query, key, value, out, lse, grads, scale: float) -> None:
    """Backward of one piece, written into ``grads = (grad_query, grad_key, grad_value)``: its query
    rows are copied, its key/value rows (and sinks) added."""
    start, end, heads, lead = piece.start, piece.end, piece.heads, piece.lead
    grad_query, grad_key, grad_value = grads
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        piece.padded(grad_out[:, start:end, heads], 0.0),
        *piece.inputs(query, key, value),
        out[:, start - lead : end, heads].transpose(1, 2),  # lead rows meet a zero gradient
        piece.padded(lse[:, heads, start:end].transpose(1, 2), float("inf")),
        0.0,
        True,
        scale=scale,
    )
    grad_query[:, heads, start:end].copy_(dq[:, :, lead:])
    for grad, part in ((grad_key, dk), (grad_value, dv)):
        if piece.expand_kv:
            part = part.sum(dim=1, keepdim=True)
        grad[:, piece.kv_heads, start:end] += part[:, :, lead:]
        if lead:
            grad[:, piece.kv_heads, :lead] += part[:, :, :lead]


class UniformGroupedAttention(torch.autograd.Function):
    """SF-Attn of whole rows; see the module docstring. Requires :func:`flash_cpu_available`
    and, for every run, ``G - shift >= min(s, n)`` (sinks are members of the first group only)."""

    @staticmethod
    def forward(ctx, query, key, value, runs, group_size, num_sink_tokens, scale):
        """query ``(B, Hq, n, D)``, key/value ``(B, Hkv, n, D)`` -> ``(B, n, Hq, D)``."""
        batch, num_heads, seq_len, head_dim = query.shape
        out = query.new_empty(batch, seq_len, num_heads, head_dim)
        # the kernel keeps the log-sum-exp in its accumulation type
        lse = query.new_empty(batch, num_heads, seq_len, dtype=torch.promote_types(query.dtype, torch.float32))
        for piece in _pieces(runs, query, group_size, num_sink_tokens):
            _forward_piece(piece, query, key, value, out, lse, scale)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.settings = runs, group_size, num_sink_tokens, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        runs, group_size, num_sink_tokens, scale = ctx.settings
        grads = torch.empty_like(query), torch.zeros_like(key), torch.zeros_like(value)
        for piece in _pieces(runs, query, group_size, num_sink_tokens):
            _backward_piece(piece, grad_out, query, key, value, out, lse, grads, scale)
        return *grads, None, None, None, None


def _pieces(runs: list[HeadRun], query: torch.Tensor, group_size: int, num_sink_tokens: int):
    """The :class:`_Piece` of every group of every run, for ``query (B, Hq, n, D)``."""
    for run in runs:
        for start, end in group_bounds(query.shape[2], group_size, run.shift):
            yield _Piece(run, start, end, num_sink_tokens, query.shape[0])


def uniform_flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    runs: list[HeadRun],
    group_size: int,
    num_sink_tokens: int,
    *,
    scale: float,
) -> torch.Tensor:
    """SF-Attn of whole rows with the CPU flash kernel (see the module docstring).

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)``.
        runs: :func:`head_runs` of the head classes, covering every query head once.
        group_size: ``G``; num_sink_tokens: ``s``; scale: softmax scale.

    Returns:
        ``(B, n, Hq, D)``.
    """
    return UniformGroupedAttention.apply(query, key, value, runs, group_size, num_sink_tokens, scale)
