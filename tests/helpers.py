"""Small shared pieces for the tests: a stand-in attention module and random scenarios."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig


class FakeAttention(torch.nn.Module):
    """Just what an attention function reads from its module: config, training, is_causal."""

    def __init__(self, sf_attention: dict | None = None, num_key_value_groups: int = 1):
        super().__init__()
        self.config = PretrainedConfig()
        self.config.sf_attention = dict(sf_attention or {})
        self.is_causal = True
        self.num_key_value_groups = num_key_value_groups


@dataclass
class Scenario:
    """A batch layout plus SF-Attn settings, with what the model would pass for it."""

    seq_len: int
    rows: list  # rows[b] = [(start, length), ...]
    kind: str  # plain | right_pad | left_pad | packed_pos | packed_cu | holes
    params: dict = field(default_factory=dict)
    sliding_window: int | None = None
    softcap: float | None = None
    holes: list = field(default_factory=list)  # (row, column) masked inside a segment

    def attention_kwargs(self) -> tuple[torch.Tensor | None, dict]:
        """(2-D attention mask or None, extra kwargs) as transformers would pass them."""
        batch = len(self.rows)
        if self.kind in ("right_pad", "left_pad", "holes"):
            mask = torch.zeros(batch, self.seq_len, dtype=torch.bool)
            for b, segments in enumerate(self.rows):
                for start, length in segments:
                    mask[b, start : start + length] = True
            for b, column in self.holes:
                mask[b, column] = False
            return mask, {}
        if self.kind == "packed_pos":
            position_ids = torch.zeros(batch, self.seq_len, dtype=torch.long)
            for b, segments in enumerate(self.rows):
                for start, length in segments:
                    position_ids[b, start : start + length] = torch.arange(length)
            return None, {"position_ids": position_ids}
        if self.kind == "packed_cu":
            bounds = [0] + [start + length for start, length in self.rows[0]]
            return None, {"cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32)}
        return None, {}

    def key_valid(self) -> torch.Tensor | None:
        if not self.holes:
            return None
        valid = torch.ones(len(self.rows), self.seq_len, dtype=torch.bool)
        for b, column in self.holes:
            valid[b, column] = False
        return valid


def _split(total: int, rng: random.Random) -> list[int]:
    lengths = []
    while total > 0:
        length = rng.randint(1, total)
        lengths.append(length)
        total -= length
    return lengths


def random_scenario(seed: int, max_len: int = 40) -> Scenario:
    rng = random.Random(seed)
    kind = rng.choice(["plain", "right_pad", "left_pad", "packed_pos", "packed_cu", "holes"])
    seq_len = rng.randint(1, max_len)
    batch = 1 if kind == "packed_cu" else rng.randint(1, 2)
    rows = []
    for _ in range(batch):
        if kind == "plain":
            rows.append([(0, seq_len)])
        elif kind in ("right_pad", "holes"):
            rows.append([(0, rng.randint(1, seq_len))])
        elif kind == "left_pad":
            length = rng.randint(1, seq_len)
            rows.append([(seq_len - length, length)])
        else:
            starts, segments = 0, []
            for length in _split(seq_len, rng):
                segments.append((starts, length))
                starts += length
            rows.append(segments)
    holes = []
    if kind == "holes":
        for b, [(start, length)] in enumerate(rows):
            if length > 2:
                holes.append((b, rng.randint(start + 1, start + length - 2)))
    params = {
        "group_size_ratio": rng.choice([0.25, 0.5, 1.0, 0.3, 0.125]),
        "num_sink_tokens": rng.choice([0, 1, 4, 7]),
        "shifted_head_ratio": rng.choice([0.0, 0.25, 0.5, 1.0]),
    }
    if rng.random() < 0.2:
        params["group_size"] = rng.randint(1, 12)
    return Scenario(
        seq_len=seq_len,
        rows=rows,
        kind=kind,
        params=params,
        sliding_window=rng.choice([None, None, None, rng.randint(1, 20)]),
        softcap=rng.choice([None, None, None, 5.0]),
        holes=holes,
    )
