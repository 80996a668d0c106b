"""Perplexity at a fixed context length, each token scored exactly once.

:func:`perplexity` scores token ids that are already tokenized (what a later sweep over
models, lengths or caches calls); :func:`evaluate_perplexity` tokenizes texts and runs it
for several context lengths. Both use full attention: the model is put in eval mode, where
``sf_attention`` is dense causal attention.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from .._checks import accepts_logits_to_keep
from .loading import model_device
from .windows import Window, check_length_and_stride, plan_windows

logger = logging.getLogger(__name__)

TokenIds = Sequence[int] | torch.Tensor


@dataclass
class PerplexityResult:
    """What one context length measured over a set of documents.

    Attributes:
        context_length: window length ``L`` in tokens.
        stride: window step ``S`` (``S == L``: disjoint windows).
        nll_sum: summed negative log-likelihood (nats) of the scored tokens.
        tokens_scored: how many tokens were scored (each document's length minus one).
        windows: forward passes run.
        documents: documents with at least 2 tokens (the others have nothing to score).
        short_documents: documents of 2 to ``L`` tokens, too short for one full window of ``L``
            inputs (scored with all the context they have).
        token_nll: with ``keep_token_nll=True``, per document a float32 tensor of shape
            ``(n_d - 1,)`` whose entry ``t`` is the NLL of token ``t + 1``; else None.
    """

    context_length: int
    stride: int
    nll_sum: float
    tokens_scored: int
    windows: int
    documents: int
    short_documents: int
    token_nll: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL in nats (NaN when nothing was scored)."""
        return self.nll_sum / self.tokens_scored if self.tokens_scored else float("nan")

    @property
    def perplexity(self) -> float:
        """``exp(mean_nll)``."""
        return math.exp(self.mean_nll) if self.tokens_scored else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without ``token_nll``)."""
        return {
            "context_length": self.context_length,
            "stride": self.stride,
            "perplexity": self.perplexity,
            "mean_nll": self.mean_nll,
            "nll_sum": self.nll_sum,
            "tokens_scored": self.tokens_scored,
            "windows": self.windows,
            "documents": self.documents,
            "short_documents": self.short_documents,
        }


def as_documents(token_ids: TokenIds | Sequence[TokenIds]) -> list[torch.Tensor]:
    """One document (1-D ids) or several (a sequence of them) as a list of 1-D long tensors."""
    if isinstance(token_ids, torch.Tensor):
        if token_ids.ndim == 1:
            return [token_ids.long()]
        if token_ids.ndim == 2:
            return [row.long() for row in token_ids]
        raise ValueError(f"token_ids must be 1-D (one document) or 2-D, got shape {tuple(token_ids.shape)}")
    items = list(token_ids)
    if all(isinstance(item, int) for item in items):
        return [torch.tensor(items, dtype=torch.long)]
    return [torch.as_tensor(item, dtype=torch.long).flatten() for item in items]


def _warn_about_attention(model: torch.nn.Module, context_length: int) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    sf = getattr(config, "sf_attention", None) or {}
    if getattr(config, "_attn_implementation", None) in ("sf_attention", "s2_attention") and sf.get("eval_mode") == "sf":
        logger.warning("config.sf_attention eval_mode='sf': perplexity is measured with SF-Attn, not full attention")
    max_positions = getattr(config, "max_position_embeddings", None)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if max_positions and context_length > max_positions and rope_type == "default":
        logger.warning(
            "context length %d exceeds max_position_embeddings=%d and the config sets no RoPE scaling",
            context_length, max_positions,
        )


def _score_batch(
    model: torch.nn.Module, input_ids: torch.Tensor, targets: list[torch.Tensor], use_logits_to_keep: bool
) -> list[torch.Tensor]:
    """NLL of each row's targets, predicted by that row's last inputs.

    Args:
        input_ids: ``(B, l)`` windows of equal input length ``l``.
        targets: per row the ``c_b <= l`` tokens that follow the row's last ``c_b`` inputs.

    Returns:
        Per row a float32 tensor ``(c_b,)`` on the CPU.
    """
    keep = max(t.numel() for t in targets)
    kwargs = {"logits_to_keep": keep} if use_logits_to_keep else {}
    logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits  # (B, keep or l, V)
    out = []
    for row, target in enumerate(targets):
        row_logits = logits[row, -target.numel():].float()  # (c_b, V): one row at a time bounds fp32 memory
        nll = torch.nn.functional.cross_entropy(row_logits, target.to(row_logits.device), reduction="none")
        out.append(nll.cpu())
    return out


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    token_ids: TokenIds | Sequence[TokenIds],
    context_length: int,
    stride: int | None = None,
    batch_size: int = 1,
    *,
    keep_token_nll: bool = False,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` over documents at one context length (sliding windows).

    Each document is cut into windows by :func:`plan_windows` (windows never cross
    documents): forward passes of at most ``L`` tokens starting every ``S`` tokens, each
    scoring only tokens no earlier window scored. Every token but a document's first is
    scored exactly once, and the result is token-weighted over all documents:
    ``exp(sum NLL / tokens scored)``. The model runs in eval mode (full causal attention for
    ``sf_attention``) and is put back in the mode it was in.

    Args:
        model: a causal LM returning ``logits (B, l, V)``.
        token_ids: one document (1-D tensor or list of ints), a ``(D, n)`` tensor, or a
            sequence of documents of any lengths.
        context_length: tokens per forward pass ``L >= 2`` (the most context a token gets).
        stride: window step ``S`` in ``[1, L]``; None means ``L`` (disjoint windows).
        batch_size: windows per forward pass (only windows of equal input length are
            batched, so no padding is ever used).
        keep_token_nll: also return each token's NLL (:attr:`PerplexityResult.token_nll`).
        progress: show a tqdm bar over windows.
    """
    stride = check_length_and_stride(context_length, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    documents = as_documents(token_ids)
    if not any(len(d) >= 2 for d in documents):
        raise ValueError("token_ids must hold at least one document of 2 or more tokens (nothing to score)")
    device = model_device(model)
    _warn_about_attention(model, context_length)

    by_length: dict[int, list[tuple[int, Window]]] = defaultdict(list)
    for index, document in enumerate(documents):
        for window in plan_windows(len(document), context_length, stride):
            by_length[window.input_length].append((index, window))
    token_nll = [torch.full((max(len(d) - 1, 0),), float("nan")) for d in documents]
    total_windows = sum(len(group) for group in by_length.values())
    use_logits_to_keep = accepts_logits_to_keep(model)

    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=total_windows, desc=f"ppl @ {context_length}", unit="win", disable=not progress)
        for length in sorted(by_length, reverse=True):
            group = by_length[length]
            for first in range(0, len(group), batch_size):
                chunk = group[first : first + batch_size]
                input_ids = torch.stack([documents[i][w.begin : w.end - 1] for i, w in chunk]).to(device)
                targets = [documents[i][w.score_from : w.end] for i, w in chunk]
                nlls = _score_batch(model, input_ids, targets, use_logits_to_keep)
                for (i, window), nll in zip(chunk, nlls):
                    token_nll[i][window.score_from - 1 : window.end - 1] = nll
                bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)

    scored = sum(t.numel() for t in token_nll)
    nll_sum = float(sum(t.double().sum() for t in token_nll))
    result = PerplexityResult(
        context_length=context_length,
        stride=stride,
        nll_sum=nll_sum,
        tokens_scored=scored,
        windows=total_windows,
        documents=sum(1 for d in documents if len(d) >= 2),
        short_documents=sum(1 for d in documents if 2 <= len(d) <= context_length),
        token_nll=token_nll if keep_token_nll else None,
    )
    logger.info(
        "context %d stride %d: ppl %.4f over %d tokens (%d windows)",
        context_length, stride, result.perplexity, scored, total_windows,
    )
    return result


def tokenize_documents(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool = True, max_tokens: int | None = None
) -> list[torch.Tensor]:
    """Tokenizes each text as one document; with ``max_tokens``, keeps the first ``max_tokens``
    tokens of the corpus (documents in order, the last one cut).

    Returns:
        1-D long tensors, one per kept document.
    """
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 or None, got {max_tokens}")
    documents: list[torch.Tensor] = []
    total = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        if ids:
            documents.append(torch.tensor(ids, dtype=torch.long))
            total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    return documents


def evaluate_perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    lengths: Sequence[int],
    stride: int | None = None,
    batch_size: int = 1,
    *,
    max_tokens: int | None = None,
    add_special_tokens: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``texts`` at each context length in ``lengths``.

    Every length scores the same tokens (all but each document's first), so the numbers
    differ only by how much context each token had.

    Args:
        texts: the documents; each is tokenized on its own (windows never cross documents).
        lengths: context lengths, each ``>= 2``.
        stride: window step for every length (``<= min(lengths)``); None: each length's own
            length (disjoint windows).
        max_tokens: evaluate only the first ``max_tokens`` tokens of the corpus.

    Returns:
        ``{"results": {str(L): PerplexityResult.to_dict()}, "documents", "tokens", "settings"}``.
    """
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one context length")
    for length in lengths:
        check_length_and_stride(length, stride)
    if not texts:
        raise ValueError("texts is empty: no documents to evaluate")
    documents = tokenize_documents(tokenizer, texts, add_special_tokens=add_special_tokens, max_tokens=max_tokens)
    if not any(len(d) >= 2 for d in documents):
        raise ValueError("texts tokenize to no document of 2 or more tokens (nothing to score)")
    logger.info("%d documents, %d tokens", len(documents), sum(len(d) for d in documents))
    results = {}
    for length in lengths:
        result = perplexity(model, documents, length, stride, batch_size, progress=progress)
        results[str(length)] = result.to_dict()
    return {
        "results": results,
        "documents": len(documents),
        "tokens": sum(len(d) for d in documents),
        "settings": {
            "lengths": lengths,
            "stride": stride,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "add_special_tokens": add_special_tokens,
            "method": "sliding windows, each token scored once, token-weighted over documents, full attention",
        },
    }
