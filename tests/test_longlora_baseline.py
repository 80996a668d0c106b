"""The benchmark-only LongLoRA eager S2 baseline: the rule its description gives (future leak
included), and never registered by the package itself."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AttentionInterface

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import longlora_eager_s2  # noqa: E402


def _allowed(n: int, group: int, shifted: bool) -> torch.Tensor:
    """(n, n) bool, from the description: positions rolled by -G/2 (wrap-around) for shifted heads,
    causal inside groups of G of the rolled order."""
    rolled = [(t + group // 2) % n if shifted else t for t in range(n)]  # rolled index of token t
    return torch.tensor([[rolled[j] // group == rolled[i] // group and rolled[j] <= rolled[i] for j in range(n)]
                         for i in range(n)])


def test_matches_the_described_rule_including_the_leak():
    torch.manual_seed(0)
    batch, heads, n, dim, group = 2, 4, 16, 8, 8
    q, k, v = (torch.randn(batch, heads, n, dim, dtype=torch.float64) for _ in range(3))
    out = longlora_eager_s2.longlora_eager_s2(q, k, v, group, scale=dim**-0.5)
    for h in range(heads):
        allowed = _allowed(n, group, shifted=h >= heads // 2)
        scores = (q[:, h] @ k[:, h].transpose(-1, -2)) * dim**-0.5
        expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[:, h]
        torch.testing.assert_close(out[:, h], expected)
    leak = _allowed(n, group, shifted=True)
    assert leak[0, n - 1] and leak[group // 2 - 1, n - group // 2], "the first G/2 queries see the last G/2 tokens"


def test_the_package_does_not_register_it():
    import hf_sinklora  # noqa: F401

    assert longlora_eager_s2.NAME not in AttentionInterface._global_mapping
