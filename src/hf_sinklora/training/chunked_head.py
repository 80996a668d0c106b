"""The LM head and its loss over a long row's scored positions, a chunk of positions at a time.

A 15k-token row of a 49k-token vocabulary has 3 GB of float32 logits, and the loss holds their
log-softmax and their gradient beside them: on a 24 GB machine one training step at 16k peaked at
21 GB. Here each chunk of positions goes through the head and the cross-entropy under activation
checkpointing: the forward keeps only the chunk's hidden states, the backward recomputes one chunk's
logits at a time, so at most ``CHUNK_ELEMENTS`` logits (and their gradient) exist at once. The head
module itself is called, so peft's wrappers (``modules_to_save``) and tied embeddings behave as in
the model's own forward.

Only for models whose causal-LM head is ``lm_head(hidden)`` (and Gemma's ``final_logit_softcapping``),
listed in :data:`PLAIN_HEAD_MODEL_TYPES`; anything else keeps the model's own loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .scored_positions import IGNORE_INDEX, token_statistics

# model types whose ForCausalLM forward computes logits = head(hidden) (+ final_logit_softcapping)
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "gpt_neox", "olmo2"}
)
# scored positions x vocabulary above which the head runs in chunks (float32 logits: 256 MiB)
CHUNKED_HEAD_MIN_ELEMENTS = 2**26
# logits formed at once by one chunk (float32: 64 MiB)
CHUNK_ELEMENTS = 2**24


def plain_head_model(model: Any) -> bool:
    """Whether ``model``'s (a causal LM, unwrapped) logits are its output embeddings applied to the
    decoder's last hidden state, so that :func:`chunked_head_loss` computes the model's own loss."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
        and callable(getattr(model, "get_output_embeddings", None))
        and model.get_output_embeddings() is not None
        and hasattr(model, getattr(model, "base_model_prefix", "") or "\0")
    )


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                record: dict[str, Any] | None) -> torch.Tensor:
    """Summed cross-entropy of one chunk. Run twice under checkpointing (forward, then the recompute
    of backward): the first run also fills ``record`` with the chunk's :func:`token_statistics`."""
    logits = head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if record is not None and not record:
        record.update(token_statistics(logits[None], targets[None]))
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_head_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    statistics: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of ``head(hidden)`` against ``targets``, never forming all logits at once.

    Args:
        head: the output embeddings (``(H,) -> (V,)`` logits).
        hidden: ``(N, H)`` final hidden states of the scored positions.
        targets: ``(N,)`` the token each position predicts (all scored).
        softcap: Gemma's ``final_logit_softcapping``.
        num_items_in_batch: the divisor transformers' loss uses across gradient accumulation; None
            averages over ``N``.
        chunk_elements: positions x vocabulary per chunk.
        statistics: also return the entropy and accuracy sums (one more head pass per chunk, no graph).

    Returns:
        The loss (a 0-d tensor with a graph) and ``{"scored", "entropy_sum", "correct"}`` 0-d sums
        (empty without ``statistics``).
    """
    with torch.no_grad():  # the head's width, whatever wraps it (peft's modules_to_save, tied weights)
        vocabulary = head(hidden[:1]).shape[-1] if hidden.shape[0] else 1
    step = max(1, chunk_elements // vocabulary)
    total = hidden.new_zeros((), dtype=torch.float32)
    records: list[dict[str, Any]] = []
    for start in range(0, hidden.shape[0], step):
        record: dict[str, Any] | None = {} if statistics else None
        piece, wanted = hidden[start : start + step], targets[start : start + step]
        total = total + checkpoint(_chunk_loss, head, piece, wanted, softcap, record, use_reentrant=False)
        if record is not None:
            records.append(record)
    divisor = num_items_in_batch if num_items_in_batch is not None else max(1, hidden.shape[0])
    if torch.is_tensor(divisor):
        divisor = divisor.to(total.device)
    loss = total / divisor
    sums = {}
    if statistics:
        sums = {key: sum(record[key] for record in records) for key in ("scored", "entropy_sum", "correct")}
    return loss, sums

