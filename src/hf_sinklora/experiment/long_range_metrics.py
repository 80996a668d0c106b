"""Long-range perplexity: perplexity over the tokens that only context further back than ``L`` predicts.

The documents come from :mod:`.long_range` (each carries a ``long_range_mask``); the model reads
each one whole (:func:`long_range_perplexity`) or streams it through an evicting cache
(:func:`streamed_long_range_perplexity`), and only the masked tokens count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..evaluation import perplexity, streamed_token_nll
from .long_range import LongRangeDocument


def long_range_summary(documents: Sequence[LongRangeDocument], token_nll: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Perplexity over each document's long-range tokens (per kind and together) and over the rest.

    Args:
        documents: documents of ``n`` tokens each.
        token_nll: per document a tensor ``(n - 1,)``; entry ``t`` is the NLL (nats) of token ``t + 1``.

    Returns:
        ``{kind: {"ppl", "tokens"}, "rest": ..., "long_range": ...}`` (``long_range``: every kind's
        masked tokens together; ppl is NaN where nothing is scored).
    """
    sums: dict[str, list[float]] = {}
    for document, nll in zip(documents, token_nll):
        mask = torch.tensor(document.long_range_mask[1:])  # token t's NLL is nll[t - 1]
        for kind, selected in ((document.kind, mask), ("rest", ~mask)):
            total = sums.setdefault(kind, [0.0, 0])
            total[0] += float(nll[selected].double().sum())
            total[1] += int(selected.sum())
    out: dict[str, Any] = {kind: {"ppl": math.exp(s / n) if n else float("nan"), "tokens": n}
                           for kind, (s, n) in sums.items()}
    masked = [v for k, v in sums.items() if k != "rest"]
    total_nll, total_n = sum(s for s, _ in masked), sum(n for _, n in masked)
    out["long_range"] = {"ppl": math.exp(total_nll / total_n) if total_n else float("nan"), "tokens": total_n}
    return out


def long_range_perplexity(model: Any, documents: Sequence[LongRangeDocument], length: int) -> dict[str, Any]:
    """:func:`long_range_summary` of one forward pass of ``length`` tokens per document (full attention)."""
    result = perplexity(model, [torch.tensor(d.input_ids) for d in documents], length, keep_token_nll=True,
                        progress=False)
    return long_range_summary(documents, result.token_nll)


def streamed_long_range_perplexity(model: Any, documents: Sequence[LongRangeDocument],
                                   cache_factory: Callable[[int], Any], chunk_size: int) -> dict[str, Any]:
    """:func:`long_range_summary` of each document streamed ``chunk_size`` tokens per forward through
    ``cache_factory(document_tokens)`` (a fresh cache per document)."""
    model.eval()
    token_nll = [streamed_token_nll(model, torch.tensor(d.input_ids), cache_factory(len(d.input_ids)), chunk_size)
                 for d in documents]
    return long_range_summary(documents, token_nll)
