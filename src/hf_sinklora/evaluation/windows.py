"""Sliding windows for strided perplexity: what each forward pass reads and scores.

Windows of ``L = context_length`` input tokens start every ``S = stride`` tokens. A window's
inputs ``[begin, begin + L)`` give next-token predictions for tokens ``begin + 1 .. begin + L``;
the window scores only those no earlier window scored. So every token but a document's
first is scored exactly once, by the first window whose inputs hold the token before it,
with at least ``L - S + 1`` tokens of context (fewer only in the first window).

This is the strided method of the transformers guide "Perplexity of fixed-length models",
with one fix: the guide discards the prediction of the window's last input (its label lies
outside the window), so with ``S = L`` the first token of every later window is never
scored. Here that prediction scores it, so ``S = L`` (disjoint inputs) scores every token too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One forward pass over ``input_ids[begin:end - 1]``, scoring tokens ``[score_from, end)``.

    ``begin < score_from < end``: the scored tokens are predicted by the last
    ``num_scored`` inputs.
    """

    begin: int
    end: int
    score_from: int

    @property
    def input_length(self) -> int:
        """Tokens fed to the model (``<= context_length``)."""
        return self.end - 1 - self.begin

    @property
    def num_scored(self) -> int:
        return self.end - self.score_from


def check_length_and_stride(context_length: int, stride: int | None) -> int:
    """Validates the pair and returns the effective stride (``context_length`` when None)."""
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an integer >= 2, got {context_length!r}")
    if stride is None:
        return context_length
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context_length:
        raise ValueError(f"stride must be an integer in [1, context_length={context_length}], got {stride!r}")
    return stride


def plan_windows(num_tokens: int, context_length: int, stride: int | None = None) -> list[Window]:
    """The windows over one document of ``num_tokens`` tokens.

    Window ``k`` reads tokens ``[k * S, min(k * S + L, num_tokens - 1))`` and scores from where
    window ``k - 1`` stopped (window 0 from token 1) to ``min(k * S + L + 1, num_tokens)``.
    A document of at most ``L + 1`` tokens is one window; one of fewer than 2 tokens has none.
    """
    stride = check_length_and_stride(context_length, stride)
    windows: list[Window] = []
    scored_until = 1  # token 0 has no context and is never scored
    begin = 0
    while scored_until < num_tokens:
        end = min(begin + context_length + 1, num_tokens)
        windows.append(Window(begin=begin, end=end, score_from=scored_until))
        scored_until = end
        begin += stride
    return windows
