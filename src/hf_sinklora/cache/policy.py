"""Eviction policies: which tokens an :class:`~hf_sinklora.cache.EvictingCache` keeps.

A policy is a small frozen object with one job, scoring (kvpress's scorer/pruner split): the
budget and sink rules are shared (:class:`EvictionPolicy`), and each subclass says, through
:meth:`EvictionPolicy.keep_priority`, which of the other tokens matter more. The layer does the
pruning with rules no policy may change: padding and expired sliding-window tokens go first,
sinks never go, the lowest priorities go next.

A new policy is one subclass::

    @dataclass(frozen=True, kw_only=True)
    class OldestFirstPolicy(EvictionPolicy):
        def keep_priority(self, scores, slot_positions, newest, budget):
            return -slot_positions.to(scores.dtype)  # keep the earliest tokens
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import torch

from .._checks import is_int, is_number


@dataclass(frozen=True)
class EvictionPolicy:
    """Per layer, batch row and KV head, keep at most ``budget`` tokens, the first
    ``num_sink_tokens`` real ones always; subclasses rank the rest.

    Args:
        budget: an int ``>= num_sink_tokens + 1``, or a float in (0, 1]: that fraction of the
            length of the first forward (the prompt), fixed then.
        num_sink_tokens: ``s >= 0`` first real tokens of each row that are always kept.

    Raises:
        ValueError: a setting out of range (the message names it).
    """

    budget: int | float
    _: KW_ONLY
    num_sink_tokens: int = 4

    def __post_init__(self) -> None:
        if not is_int(self.num_sink_tokens) or self.num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be an int >= 0, got {self.num_sink_tokens!r}")
        allowed = f"an int >= num_sink_tokens + 1 = {self.num_sink_tokens + 1} or a float in (0, 1]"
        if is_int(self.budget):
            if self.budget < self.num_sink_tokens + 1:
                raise ValueError(f"budget must be {allowed}, got {self.budget!r}")
        elif not isinstance(self.budget, float) or not 0 < self.budget <= 1:
            raise ValueError(f"budget must be {allowed} (a fraction of the prompt length), got {self.budget!r}")

    @property
    def is_fractional(self) -> bool:
        return isinstance(self.budget, float)

    def budget_for(self, prompt_length: int) -> int:
        """Tokens kept per (row, KV head): the int budget, or the fraction of ``prompt_length``
        (never below ``num_sink_tokens + 1``)."""
        if not self.is_fractional:
            return int(self.budget)
        return max(self.num_sink_tokens + 1, round(self.budget * prompt_length))

    def observation_window(self, num_queries: int) -> int:
        """How many of a step's last queries score the keys (their attention is added to the
        scores): all of them here, as H2O does; ``0`` for a policy that never reads scores, which
        then costs no scoring pass at all."""
        return num_queries

    def step_mass(self, key_mass: torch.Tensor, num_queries: int) -> torch.Tensor:
        """What a step adds to the scores, from ``key_mass (B, Hkv, slots)``: the attention each
        slot received from the observed queries (slots in position order when ``num_queries > 1``)."""
        return key_mass

    def keep_priority(
        self, scores: torch.Tensor, slot_positions: torch.Tensor, newest: int, budget: int
    ) -> torch.Tensor:
        """How much each slot deserves to stay; the lowest go first.

        Args:
            scores: ``(B, Hkv, slots)`` float32 attention each token received since it entered
                (``+inf`` sinks, ``-inf`` padding and free slots: the layer re-applies those).
            slot_positions: ``(B, Hkv, slots)`` absolute position of each slot's token.
            newest: position of the newest token.
            budget: tokens kept per (row, KV head).

        Returns:
            ``(B, Hkv, slots)`` float32 priorities (``+inf`` never evicted).
        """
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class H2OPolicy(EvictionPolicy):
    """Heavy-Hitter Oracle (arXiv 2306.14048): the most recent ``recent_tokens(budget)`` tokens,
    then the highest accumulated attention ("heavy hitters").

    Args:
        recent_ratio: share of the budget given to the most recent tokens, in [0, 1].
    """

    recent_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_number(self.recent_ratio) or not 0 <= self.recent_ratio <= 1:
            raise ValueError(f"recent_ratio must be a number in [0, 1], got {self.recent_ratio!r}")

    def recent_tokens(self, budget: int) -> int:
        """Size of the recent window: ``round(recent_ratio * budget)``, leaving room for the sinks."""
        return min(round(self.recent_ratio * budget), budget - self.num_sink_tokens)

    def keep_priority(
        self, scores: torch.Tensor, slot_positions: torch.Tensor, newest: int, budget: int
    ) -> torch.Tensor:
        recent = self.recent_tokens(budget)
        if not recent:
            return scores
        return scores.masked_fill(slot_positions > newest - recent, float("inf"))


@dataclass(frozen=True, kw_only=True)
class SnapKVPolicy(EvictionPolicy):
    """SnapKV (arXiv 2404.14469): a prompt's keys ranked by the attention of its last ``window``
    queries (the observation window, which should hold the question), smoothed over neighbouring
    keys; the sinks and the newest ``window`` tokens always stay.

    A multi-token step (a prefill, a prefill chunk) scores its slots with its own last ``window``
    queries only, averaged over ``pooling`` neighbouring keys. While decoding, the newest
    ``window`` tokens stay and each new token's attention adds to the scores, as in H2O: a
    generated token that the following ones attend to competes with the prompt's keys once it
    leaves the window. A chunked prefill scores each chunk with that chunk's last queries, which
    are not the question (see docs/h2o.md).

    Args:
        window: observation window (and protected recent tokens), an int >= 1.
        pooling: width of the average pooling over neighbouring keys, an odd int >= 1 (1: none).
    """

    window: int = 8
    pooling: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.window) or self.window < 1:
            raise ValueError(f"window must be an int >= 1, got {self.window!r}")
        if not is_int(self.pooling) or self.pooling < 1 or self.pooling % 2 == 0:
            raise ValueError(f"pooling must be an odd int >= 1, got {self.pooling!r}")

    def observation_window(self, num_queries: int) -> int:
        return min(self.window, num_queries)

    def step_mass(self, key_mass: torch.Tensor, num_queries: int) -> torch.Tensor:
        if num_queries == 1 or self.pooling == 1:
            return key_mass
        batch, heads, slots = key_mass.shape
        pooled = torch.nn.functional.avg_pool1d(key_mass.reshape(batch * heads, 1, slots), self.pooling, stride=1,
                                                padding=self.pooling // 2, count_include_pad=False)
        return pooled.view(batch, heads, slots)

    def keep_priority(
        self, scores: torch.Tensor, slot_positions: torch.Tensor, newest: int, budget: int
    ) -> torch.Tensor:
        recent = min(self.window, budget - self.num_sink_tokens)
        if recent <= 0:
            return scores
        return scores.masked_fill(slot_positions > newest - recent, float("inf"))


@dataclass(frozen=True, kw_only=True)
class StreamingLLMPolicy(EvictionPolicy):
    """StreamingLLM (arXiv 2309.17453): the sinks and the most recent tokens, nothing else."""

    def observation_window(self, num_queries: int) -> int:
        return 0  # ranks by position only: no attention is scored

    def keep_priority(
        self, scores: torch.Tensor, slot_positions: torch.Tensor, newest: int, budget: int
    ) -> torch.Tensor:
        return slot_positions.to(scores.dtype)  # newer is higher


@dataclass(frozen=True, kw_only=True)
class RecentWindowPolicy(StreamingLLMPolicy):
    """Only the most recent ``budget`` tokens (no sinks): the baseline every policy must beat."""

    num_sink_tokens: int = 0
