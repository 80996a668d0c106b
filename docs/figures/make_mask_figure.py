"""Draws docs/figures/sf_attention_mask.png from the implementation itself.

With zero queries/keys every allowed key gets the same weight, and with identity values
the output row of query ``i`` is non-zero exactly at the keys it may see. So the picture
shows what ``sf_attention`` computes, not a re-drawing of the formula.

    python docs/figures/make_mask_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from transformers import PretrainedConfig

import hf_sinklora  # noqa: F401  (registers the attention functions)
from hf_sinklora.attention import s2_attention_forward, sf_attention_forward


class _Layer(torch.nn.Module):
    def __init__(self, settings: dict):
        super().__init__()
        self.config = PretrainedConfig()
        self.config.sf_attention = settings
        self.is_causal = True


def visible_keys(attention, n: int, settings: dict) -> torch.Tensor:
    """``(heads=2, n, n)`` bool: which keys each query of an unshifted and a shifted head sees."""
    zeros = torch.zeros(1, 2, n, n)
    values = torch.eye(n).expand(1, 2, n, n)
    out, _ = attention(_Layer(settings).train(), zeros, zeros, values, None)
    return out[0].transpose(0, 1) > 0  # (B, n, H, D=n) -> (H, n, n)


def main() -> None:
    n, settings = 32, {"group_size_ratio": 0.25, "num_sink_tokens": 4, "shifted_head_ratio": 0.5}
    panels = [
        ("SF-Attn, unshifted head", visible_keys(sf_attention_forward, n, settings)[0]),
        ("SF-Attn, shifted head", visible_keys(sf_attention_forward, n, settings)[1]),
        ("S2-Attn (no sinks), shifted head", visible_keys(s2_attention_forward, n, settings)[1]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 5))
    for ax, (title, mask) in zip(axes, panels):
        ax.imshow(mask.numpy(), cmap="Blues", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("key position j")
        ax.set_ylabel("query position i")
    fig.suptitle(f"n = {n}, G = n/4 = {n // 4}, 4 sink tokens: blue = key visible to query")
    fig.tight_layout()
    out = Path(__file__).with_name("sf_attention_mask.png")
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
