"""Independent, naive reference of the H2O policy (docs/h2o.md), for tests only.

Per (batch row, KV head) it keeps a plain Python list of kept tokens in position order,
attends densely with eager softmax and re-selects the kept set from scratch after every
step. It shares no code with the package.
"""

from __future__ import annotations

import math

import torch


def select_kept(
    positions: list[int],
    scores: dict[int, float],
    real: set[int],
    *,
    seen: int,
    budget: int,
    recent_ratio: float,
    num_sink_tokens: int,
    sliding_window: int | None = None,
) -> list[int]:
    """Which of ``positions`` stay: sinks (first real tokens), recent window, then best scores.

    Padding and tokens that fell out of a sliding window rank below every real score.
    """
    if len(positions) <= budget:
        return positions
    recent = min(round(recent_ratio * budget), budget - num_sink_tokens)
    first_real = min(real) if real else None
    protected = {
        p for p in positions
        if p in real and ((first_real is not None and p < first_real + num_sink_tokens) or p >= seen - recent)
    }

    def rank(p: int) -> float:
        if p not in real:
            return -math.inf
        if sliding_window is not None and p <= seen - 1 - sliding_window:
            return -math.inf
        return scores[p]

    others = sorted((p for p in positions if p not in protected), key=rank, reverse=True)
    return sorted(protected | set(others[: budget - len(protected)]))


class ReferenceH2OHead:
    """One (row, KV head): kept keys/values as lists, eager attention, full re-selection."""

    def __init__(self, budget: int, recent_ratio: float, num_sink_tokens: int):
        self.budget, self.recent_ratio, self.num_sink_tokens = budget, recent_ratio, num_sink_tokens
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.scores: dict[int, float] = {}
        self.real: set[int] = set()
        self.seen = 0

    def step(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        real: list[bool],
        *,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """queries ``(g, q, D)`` (the query heads of this KV head), keys/values ``(q, D)``.

        Returns ``(g, q, D)``; padding queries attend to themselves only.
        """
        num_new = keys.shape[0]
        new_positions = list(range(self.seen, self.seen + num_new))
        for t, p in enumerate(new_positions):
            self.keys[p], self.values[p], self.scores[p] = keys[t].double(), values[t].double(), 0.0
            if real[t]:
                self.real.add(p)
        self.seen += num_new
        kept = sorted(self.keys)
        out = torch.zeros(queries.shape, dtype=torch.float64)
        group = queries.shape[0]
        for t, qp in enumerate(new_positions):
            if qp in self.real:
                visible = [p for p in kept if p <= qp and p in self.real
                           and (sliding_window is None or qp - p < sliding_window)]
            else:
                visible = [qp]
            k = torch.stack([self.keys[p] for p in visible])
            v = torch.stack([self.values[p] for p in visible])
            for h in range(group):
                logits = (k @ queries[h, t].double()) * scale
                if softcap is not None:
                    logits = torch.tanh(logits / softcap) * softcap
                probs = torch.softmax(logits, dim=0)
                out[h, t] = probs @ v
                for p, prob in zip(visible, probs.tolist()):
                    self.scores[p] += prob / group
        keep = select_kept(
            kept, self.scores, self.real, seen=self.seen, budget=self.budget, recent_ratio=self.recent_ratio,
            num_sink_tokens=self.num_sink_tokens, sliding_window=sliding_window,
        )
        for p in set(kept) - set(keep):
            del self.keys[p], self.values[p], self.scores[p]
        return out.to(queries.dtype)

    @property
    def kept(self) -> list[int]:
        return sorted(self.keys)


def kept_from_probabilities(
    probs: torch.Tensor,
    num_kv_heads: int,
    real: torch.Tensor,
    *,
    budget: int,
    recent_ratio: float,
    num_sink_tokens: int,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Kept positions ``(B, Hkv, budget)`` after one prefill, from eager attention probabilities.

    Args:
        probs: ``(B, Hq, n, n)`` attention probabilities of one layer (``output_attentions``).
        real: ``(B, n)`` bool, False for padding (whose query rows are ignored).
    """
    batch, num_heads, n, _ = probs.shape
    group = num_heads // num_kv_heads
    probs = probs.double() * real[:, None, :, None]
    mass = probs.sum(dim=2).view(batch, num_kv_heads, group, n).mean(dim=2)
    kept = []
    for b in range(batch):
        real_positions = {p for p in range(n) if real[b, p]}
        row = []
        for h in range(num_kv_heads):
            scores = {p: float(mass[b, h, p]) for p in range(n)}
            row.append(select_kept(
                list(range(n)), scores, real_positions, seen=n, budget=budget, recent_ratio=recent_ratio,
                num_sink_tokens=num_sink_tokens, sliding_window=sliding_window,
            ))
        kept.append(row)
    return torch.tensor(kept)


def snapkv_kept_from_probabilities(
    probs: torch.Tensor,
    num_kv_heads: int,
    real: torch.Tensor,
    *,
    budget: int,
    window: int,
    pooling: int,
    num_sink_tokens: int,
) -> torch.Tensor:
    """SnapKV's kept positions ``(B, Hkv, budget)`` after one prefill, from eager probabilities.

    Each position's score is the probability the last ``window`` queries give it, summed over
    those queries, averaged over a KV head's query heads, then averaged over the ``pooling``
    positions around it (as many as exist); the sinks and the last ``window`` positions stay.

    Args:
        probs: ``(B, Hq, n, n)`` attention probabilities of one layer.
        real: ``(B, n)`` bool, False for padding.
    """
    batch, num_heads, n, _ = probs.shape
    group = num_heads // num_kv_heads
    observed = probs.double()[:, :, n - window :].sum(dim=2)  # (B, Hq, n)
    mass = observed.view(batch, num_kv_heads, group, n).mean(dim=2)
    half = pooling // 2
    kept = []
    for b in range(batch):
        real_positions = [p for p in range(n) if real[b, p]]
        sinks = set(real_positions[:num_sink_tokens])
        recent = set(range(n - min(window, budget - num_sink_tokens), n))
        row = []
        for h in range(num_kv_heads):
            pooled = {}
            for p in range(n):
                neighbours = [float(mass[b, h, q]) for q in range(max(0, p - half), min(n, p + half + 1))]
                pooled[p] = sum(neighbours) / len(neighbours)
            protected = (sinks | recent) & set(real_positions)
            others = sorted((p for p in range(n) if p not in protected),
                            key=lambda p: pooled[p] if p in real_positions else -math.inf, reverse=True)
            row.append(sorted(protected | set(others[: budget - len(protected)])))
        kept.append(row)
    return torch.tensor(kept)
