"""Where the sequences lie in a batch: padded rows, packed rows, ``cu_seqlens``.

SF-Attn applies per *segment*: a padded row holds one segment (its real tokens), a packed
row from TRL's padding-free collator holds several (``position_ids`` restart at 0, or
``cu_seq_lens_q`` is given). Everything here is plain torch, vectorised over segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class Segments:
    """Segments of a ``(batch_size, seq_len)`` token grid.

    Attributes:
        row: ``(S,)`` batch row of each segment.
        start: ``(S,)`` index of each segment's first token inside its row.
        length: ``(S,)`` number of tokens in each segment (all >= 1).
        key_valid: ``(batch_size, seq_len)`` bool, False for tokens inside a segment that a
            2-D attention mask hides (holes); ``None`` when there are none.
        batch_size, seq_len: the grid.
    """

    row: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    key_valid: torch.Tensor | None
    batch_size: int
    seq_len: int

    @cached_property
    def is_uniform(self) -> bool:
        """Every row is one segment covering the whole row (no padding, no packing); computed once
        (on a GPU it synchronises with the host)."""
        return (
            self.key_valid is None
            and len(self.row) == self.batch_size
            and bool((self.start == 0).all() and (self.length == self.seq_len).all())
        )

    @property
    def flat_start(self) -> torch.Tensor:
        """``(S,)`` index of each segment's first token in the flattened ``batch_size * seq_len`` grid."""
        return self.row * self.seq_len + self.start


def _from_starts(is_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row, start, length)`` of segments from a ``(B, n)`` bool grid marking where each begins."""
    batch_size, seq_len = is_start.shape
    row, start = is_start.nonzero().unbind(1)  # row-major order
    flat_start = row * seq_len + start
    next_flat_start = torch.cat([flat_start[1:], flat_start.new_tensor([batch_size * seq_len])])
    end = torch.minimum(next_flat_start, (row + 1) * seq_len)  # a segment never crosses rows
    return row, start, end - flat_start


def find_segments(
    batch_size: int,
    seq_len: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens: torch.Tensor | None = None,
) -> Segments:
    """Finds the segments of a batch, in the order transformers itself gives priority to.

    Args:
        attention_mask: ``(B, n)`` 2-D padding mask (1/True = real token). A row's segment
            spans its first to its last real token; masked tokens in between become
            ``key_valid=False`` holes.
        position_ids: ``(B or 1, n)``; a new segment starts wherever a position is not the
            previous one plus 1 (TRL's padding-free rows). Used only without a mask.
        cu_seq_lens: ``(S + 1,)`` cumulative segment lengths of a single packed row (``B == 1``).

    Returns:
        The :class:`Segments`; rows without real tokens have none.
    """
    key_valid = None
    if cu_seq_lens is not None:
        if batch_size != 1:
            raise ValueError(f"cu_seq_lens_q describes one packed row, but the batch has {batch_size} rows")
        cu = cu_seq_lens.to(device=device, dtype=torch.long)
        if cu.ndim != 1 or cu[0] != 0 or (cu.diff() < 0).any() or cu[-1] > seq_len:
            raise ValueError(f"cu_seq_lens_q must rise from 0 to at most seq_len={seq_len}, got {cu.tolist()}")
        length = cu.diff()
        keep = length > 0
        start, length = cu[:-1][keep], length[keep]
        return Segments(torch.zeros_like(start), start, length, None, batch_size, seq_len)

    if attention_mask is not None:
        real = attention_mask[:, -seq_len:].to(device=device, dtype=torch.bool)
        if real.shape != (batch_size, seq_len):
            raise ValueError(f"attention_mask must be 2-D (batch, seq_len); got shape {tuple(attention_mask.shape)}")
        columns = torch.arange(seq_len, device=device)
        has_real = real.any(dim=1)
        first = torch.where(real, columns, seq_len).amin(dim=1)
        last = torch.where(real, columns, -1).amax(dim=1)
        row = has_real.nonzero().squeeze(1)
        start, length = first[row], (last - first + 1)[row]
        span = (columns >= first[:, None]) & (columns <= last[:, None])
        if (span & ~real).any():
            key_valid = real
        return Segments(row, start, length, key_valid, batch_size, seq_len)

    if position_ids is not None:
        pos = position_ids.to(device).expand(batch_size, -1)
        is_start = torch.ones_like(pos, dtype=torch.bool)
        is_start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        row, start, length = _from_starts(is_start)
        return Segments(row, start, length, None, batch_size, seq_len)

    row = torch.arange(batch_size, device=device)
    zeros = torch.zeros_like(row)
    return Segments(row, zeros, zeros + seq_len, None, batch_size, seq_len)


@dataclass
class _Memo:
    inputs: tuple[torch.Tensor | None, ...]
    versions: tuple[int | None, ...]
    grid: tuple[int, int, torch.device]
    segments: Segments


_last: _Memo | None = None


def _versions(tensors: tuple[torch.Tensor | None, ...]) -> tuple[int | None, ...]:
    return tuple(None if t is None else t._version for t in tensors)


def find_segments_once(
    batch_size: int,
    seq_len: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens: torch.Tensor | None = None,
) -> Segments:
    """:func:`find_segments`, computed once per forward rather than once per layer.

    Every layer of a model is handed the very same mask / position tensors, and reading them
    synchronises a GPU with the host (``nonzero``, ``.all()``): once per layer, that kept the host
    from queuing the next layers' kernels. The last result is reused while the same tensor objects
    come back unmodified (same ``_version``) for the same grid; the memo holds them, so their ids
    cannot be reused by other tensors meanwhile.
    """
    global _last
    inputs = (attention_mask, position_ids, cu_seq_lens)
    if any(t is not None and t.is_inference() for t in inputs):  # no version counter to trust
        return find_segments(batch_size, seq_len, device, attention_mask, position_ids, cu_seq_lens)
    grid = (batch_size, seq_len, torch.device(device))
    memo = _last
    if (
        memo is not None
        and memo.grid == grid
        and all(a is b for a, b in zip(memo.inputs, inputs))
        and memo.versions == _versions(inputs)
    ):
        return memo.segments
    segments = find_segments(batch_size, seq_len, device, attention_mask, position_ids, cu_seq_lens)
    _last = _Memo(inputs, _versions(inputs), grid, segments)
    return segments
