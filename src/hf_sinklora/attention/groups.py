"""The SF-Attn groups of every segment, as flat tables the backends gather with.

For a segment of ``L`` tokens, group size ``G`` and shift ``h`` (``G // 2`` for shifted
heads, 0 otherwise), token ``t`` belongs to group ``(t + h) // G``: group ``k`` spans
positions ``[max(0, kG - h), min(L, (k + 1)G - h))``. Its queries also see the segment's
sink tokens that lie before the group, ``[0, min(s, group start))``; sinks inside the
group are ordinary members. Nothing is rolled or wrapped, so no token sees the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .segments import Segments


@dataclass
class GroupLayout:
    """All groups of one head class (shifted or not), one entry per group.

    Attributes:
        token_start: ``(Ng,)`` flat index (``row * seq_len + column``) of the group's first token.
        length: ``(Ng,)`` tokens in the group (>= 1).
        position_start: ``(Ng,)`` position of the group's first token inside its segment.
        num_sinks: ``(Ng,)`` sink keys prepended to the group, ``min(s, position_start)``.
        segment_token_start: ``(Ng,)`` flat index of the segment's first token (sink ``c`` is
            ``segment_token_start + c``).
        num_sink_tokens: ``s``.
    """

    token_start: torch.Tensor
    length: torch.Tensor
    position_start: torch.Tensor
    num_sinks: torch.Tensor
    segment_token_start: torch.Tensor
    num_sink_tokens: int

    @property
    def max_length(self) -> int:
        return int(self.length.max()) if self.length.numel() else 0

    @property
    def max_distance(self) -> int:
        """Largest ``i - j`` of any allowed (query, key) pair: what a sliding window must cover."""
        if not self.length.numel():
            return 0
        in_group = self.length - 1
        to_sinks = torch.where(self.num_sinks > 0, self.position_start + self.length - 1, 0)
        return int(torch.maximum(in_group, to_sinks).max())


def build_group_layout(
    segments: Segments, sizes: torch.Tensor, shifted: bool, num_sink_tokens: int
) -> GroupLayout:
    """Cuts every segment into its groups.

    Args:
        segments: the batch's segments.
        sizes: ``(S,)`` group size per segment (``SFAttentionConfig.group_sizes_for``).
        shifted: use the groups of shifted heads (offset by ``G // 2``).
        num_sink_tokens: ``s``.
    """
    shift = sizes // 2 if shifted else torch.zeros_like(sizes)
    groups_per_segment = (segments.length - 1 + shift) // sizes + 1
    segment_of_group = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), groups_per_segment)
    first_group = torch.cumsum(groups_per_segment, 0) - groups_per_segment
    k = torch.arange(len(segment_of_group), device=sizes.device) - first_group[segment_of_group]

    size, offset = sizes[segment_of_group], shift[segment_of_group]
    seg_length = segments.length[segment_of_group]
    position_start = (k * size - offset).clamp_min(0)
    position_end = torch.minimum((k + 1) * size - offset, seg_length)
    segment_token_start = segments.flat_start[segment_of_group]
    return GroupLayout(
        token_start=segment_token_start + position_start,
        length=position_end - position_start,
        position_start=position_start,
        num_sinks=position_start.clamp_max(num_sink_tokens),
        segment_token_start=segment_token_start,
        num_sink_tokens=num_sink_tokens,
    )
