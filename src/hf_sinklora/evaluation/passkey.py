"""Passkey retrieval: greedy answers to passkey prompts, exact match, accuracy by length x depth."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .loading import model_device
from .passkey_prompt import check_depth, extract_key, make_passkey_prompt

logger = logging.getLogger(__name__)

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.inference_mode()
def greedy_answer(
    model: Any,
    input_ids: Sequence[int],
    max_new_tokens: int,
    *,
    pad_token_id: int | None = None,
    cache_factory: Callable[[int], Any] | None = None,
    prefill_chunk_size: int | None = None,
) -> list[int]:
    """Greedy continuation of one prompt with ``model.generate``.

    Args:
        input_ids: the prompt, ``n`` token ids (run as a ``(1, n)`` batch).
        cache_factory: when given, called with the prompt's token count once per prompt for a
            fresh ``Cache`` passed to ``generate(cache=...)`` (e.g. an ``H2OCache``).
        prefill_chunk_size: ``generate(prefill_chunk_size=...)``: the prompt goes through in chunks.

    Returns:
        The generated token ids (prompt excluded), at most ``max_new_tokens`` of them.
    """
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=model_device(model))  # (1, n)
    kwargs: dict[str, Any] = {}
    if cache_factory is not None:
        kwargs["cache"] = cache_factory(ids.shape[1])
    if prefill_chunk_size is not None:
        kwargs["prefill_chunk_size"] = prefill_chunk_size
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
        **kwargs,
    )  # (1, n + new)
    return output[0, ids.shape[1] :].tolist()


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    lengths = list(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one prompt length")
    for length in lengths:
        if not isinstance(length, int) or length < 2:
            raise ValueError(f"lengths must be integers >= 2, got {length!r}")
    return lengths


def _depth_key(depth: float) -> str:
    return f"{depth:g}"


def passkey_accuracy(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int],
    depths: Sequence[float] = DEFAULT_DEPTHS,
    trials: int = 5,
    seed: int = 0,
    *,
    key_digits: int = 5,
    max_new_tokens: int | None = None,
    cache_factory: Callable[[int], Any] | None = None,
    prefill_chunk_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Passkey-retrieval accuracy of ``model`` for every (length, depth) cell.

    Each trial draws a random ``key_digits``-digit key (from ``random.Random(seed)``, so the
    keys depend only on the arguments, never on the model), builds the prompt with
    :func:`make_passkey_prompt`, generates greedily and counts an answer correct when its
    first run of digits equals the key exactly. The model runs in eval mode (full causal
    attention for ``sf_attention``) and is put back in the mode it was in.

    Args:
        lengths: prompt lengths in tokens of ``tokenizer``.
        depths: key depths in ``[0, 1]``.
        trials: prompts per cell (``>= 1``).
        max_new_tokens: tokens to generate; None: the key's token count plus 2.
        cache_factory: called with each prompt's token count for a fresh ``Cache``, passed to
            ``generate(cache=...)`` (e.g. ``lambda n: eviction_cache("h2o", 0.25, n)``).
        prefill_chunk_size: prompts go through ``generate`` in chunks of this many tokens.

    Returns:
        ``{"accuracy", "per_length", "per_depth", "cells", "samples", "lengths", "depths",
        "trials", "seed", ...}``; ``cells`` holds one entry per (length, depth) with its
        accuracy, and ``samples`` every prompt's key, answer and prompt length.
    """
    lengths = _check_lengths(lengths)
    depths = [check_depth(d) for d in depths]
    if not depths:
        raise ValueError("depths must name at least one depth in [0, 1]")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 1 <= key_digits <= 20:
        raise ValueError(f"key_digits must be in [1, 20], got {key_digits}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 or None, got {max_new_tokens}")

    rng = random.Random(seed)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    samples: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        bar = tqdm(total=len(lengths) * len(depths) * trials, desc="passkey", unit="prompt", disable=not progress)
        for length in lengths:
            for depth in depths:
                cell_samples = []
                for trial in range(trials):
                    key = str(rng.randint(10 ** (key_digits - 1), 10**key_digits - 1))
                    prompt = make_passkey_prompt(tokenizer, length, depth, key)
                    budget = max_new_tokens or len(tokenizer(" " + key, add_special_tokens=False)["input_ids"]) + 2
                    generated = greedy_answer(
                        model, prompt.input_ids, budget, pad_token_id=pad_token_id, cache_factory=cache_factory,
                        prefill_chunk_size=prefill_chunk_size,
                    )
                    answer = tokenizer.decode(generated, skip_special_tokens=True)
                    cell_samples.append({
                        "length": length,
                        "depth": depth,
                        "trial": trial,
                        "key": key,
                        "answer": answer,
                        "correct": extract_key(answer) == key,
                        "prompt_tokens": len(prompt.input_ids),
                        "key_token_index": prompt.key_token_index,
                    })
                    bar.update(1)
                correct = sum(s["correct"] for s in cell_samples)
                cells.append({
                    "length": length,
                    "depth": depth,
                    "accuracy": correct / trials,
                    "correct": correct,
                    "trials": trials,
                    "mean_prompt_tokens": sum(s["prompt_tokens"] for s in cell_samples) / trials,
                })
                logger.info("passkey length %d depth %g: %d/%d", length, depth, correct, trials)
                samples.extend(cell_samples)
        bar.close()
    finally:
        model.train(was_training)

    def mean_accuracy(selected: list[dict[str, Any]]) -> float:
        return sum(c["correct"] for c in selected) / sum(c["trials"] for c in selected)

    return {
        "accuracy": mean_accuracy(cells),
        "per_length": {str(L): mean_accuracy([c for c in cells if c["length"] == L]) for L in lengths},
        "per_depth": {_depth_key(d): mean_accuracy([c for c in cells if c["depth"] == d]) for d in depths},
        "cells": cells,
        "samples": samples,
        "lengths": lengths,
        "depths": depths,
        "trials": trials,
        "seed": seed,
        "key_digits": key_digits,
        "max_new_tokens": max_new_tokens,
    }
