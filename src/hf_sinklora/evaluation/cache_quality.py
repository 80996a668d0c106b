"""What KV eviction costs in quality: perplexity of text streamed through a cache.

Each segment of ``length`` tokens is fed to the model ``chunk_size`` tokens at a time (1:
token by token, as in decoding), each token predicted from whatever the cache still holds.
The full ``DynamicCache`` gives the reference; ``H2OCache`` and its StreamingLLM and
recent-window variants are measured at budgets given as fractions of ``length``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import Cache

from ..cache import EvictingCache, H2OPolicy, RecentWindowPolicy, SnapKVPolicy, StreamingLLMPolicy
from .loading import model_device

logger = logging.getLogger(__name__)

POLICIES: dict[str, Callable[[int], Cache]] = {
    "h2o": H2OPolicy,
    "snapkv": SnapKVPolicy,
    "streaming": StreamingLLMPolicy,
    "recent": RecentWindowPolicy,
}
FULL_CACHE = "full"


@torch.inference_mode()
def streamed_token_nll(model: torch.nn.Module, token_ids: torch.Tensor, cache: Cache, chunk_size: int = 1) -> torch.Tensor:
    """NLL (nats) of each of tokens ``1 ..`` of ``token_ids`` streamed through ``cache``.

    Args:
        token_ids: ``(n,)`` one segment.
        cache: a fresh cache; token ``t`` is predicted from what it holds after tokens ``< t``
            (plus the tokens before ``t`` in its own chunk).
        chunk_size: tokens per forward pass (1 = decoding).

    Returns:
        A float32 CPU tensor ``(n - 1,)`` whose entry ``t`` is the NLL of token ``t + 1``
        (the layout of ``PerplexityResult.token_nll``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    token_ids = token_ids.to(model_device(model))
    n = token_ids.shape[0]
    parts = []
    for start in range(0, n - 1, chunk_size):
        inputs = token_ids[start : min(start + chunk_size, n - 1)]
        logits = model(inputs[None], cache=cache).logits[0].float()  # (c, V)
        targets = token_ids[start + 1 : start + 1 + inputs.shape[0]]
        parts.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none").cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def streamed_nll(model: torch.nn.Module, token_ids: torch.Tensor, cache: Cache, chunk_size: int = 1) -> tuple[float, int]:
    """Summed NLL (nats) of tokens ``1 ..`` of ``token_ids`` streamed through ``cache``.

    Args:
        token_ids: ``(n,)`` one segment.
        cache: a fresh cache; token ``t`` is predicted from what it holds after tokens ``< t``.
        chunk_size: tokens per forward pass (1 = decoding).

    Returns:
        ``(nll_sum, tokens_scored)`` with ``tokens_scored = n - 1``.
    """
    nll = streamed_token_nll(model, token_ids, cache, chunk_size)
    return float(nll.double().sum()), nll.numel()


def _segments(documents: Sequence[torch.Tensor], length: int, max_segments: int | None) -> list[torch.Tensor]:
    segments = [doc[s : s + length] for doc in documents for s in range(0, doc.shape[0] - length + 1, length)]
    return segments[:max_segments] if max_segments else segments


def cache_budget_sweep(
    model: torch.nn.Module,
    documents: Sequence[torch.Tensor],
    length: int,
    budgets: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    policies: Sequence[str] = ("h2o", "streaming", "recent"),
    *,
    chunk_size: int = 1,
    max_segments: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of ``length``-token segments streamed through each policy at each budget.

    Args:
        documents: 1-D token tensors, cut into non-overlapping segments of ``length`` tokens
            (shorter remainders are dropped).
        budgets: fractions of ``length`` in (0, 1]; budget tokens ``max(s + 1, round(f * length))``.
        policies: names from :data:`POLICIES`.
        chunk_size: tokens per forward (1 = token by token).
        max_segments: evaluate at most this many segments.

    Returns:
        ``{"length", "chunk_size", "segments", "tokens_scored", "full": {"perplexity"},
        "results": {policy: {str(budget): {"budget_tokens", "perplexity", "ppl_ratio"}}}}``
        where ``ppl_ratio`` is the perplexity over the full cache's.
    """
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {sorted(POLICIES)}")
    if not budgets or not all(0 < b <= 1 for b in budgets):
        raise ValueError(f"budgets must be fractions in (0, 1], got {list(budgets)}")
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    segments = _segments(documents, length, max_segments)
    if not segments:
        raise ValueError(f"no document holds {length} tokens; lower length or give more text")
    was_training = model.training
    model.eval()
    runs = [(FULL_CACHE, None)] + [(p, b) for p in policies for b in budgets]
    totals: dict[tuple[str, float | None], float] = {}
    try:
        bar = tqdm(total=len(runs) * len(segments), desc="cache sweep", disable=not progress)
        for policy, budget in runs:
            nll = 0.0
            for segment in segments:
                if policy == FULL_CACHE:
                    cache = DynamicCache(config=model.config)
                else:
                    cache = EvictingCache(POLICIES[policy](_budget_tokens(budget, length)))
                nll += streamed_nll(model, segment, cache, chunk_size)[0]
                bar.update()
            totals[(policy, budget)] = nll
        bar.close()
    finally:
        model.train(was_training)
    scored = len(segments) * (length - 1)
    full = math.exp(totals[(FULL_CACHE, None)] / scored)
    results = {
        policy: {
            f"{budget:g}": {
                "budget_tokens": _budget_tokens(budget, length),
                "perplexity": math.exp(totals[(policy, budget)] / scored),
                "ppl_ratio": math.exp(totals[(policy, budget)] / scored) / full,
            }
            for budget in budgets
        }
        for policy in policies
    }
    return {
        "length": length,
        "chunk_size": chunk_size,
        "segments": len(segments),
        "tokens_scored": scored,
        "budgets": list(budgets),
        "full": {"perplexity": full},
        "results": results,
    }


def _budget_tokens(fraction: float, length: int) -> int:
    return H2OPolicy(budget=float(fraction)).budget_for(length)  # >= num_sink_tokens + 1 of the default policies


def eviction_cache(policy: str, budget: float, prompt_tokens: int) -> EvictingCache:
    """A fresh cache of ``policy`` (a :data:`POLICIES` name) for a prompt of ``prompt_tokens``.

    Args:
        budget: kept tokens per layer and KV head: a fraction of the prompt when ``<= 1``, else a
            token count (a whole number). Always resolved to tokens, so chunked prefill works.

    Raises:
        ValueError: an unknown policy or a budget out of range.
    """
    if policy not in POLICIES:
        raise ValueError(f"cache policy must be one of {sorted(POLICIES)}, got {policy!r}")
    if not 0 < budget:
        raise ValueError(f"budget must be a fraction in (0, 1] or a token count > 1, got {budget!r}")
    if budget > 1 and budget != int(budget):
        raise ValueError(f"budget above 1 counts tokens and must be a whole number, got {budget!r}")
    tokens = _budget_tokens(budget, prompt_tokens) if budget <= 1 else int(budget)
    return EvictingCache(POLICIES[policy](tokens))


def plot_cache_sweep(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """PNG: perplexity against budget (fraction of the segment), one line per policy, the
    full cache as a horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for policy, by_budget in result["results"].items():
        budgets = sorted(by_budget, key=float)
        axes.plot([float(b) for b in budgets], [by_budget[b]["perplexity"] for b in budgets], marker="o", label=policy)
    axes.axhline(result["full"]["perplexity"], color="black", linestyle="--", label="full cache")
    axes.set_xlabel(f"budget (fraction of {result['length']} tokens)")
    axes.set_ylabel("perplexity")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title(title or f"KV eviction: {result['segments']} segments, chunk {result['chunk_size']}", fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
