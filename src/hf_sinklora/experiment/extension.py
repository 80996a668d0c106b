"""Context extension of a base model with the SinkLoRA recipe, under a chosen training attention.

The same recipe three ways: LoRA+ (LoRA on attention, embeddings and norms trained), linear
RoPE interpolation to ``target_length``, language-model fine-tuning through
:class:`~hf_sinklora.training.SinkLoRATrainer` (TRL's ``SFTTrainer``) on rows of
``target_length`` tokens; only the attention used in training differs: full causal attention
(``"full"``), shifted sparse attention without sinks (``"s2"``) or SF-Attn (``"sf"``).
Every model is evaluated afterwards with full attention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAINING_ATTENTION = {"full": "sdpa", "s2": "s2_attention", "sf": "sf_attention"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtensionRecipe:
    """How the context is extended (the SF-Attn settings also apply to ``"s2"``, without sinks)."""

    target_length: int
    steps: int = 150
    batch_size: int = 4
    learning_rate: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    group_size_ratio: float = 0.25
    shifted_head_ratio: float = 0.5
    num_sink_tokens: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_length", "steps", "batch_size", "lora_r", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


def extend_model(
    base_path: str | Path,
    rows: list[list[int]],
    method: str,
    recipe: ExtensionRecipe,
    output_dir: str | Path,
    *,
    dataset_name: str = "local text",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tunes ``base_path`` at ``recipe.target_length`` with ``method``'s attention; saves the adapter.

    Args:
        rows: token-id rows of exactly ``recipe.target_length`` tokens (language modelling).
        method: ``"full"``, ``"s2"`` or ``"sf"``.
        output_dir: receives the adapter, its config (RoPE scaling, ``sf_attention``), the
            tokenizer and the model card.

    Returns:
        ``{"output_dir", "losses", "train_seconds", "trainable_parameters"}``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig

    from ..attention.config import configure_sf_attention
    from ..training.lora import sinklora_lora_config
    from ..training.rope import extend_context
    from ..training.trainer import SinkLoRATrainer

    if method not in TRAINING_ATTENTION:
        raise ValueError(f"method must be one of {sorted(TRAINING_ATTENTION)}, got {method!r}")
    bad = [len(r) for r in rows if len(r) != recipe.target_length]
    if not rows or bad:
        raise ValueError(f"rows must be non-empty, each of target_length={recipe.target_length} tokens")
    set_seed(recipe.seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, attn_implementation=TRAINING_ATTENTION[method])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    extend_context(model, recipe.target_length)
    configure_sf_attention(model, group_size_ratio=recipe.group_size_ratio,
                           shifted_head_ratio=recipe.shifted_head_ratio, num_sink_tokens=recipe.num_sink_tokens)
    args = SFTConfig(
        output_dir=str(output_dir), max_steps=recipe.steps, per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, recipe.steps // 20),
        max_length=recipe.target_length, logging_steps=max(1, recipe.steps // 10), save_strategy="no",
        report_to="none", seed=recipe.seed, activation_checkpointing=False, disable_tqdm=not progress,
        dataloader_pin_memory=False, bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    trainer = SinkLoRATrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": rows}), processing_class=tokenizer,
        peft_config=sinklora_lora_config(model, r=recipe.lora_r, alpha=recipe.lora_alpha),
        dataset_names=[dataset_name],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    logger.info("extending %s to %d tokens with %s attention (%d trainable parameters)",
                base_path, recipe.target_length, TRAINING_ATTENTION[method], trainable)
    result = trainer.train()
    trainer.save_model()
    tokenizer.save_pretrained(output_dir)
    return {
        "output_dir": str(output_dir),
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "train_seconds": result.metrics.get("train_runtime"),
        "trainable_parameters": trainable,
    }
