"""The LM head on scored positions only, where TRL's fused LM head would project every position.

TRL's ``SFTTrainer`` computes the loss through a fused LM head that projects only the positions
whose next-token label is scored, but only where its Triton kernel runs (CUDA, XPU). Elsewhere
(the CPU, MPS) it projects *every* position, tile by tile in torch ops, which on a CPU takes
about twice as long as the model's own head and loss. :class:`~hf_sinklora.training.SinkLoRATrainer`
then asks the model itself for the logits of the positions some row scores
(``logits_to_keep``) with the matching pre-shifted labels (``shift_labels``): the same loss,
computed by the model's own ``loss_function``, with the head run on those positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.utils import is_triton_available

IGNORE_INDEX = -100


def fused_head_projects_every_position(device: torch.device) -> bool:
    """Whether TRL's fused LM head projects every position on ``device`` (no Triton kernel there)."""
    return not (device.type in ("cuda", "xpu") and is_triton_available())


def scored_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose next token some row scores, and those next tokens.

    Args:
        labels: ``(B, T)`` token ids, ``-100`` where a token is not scored (the causal-LM
            convention: position ``t`` predicts ``labels[:, t + 1]``).

    Returns:
        ``positions``: ``(K,)`` int64, ascending: the ``t`` with ``labels[b, t + 1] != -100``
        for some row ``b``; ``shift_labels``: ``(B, K)``, ``labels[:, positions + 1]``
        (``-100`` in rows that do not score that position).
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T): the label position t predicts
    positions = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    return positions, shifted[:, positions].contiguous()


@torch.no_grad()
def token_statistics(logits: torch.Tensor, shift_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the scored tokens, as ``SFTTrainer`` logs them.

    Args:
        logits: ``(B, K, V)`` logits of the kept positions.
        shift_labels: ``(B, K)`` the token each position predicts, ``-100`` where unscored.

    Returns:
        ``{"scored": count, "entropy_sum": sum of the predictive entropies (nats),
        "correct": count whose argmax (the first maximum) is the label}``, 0-d tensors.
    """
    scored = shift_labels != IGNORE_INDEX
    logits = logits[scored].float()  # (N, V)
    log_probs = logits.log_softmax(dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    correct = logits.argmax(dim=-1) == shift_labels[scored]
    return {"scored": scored.sum(), "entropy_sum": entropy.sum(), "correct": correct.sum()}
