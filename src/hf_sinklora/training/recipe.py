"""The whole recipe in one call: what ``hf-sinklora train`` runs.

Load a causal LM with ``attn_implementation="sf_attention"``, extend its context by linear
RoPE interpolation, set the SF-Attn settings, wrap it with the LoRA+ config and train with
:class:`SinkLoRATrainer` (TRL's ``SFTTrainer``) on SFT data; save, optionally push.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainSettings:
    """Settings of one training run (the CLI flags and config-file keys have these names)."""

    model: str = _opt(None, "base model: hub id or local directory (required)")
    dataset: str = _opt(None, "training data: .json/.jsonl/.csv/.parquet file, directory or datasets hub id (required)")
    target_length: int = _opt(None, "context length to reach; also SFTConfig.max_length (required)")
    output_dir: str = _opt(None, "where the adapter, checkpoints and card go (required)")
    max_steps: int = _opt(-1, "optimizer steps; -1 trains --epochs epochs")
    epochs: float = _opt(1.0, "epochs when --max-steps is -1")
    packing: bool = _opt(False, "pack examples into rows of --target-length tokens (padding-free, per-segment SF-Attn)")
    lr: float = _opt(2e-4, "learning rate")
    group_size_ratio: float = _opt(0.25, "SF-Attn group size as a fraction of each sequence, in (0, 1]")
    group_size: int | None = _opt(None, "fixed SF-Attn group size instead of the ratio")
    sink_tokens: int = _opt(4, "SF-Attn sink tokens per sequence (>= 0)")
    push_to_hub: str | None = _opt(None, "Hub repo id to push the adapter and card to at the end")
    resume: bool = _opt(False, "resume from the latest checkpoint in --output-dir (starts fresh if there is none)")
    dataset_split: str = _opt("train", "split of a hub dataset")
    eval_dataset: str | None = _opt(None, "evaluation data (same formats); loss and perplexity go on the card")
    batch_size: int = _opt(1, "per-device batch size")
    gradient_accumulation_steps: int = _opt(1, "gradient accumulation steps")
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    logging_steps: int = _opt(10, "log every N steps")
    save_steps: int = _opt(500, "save a checkpoint every N steps")
    save_total_limit: int | None = _opt(None, "keep at most N checkpoints")
    gradient_checkpointing: bool = _opt(True, "recompute activations in backward (less memory)")
    dtype: str = _opt("auto", f"dtype to load the model in, one of {DTYPES}")
    bf16: bool | None = _opt(None, "bf16 mixed precision (default: on where CUDA supports it)")
    seed: int = _opt(42, "random seed")
    report_to: str = _opt("none", "Trainer report_to (none, tensorboard, wandb, trackio ...)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Builds from a (config file) dict; keys may use dashes; unknown keys raise ``ValueError``."""
        values = {key.replace("-", "_"): value for key, value in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(known)}")
        for name in ("target_length", "max_steps", "epochs", "lr", "lora_dropout", "group_size_ratio"):
            if isinstance(values.get(name), str):  # YAML reads "2e-4" as a string
                try:
                    values[name] = (float if name in ("epochs", "lr", "lora_dropout", "group_size_ratio") else int)(
                        values[name])
                except ValueError:
                    raise ValueError(f"{name} must be a number, got {values[name]!r}") from None
        return cls(**values)

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad setting."""
        for name in ("model", "dataset", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required (flag --{name.replace('_', '-')} or config file key {name!r})")
        checks = [
            ("target_length", isinstance(self.target_length, int) and self.target_length >= 8, "an int >= 8"),
            ("max_steps", isinstance(self.max_steps, int) and (self.max_steps == -1 or self.max_steps >= 1),
             "-1 or an int >= 1"),
            ("epochs", isinstance(self.epochs, (int, float)) and self.epochs > 0, "a number > 0"),
            ("lr", isinstance(self.lr, (int, float)) and 0 < self.lr < 1, "a number in (0, 1)"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an int >= 1"),
            ("gradient_accumulation_steps",
             isinstance(self.gradient_accumulation_steps, int) and self.gradient_accumulation_steps >= 1, "an int >= 1"),
            ("logging_steps", isinstance(self.logging_steps, int) and self.logging_steps >= 1, "an int >= 1"),
            ("save_steps", isinstance(self.save_steps, int) and self.save_steps >= 1, "an int >= 1"),
            ("dtype", self.dtype in DTYPES, f"one of {DTYPES}"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")


def _dataset_label(source: str) -> str:
    """Hub ids as they are; local files by name only (no local paths in a public card)."""
    path = Path(source)
    return f"{path.name} (local file)" if path.exists() else source


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def build_trainer(settings: TrainSettings, callbacks: list[Any] | None = None) -> Any:
    """Model, data, LoRA config and :class:`SinkLoRATrainer` for ``settings`` (nothing trained yet)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig

    from ..attention.config import configure_sf_attention
    from .data import load_sft_dataset
    from .lora import sinklora_lora_config
    from .rope import extend_context
    from .trainer import SinkLoRATrainer

    settings.validate()
    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        settings.model, attn_implementation="sf_attention", dtype=_torch_dtype(settings.dtype)
    )
    extend_context(model, settings.target_length)
    tokenizer.model_max_length = settings.target_length
    configure_sf_attention(model, group_size_ratio=settings.group_size_ratio, group_size=settings.group_size,
                           num_sink_tokens=settings.sink_tokens)
    train_dataset = load_sft_dataset(settings.dataset, split=settings.dataset_split)
    eval_dataset = load_sft_dataset(settings.eval_dataset) if settings.eval_dataset else None
    bf16 = settings.bf16
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    args = SFTConfig(
        output_dir=settings.output_dir,
        max_steps=settings.max_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.target_length,
        packing=settings.packing,
        padding_free=settings.packing,
        logging_steps=settings.logging_steps,
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        eval_strategy="no",
        activation_checkpointing=settings.gradient_checkpointing,
        bf16=bf16,
        seed=settings.seed,
        report_to=settings.report_to,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    peft_config = sinklora_lora_config(model, r=settings.lora_r, alpha=settings.lora_alpha,
                                       dropout=settings.lora_dropout)
    return SinkLoRATrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        dataset_names=[_dataset_label(settings.dataset)],
    )


def run_training(settings: TrainSettings, callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Trains, evaluates (with ``eval_dataset``), saves to ``output_dir`` and pushes (``push_to_hub``).

    Returns:
        A summary dict (steps, losses, time, paths).

    Raises:
        ValueError: a bad setting (named), or bad data.
    """
    from transformers.trainer_utils import get_last_checkpoint

    started = time.perf_counter()
    trainer = build_trainer(settings, callbacks)
    checkpoint = None
    if settings.resume:
        output_dir = Path(settings.output_dir)
        checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if checkpoint is None:
            logger.warning("--resume: no checkpoint in %s; training from the start", output_dir)
        else:
            logger.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.save_model()
    pushed = None
    if settings.push_to_hub and trainer.is_world_process_zero():
        from ..hub.push import push_adapter

        pushed = push_adapter(settings.output_dir, settings.push_to_hub)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "output_dir": settings.output_dir,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "eval_loss": metrics.get("eval_loss"),
        "eval_perplexity": math.exp(metrics["eval_loss"]) if "eval_loss" in metrics else None,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "seconds": round(time.perf_counter() - started, 2),
        "pushed_to": settings.push_to_hub if pushed is not None else None,
        "main_process": trainer.is_world_process_zero(),
    }
    return summary
