"""A small base model pretrained for real at a short context, cached between runs.

The demo and the paper reproduction need a model that has *learned* a short context
before its context is extended: a random model has nothing to extend. This trains a
byte-level BPE tokenizer and a small Llama (full attention, stock ``Trainer``) on the given
texts, and keeps the result in a cache directory keyed by the recipe and the corpus, so a
second run loads it instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from .._paths import default_cache_dir
from ..data.local_corpus import chunk_token_ids, train_bpe_tokenizer

logger = logging.getLogger(__name__)
RECIPE_FILE = "base_model_recipe.json"
# "tokens": language modelling on every token, averaged over the batch's tokens (the old loss).
# "rows": generated long-range rows score only their retrieval targets (passkey digits, copied
# tokens, queried values), text rows every token; each row's mean, then the mean over rows, so
# a row with 5 target tokens weighs as much as a text row (retrieval is not drowned by text).
LOSSES = ("tokens", "rows")
INDUCTION_KINDS = ("tokens", "periodic")


@dataclass(frozen=True)
class BaseModelRecipe:
    """Shape and training of the base model (defaults: ~2.6M parameters, minutes on 2 CPU cores).

    The defaults build the demo's text-only base. A base that *uses* its context (issue 9,
    ``benchmarks/long_context.py``) sets ``mixture`` (long-range documents beside text, see
    :func:`.long_range.mixture_examples`), ``loss="rows"`` and ``induction_steps`` (a first phase
    on random-token repeats: copying by content forms there after a plateau of ~2000 steps, and it
    is what survives RoPE interpolation; without it, fine-tuning at 4L did not bring retrieval back).
    Every field is part of the cache key; fields added later are left out of it at their defaults.
    """

    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 256
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0
    # Added for long-context bases (issue 9); at their defaults they leave the model, and its
    # cache key, as before: BPE that merges digits, text-only rows, steps // 20 warm-up steps.
    individual_digits: bool = False
    add_bos: bool = False
    mixture: tuple[tuple[str, float], ...] = ()
    warmup_steps: int | None = None
    max_grad_norm: float = 1.0
    loss: str = "tokens"
    # A first phase before the one above: ``induction_steps`` steps on rows of uniformly random
    # tokens with repeated passages (mixture kind "tokens"), scored on the copied tokens only, at
    # a constant ``induction_learning_rate``. Copying by content (induction heads) forms there after
    # a plateau, and that mechanism, unlike a position-bound one, survives RoPE interpolation.
    induction_steps: int = 0
    induction_learning_rate: float = 2e-3
    # The rows of that phase: "tokens" (random tokens with a few passages copied at any distance;
    # the phase change came after ~2300 steps) or "periodic" (one random pattern repeated through
    # the row: it came after ~450 steps and transferred to single far copies, docs/results.md).
    induction_kind: str = "tokens"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "context_length", "steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise ValueError(f"warmup_steps must be None or an int >= 0, got {self.warmup_steps!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "rows" and not self.mixture:
            raise ValueError('loss="rows" needs a mixture (text-only rows have no retrieval targets)')
        if not isinstance(self.induction_steps, int) or self.induction_steps < 0:
            raise ValueError(f"induction_steps must be an int >= 0, got {self.induction_steps!r}")
        if self.induction_kind not in INDUCTION_KINDS:
            raise ValueError(f"induction_kind must be one of {INDUCTION_KINDS}, got {self.induction_kind!r}")
        if not self.induction_learning_rate > 0:
            raise ValueError(f"induction_learning_rate must be > 0, got {self.induction_learning_rate!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.mixture:
            # accept any mapping-like pairs, store as a sorted tuple of (kind, weight) (hashable, one spelling)
            pairs = tuple(sorted((str(k), float(w)) for k, w in dict(self.mixture).items()))
            object.__setattr__(self, "mixture", pairs)
            from .long_range import _counts

            _counts(dict(pairs), 1)  # validates kinds and weights

    @property
    def warmup(self) -> int:
        """Warm-up steps: ``warmup_steps``, or ``max(1, steps // 20)`` when None."""
        return max(1, self.steps // 20) if self.warmup_steps is None else self.warmup_steps


_ADDED_DEFAULTS = {"individual_digits": False, "add_bos": False, "mixture": (), "warmup_steps": None, "max_grad_norm": 1.0,
                   "loss": "tokens", "induction_steps": 0, "induction_learning_rate": 2e-3,
                   "induction_kind": "tokens"}


def row_mean_target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over rows of each row's mean next-token NLL over its labelled tokens (rows without
    labels are skipped).

    Args:
        logits: ``(B, T, V)``; position ``t`` predicts token ``t + 1``.
        labels: ``(B, T)``, -100 where unscored.
    """
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape)
    scored = (targets != -100).float()
    per_row = (nll * scored).sum(1) / scored.sum(1).clamp(min=1)
    return per_row[scored.sum(1) > 0].mean()


class RowMeanLossTrainer(Trainer):
    """``Trainer`` whose loss is :func:`row_mean_target_loss`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        labels = inputs.pop("labels")  # (B, T), -100 where unscored
        outputs = model(**inputs, use_cache=False)
        loss = row_mean_target_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


def recipe_key_fields(recipe: BaseModelRecipe) -> dict:
    """The recipe as the cache key sees it: fields added later are left out while at their
    defaults, so bases cached before they existed keep their key; a mixture adds the
    long-range generators' version (their rows are part of what was trained)."""
    values = asdict(recipe)
    key = {k: v for k, v in values.items() if k not in _ADDED_DEFAULTS or v != _ADDED_DEFAULTS[k]}
    if not recipe.induction_steps:  # the settings of a phase that does not run are not part of the model
        key.pop("induction_learning_rate", None)
        key.pop("induction_kind", None)
    if recipe.mixture or recipe.induction_steps:
        from .long_range import GENERATOR_VERSION

        key["generator_version"] = GENERATOR_VERSION
    return key


def _cache_key(texts: list[str], recipe: BaseModelRecipe) -> str:
    digest = hashlib.sha256(json.dumps(recipe_key_fields(recipe), sort_keys=True).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:16]


def _train_phase(model: Any, tokenizer: Any, recipe: BaseModelRecipe, output_dir: Path, *, rows: list[list[int]],
                 labels: list[list[int]] | None, steps: int, learning_rate: float, scheduler: str, warmup: int) -> list[float]:
    """``steps`` steps of the stock ``Trainer`` (or :class:`RowMeanLossTrainer` with ``labels``) on ``rows``.

    Returns:
        The logged training losses.
    """
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"), max_steps=steps, per_device_train_batch_size=recipe.batch_size,
        learning_rate=learning_rate, lr_scheduler_type=scheduler, warmup_steps=warmup,
        max_grad_norm=recipe.max_grad_norm, weight_decay=0.01, logging_steps=max(1, steps // 10), save_strategy="no",
        report_to="none", seed=recipe.seed, dataloader_pin_memory=torch.cuda.is_available(),
    )
    if labels is None:
        trainer = Trainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": rows}),
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
    else:
        trainer = RowMeanLossTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_dict({"input_ids": rows, "labels": labels}),
            data_collator=default_data_collator,
        )
    trainer.train()
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def pretrain_base_model(texts: list[str], recipe: BaseModelRecipe, output_dir: str | Path) -> Path:
    """Trains the tokenizer and the model on ``texts``; saves both (and the recipe) to ``output_dir``.

    Args:
        texts: training documents. Without ``recipe.mixture``: concatenated (``</s>`` between)
            and cut into rows of ``recipe.context_length`` tokens. With it: ``steps *
            batch_size`` rows of that length drawn by :func:`.long_range.pretraining_rows`
            (natural-text windows, varied-filler passkey prompts, repeated passages, key-value
            lists, in the mixture's proportions), each row seen once; with ``recipe.loss ==
            "rows"`` the generated rows score only their retrieval targets (:class:`RowMeanLossTrainer`).
            With ``recipe.induction_steps``, a first phase trains on ``induction_steps *
            batch_size`` random-token rows of ``recipe.induction_kind`` (their copied tokens
            scored) at a constant ``induction_learning_rate``.

    Returns:
        ``output_dir``, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.
    """
    set_seed(recipe.seed)
    output_dir = Path(output_dir)
    tokenizer = train_bpe_tokenizer(texts, recipe.vocab_size, individual_digits=recipe.individual_digits,
                                    add_bos=recipe.add_bos)
    labels = None
    source = None
    if recipe.mixture or recipe.induction_steps:
        from .long_range import TextSource

        source = TextSource(tokenizer, texts)
    if recipe.mixture:
        from .long_range import pretraining_examples

        examples = pretraining_examples(source, recipe.context_length, recipe.steps * recipe.batch_size,
                                        dict(recipe.mixture), seed=recipe.seed)
        rows = [e["input_ids"] for e in examples]
        labels = [e["labels"] for e in examples] if recipe.loss == "rows" else None
    else:
        rows = chunk_token_ids(tokenizer, texts, recipe.context_length)
    if not rows:
        raise ValueError(f"the texts hold fewer than context_length={recipe.context_length} tokens")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, max_position_embeddings=recipe.context_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    record: dict[str, Any] = {}
    if recipe.induction_steps:
        from .long_range import mixture_examples

        induction = mixture_examples(source, recipe.context_length, recipe.induction_steps * recipe.batch_size,
                                     {recipe.induction_kind: 1.0}, seed=recipe.seed + 1)
        logger.info("induction phase: %d steps on %s rows", recipe.induction_steps, recipe.induction_kind)
        record["induction_losses"] = _train_phase(
            model, tokenizer, recipe, output_dir, rows=[e["input_ids"] for e in induction],
            labels=[e["labels"] for e in induction], steps=recipe.induction_steps,
            learning_rate=recipe.induction_learning_rate, scheduler="constant", warmup=0)
    logger.info("pretraining a %.2fM-parameter Llama on %d rows of %d tokens for %d steps",
                model.num_parameters() / 1e6, len(rows), recipe.context_length, recipe.steps)
    record["losses"] = _train_phase(model, tokenizer, recipe, output_dir, rows=rows, labels=labels, steps=recipe.steps,
                                    learning_rate=recipe.learning_rate, scheduler="cosine", warmup=recipe.warmup)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / RECIPE_FILE).write_text(json.dumps({**asdict(recipe), "train_rows": len(rows), **record}, indent=2))
    return output_dir


def cached_base_model(texts: list[str], recipe: BaseModelRecipe, cache_dir: str | Path | None = None) -> tuple[Path, bool]:
    """The base model for ``(texts, recipe)``: loaded from the cache, or pretrained into it.

    The model is trained in a temporary directory beside its final place and renamed into
    it, so an interrupted run never leaves a half-written model behind.

    Returns:
        ``(path, was_cached)``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "base_models"
    path = root / _cache_key(texts, recipe)
    if (path / RECIPE_FILE).exists():
        logger.info("base model loaded from the cache: %s", path)
        return path, True
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        pretrain_base_model(texts, recipe, staging)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, False
