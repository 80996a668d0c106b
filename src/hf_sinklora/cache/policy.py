"""What an :class:`~hf_sinklora.cache.H2OCache` keeps: the validated eviction settings."""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import is_int, is_number


@dataclass(frozen=True)
class H2OPolicy:
    """Per layer, batch row and KV head, keep at most ``budget`` tokens:

    the first ``num_sink_tokens`` real tokens, the most recent ``recent_tokens(budget)``
    tokens, and the highest-scoring of the rest ("heavy hitters").

    Args:
        budget: an int ``>= num_sink_tokens + 1``, or a float in (0, 1]: that fraction of the
            length of the first forward (the prompt), fixed then.
        recent_ratio: share of the budget given to the most recent tokens, in [0, 1].
            ``1.0`` leaves no room for heavy hitters: sinks + recent window (StreamingLLM).
        num_sink_tokens: ``s >= 0`` first tokens of each row that are always kept.
    """

    budget: int | float
    recent_ratio: float = 0.5
    num_sink_tokens: int = 4

    def __post_init__(self) -> None:
        if not is_int(self.num_sink_tokens) or self.num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be an int >= 0, got {self.num_sink_tokens!r}")
        if not is_number(self.recent_ratio) or not 0 <= self.recent_ratio <= 1:
            raise ValueError(f"recent_ratio must be a number in [0, 1], got {self.recent_ratio!r}")
        if is_int(self.budget):
            if self.budget < self.num_sink_tokens + 1:
                raise ValueError(
                    f"budget must be an int >= num_sink_tokens + 1 = {self.num_sink_tokens + 1} "
                    f"or a float in (0, 1], got {self.budget!r}"
                )
        elif not isinstance(self.budget, float) or not 0 < self.budget <= 1:
            raise ValueError(
                f"budget must be an int >= num_sink_tokens + 1 = {self.num_sink_tokens + 1} "
                f"or a float in (0, 1] (a fraction of the prompt length), got {self.budget!r}"
            )

    @property
    def is_fractional(self) -> bool:
        return isinstance(self.budget, float)

    def budget_for(self, prompt_length: int) -> int:
        """Tokens kept per (row, KV head): the int budget, or the fraction of ``prompt_length``
        (never below ``num_sink_tokens + 1``)."""
        if not self.is_fractional:
            return int(self.budget)
        return max(self.num_sink_tokens + 1, round(self.budget * prompt_length))

    def recent_tokens(self, budget: int) -> int:
        """Size of the recent window: ``round(recent_ratio * budget)``, leaving room for the sinks."""
        return min(round(self.recent_ratio * budget), budget - self.num_sink_tokens)
