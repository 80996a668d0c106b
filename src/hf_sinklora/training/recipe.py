"""The whole recipe in one call: what ``hf-sinklora train`` runs.

Load a causal LM with ``attn_implementation="sf_attention"``, extend its context by linear
RoPE interpolation, set the SF-Attn settings, wrap it with the LoRA+ config and train with
:class:`SinkLoRATrainer` (TRL's ``SFTTrainer``) on SFT data; save, optionally push.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._checks import DTYPE_NAMES, is_int, is_number, torch_dtype
from ..attention.config import SFAttentionConfig
from .runs import (
    SaveOnInterrupt,
    TrainingInterrupted,
    latest_complete_checkpoint,
    checkpoint_step,
    prepare_output_dir,
    record_run,
)

logger = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = {"sf": "sf_attention", "s2": "s2_attention", "full": "sdpa"}
"""Training attention of ``TrainSettings.attention``: SF-Attn, S2-Attn (the ablation, no sinks), full causal."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _required(help: str) -> Any:
    return field(metadata={"help": help + " (required)"})


@dataclass
class TrainSettings:
    """Settings of one training run: the ``train`` CLI flags and config-file keys have these names.

    Every caller of the recipe (the CLI, the demo, the benchmarks) builds one of these and
    hands it to :func:`build_trainer` / :func:`run_training`. Invalid values raise
    ``ValueError`` naming the setting, when the object is built.
    """

    model: str = _required("base model: hub id, local directory or .gguf file")
    dataset: str = _required("training data: .json/.jsonl/.csv/.parquet file, directory or datasets hub id "
                             "(with train_dataset= in Python: only the name the card shows)")
    target_length: int = _required("context length to reach; also SFTConfig.max_length")
    output_dir: str = _required("where the adapter, checkpoints and card go")
    attention: Literal["sf", "s2", "full"] = _opt(
        "sf", "attention while training: sf (SF-Attn), s2 (S2-Attn, no sinks; ablation) or full (causal SDPA)")
    max_steps: int = _opt(-1, "optimizer steps; -1 trains --epochs epochs")
    epochs: float = _opt(1.0, "epochs when --max-steps is -1")
    packing: bool = _opt(False, "pack examples into rows of --target-length tokens (padding-free, per-segment SF-Attn)")
    lr: float = _opt(2e-4, "peak learning rate")
    lr_scheduler_type: str = _opt("cosine", "learning-rate schedule (any transformers SchedulerType)")
    warmup_steps: float = _opt(0.05, "linear warm-up: steps, or a fraction of the run when < 1")
    group_size_ratio: float = _opt(0.25, "SF-Attn group size as a fraction of each sequence, in (0, 1]")
    group_size: int | None = _opt(None, "fixed SF-Attn group size instead of the ratio")
    sink_tokens: int = _opt(4, "SF-Attn sink tokens per sequence (>= 0)")
    shifted_head_ratio: float = _opt(0.5, "fraction of heads whose groups are shifted by half a group, in [0, 1]")
    within_context: bool = _opt(False, "allow a target_length within the model's context: fine-tune there with no "
                                "RoPE change (in-window studies); off, such a target is refused")
    push_to_hub: str | None = _opt(None, "Hub repo id to push the adapter and card to at the end")
    resume: bool = _opt(False, "resume the run in --output-dir from its latest complete checkpoint (same settings; "
                        "a larger --max-steps extends it, and the learning-rate schedule is rebuilt for the new length)")
    overwrite: bool = _opt(False, "clear --output-dir first when it holds another run")
    dataset_split: str = _opt("train", "split of a hub dataset")
    eval_dataset: str | None = _opt(None, "evaluation data (same formats); loss and perplexity go on the card")
    batch_size: int = _opt(1, "per-device batch size")
    gradient_accumulation_steps: int = _opt(1, "gradient accumulation steps")
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    logging_steps: int = _opt(10, "log every N steps")
    save_steps: int = _opt(500, "save a checkpoint every N steps; 0 saves only the final adapter")
    save_total_limit: int | None = _opt(None, "keep at most N checkpoints")
    gradient_checkpointing: bool = _opt(True, "recompute activations in backward (less memory)")
    dtype: Literal[DTYPE_NAMES] = _opt("auto", "dtype to load the model in")
    bf16: bool | None = _opt(None, "bf16 mixed precision (default: on where CUDA supports it)")
    seed: int = _opt(42, "random seed")
    report_to: str = _opt("none", "Trainer report_to (none, tensorboard, wandb, trackio ...)")
    disable_tqdm: bool = _opt(False, "no progress bars")

    def __post_init__(self) -> None:
        self.validate()
        local = Path(self.model).expanduser()
        if local.exists():  # recorded as an absolute path, so the adapter loads from anywhere
            self.model = str(local.resolve())

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad setting."""
        for name in ("model", "dataset", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} is required (flag --{name.replace('_', '-')} or config file key {name!r})")
        positive = ("batch_size", "gradient_accumulation_steps", "logging_steps", "lora_r", "lora_alpha")
        checks = [
            ("target_length", is_int(self.target_length) and self.target_length >= 8, "an int >= 8"),
            ("attention", self.attention in ATTENTION_IMPLEMENTATIONS, f"one of {sorted(ATTENTION_IMPLEMENTATIONS)}"),
            ("max_steps", is_int(self.max_steps) and (self.max_steps == -1 or self.max_steps >= 1),
             "-1 or an int >= 1"),
            ("epochs", is_number(self.epochs) and self.epochs > 0, "a number > 0"),
            ("lr", is_number(self.lr) and 0 < self.lr < 1, "a number in (0, 1)"),
            ("warmup_steps", is_number(self.warmup_steps) and self.warmup_steps >= 0, "a number >= 0"),
            ("lora_dropout", is_number(self.lora_dropout) and 0 <= self.lora_dropout < 1, "a number in [0, 1)"),
            ("save_steps", is_int(self.save_steps) and self.save_steps >= 0, "an int >= 0"),
            ("dtype", self.dtype in DTYPE_NAMES, f"one of {DTYPE_NAMES}"),
            *((name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1") for name in positive),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        SFAttentionConfig(**self.sf_attention_settings())  # its own range checks, named

    def sf_attention_settings(self) -> dict[str, Any]:
        """The ``configure_sf_attention`` keywords these settings stand for."""
        return dict(group_size_ratio=self.group_size_ratio, group_size=self.group_size,
                    num_sink_tokens=self.sink_tokens, shifted_head_ratio=self.shifted_head_ratio)


def check_model_and_target(settings: TrainSettings) -> None:
    """What can be checked before anything heavy loads: the model is there, the target extends it,
    a push can authenticate.

    Raises:
        ValueError: one line naming the problem.
    """
    from huggingface_hub import get_token

    from ..hub.loading import model_config_or_error

    config = model_config_or_error(settings.model)
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    if context is not None and settings.target_length <= context:
        if not settings.within_context:
            raise ValueError(f"target_length={settings.target_length} is not above the model's context "
                             f"(max_position_embeddings={context}): nothing would be extended "
                             "(--within-context, within_context=True in Python, trains inside it on purpose)")
        logger.warning("within_context: target_length=%d is within the model's context (max_position_embeddings=%d); "
                       "training there with RoPE unchanged", settings.target_length, context)
    if settings.push_to_hub and get_token() is None:
        raise ValueError(f"push_to_hub={settings.push_to_hub!r} needs a Hugging Face token: "
                         "run `hf auth login` or set HF_TOKEN (checked before training)")


def _dataset_label(source: str) -> str:
    """Hub ids as they are; local files by name only (no local paths in a public card)."""
    path = Path(source)
    return f"{path.name} (local file)" if path.exists() else source


def sft_config(settings: TrainSettings) -> Any:
    """The ``trl.SFTConfig`` of the recipe for ``settings``."""
    import torch
    from trl import SFTConfig

    bf16 = settings.bf16
    if bf16 is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return SFTConfig(
        output_dir=settings.output_dir,
        max_steps=settings.max_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.target_length,
        packing=settings.packing,
        padding_free=settings.packing,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=settings.save_total_limit,
        eval_strategy="no",
        activation_checkpointing=settings.gradient_checkpointing,
        bf16=bf16,
        seed=settings.seed,
        report_to=settings.report_to,
        disable_tqdm=settings.disable_tqdm,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def build_trainer(settings: TrainSettings, *, train_dataset: Any = None, callbacks: list[Any] | None = None) -> Any:
    """Model, data, LoRA+ config and :class:`SinkLoRATrainer` for ``settings`` (nothing trained yet).

    The recipe: load with the training attention, extend the context by linear RoPE
    interpolation to ``target_length``, set the SF-Attn settings, wrap with LoRA+ and build
    TRL's trainer on the SFT data.

    Args:
        train_dataset: an in-memory ``datasets.Dataset`` (any format of
            :func:`~hf_sinklora.training.data.load_sft_dataset`, tokenized ``input_ids``
            included) used instead of reading ``settings.dataset``, which then only names it.
        callbacks: ``transformers.TrainerCallback`` objects for the trainer.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from ..attention.config import configure_sf_attention
    from ..hub.gguf import load_pretrained
    from ..rope import extend_context
    from .data import load_sft_dataset
    from .lora import sinklora_lora_config
    from .trainer import SinkLoRATrainer

    check_model_and_target(settings)
    source = train_dataset if train_dataset is not None else settings.dataset
    train = load_sft_dataset(source, split=settings.dataset_split)  # bad data fails before the model loads
    eval_dataset = load_sft_dataset(settings.eval_dataset) if settings.eval_dataset else None
    set_seed(settings.seed)
    tokenizer = load_pretrained(AutoTokenizer, settings.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_pretrained(
        AutoModelForCausalLM, settings.model, attn_implementation=ATTENTION_IMPLEMENTATIONS[settings.attention],
        dtype=torch_dtype(settings.dtype),
    )
    extend_context(model, settings.target_length)
    tokenizer.model_max_length = settings.target_length
    # TRL tokenizes whole examples, then truncates to max_length and SinkLoRATrainer reports what was
    # dropped: the tokenizer's "longer than the specified maximum" warning (its own warn-once flag) is noise
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    configure_sf_attention(model, **settings.sf_attention_settings())
    peft_config = sinklora_lora_config(model, r=settings.lora_r, alpha=settings.lora_alpha,
                                       dropout=settings.lora_dropout)
    trainer = SinkLoRATrainer(
        model=model,
        args=sft_config(settings),
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        dataset_names=[_dataset_label(settings.dataset)],
        eval_dataset_name=_dataset_label(settings.eval_dataset) if settings.eval_dataset else None,
    )
    logger.info("%s: %s attention, %d trainable parameters, context %d", settings.model,
                ATTENTION_IMPLEMENTATIONS[settings.attention],
                sum(p.numel() for p in trainer.model.parameters() if p.requires_grad), settings.target_length)
    return trainer


def run_training(
    settings: TrainSettings, *, train_dataset: Any = None, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """Trains, evaluates (with ``eval_dataset``), saves to ``output_dir`` and pushes (``push_to_hub``).

    ``train_dataset`` and ``callbacks`` are those of :func:`build_trainer`.

    Returns:
        A summary dict (steps, logged losses, time, paths).

    Raises:
        ValueError: a bad setting (named), bad data, or an ``output_dir`` that holds another run.
        TrainingInterrupted: SIGINT/SIGTERM arrived; a resumable checkpoint was saved first.
    """
    started = time.perf_counter()
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch, one process owns the directory
    record = dataclasses.asdict(settings)
    previous = None
    if main_process:
        previous = prepare_output_dir(settings.output_dir, record, resume=settings.resume, overwrite=settings.overwrite)
    checkpoint = latest_complete_checkpoint(settings.output_dir) if settings.resume else None
    reached = checkpoint_step(checkpoint) if checkpoint else 0
    if checkpoint and settings.max_steps != -1 and reached >= settings.max_steps:
        logger.info("--resume: %s already reached step %d (--max-steps %d): nothing to train; pass a larger "
                    "--max-steps to extend it", settings.output_dir, reached, settings.max_steps)
        return {"output_dir": settings.output_dir, "global_step": reached, "already_complete": True,
                "resumed_from": checkpoint, "main_process": main_process}
    if previous is not None and previous.get("max_steps") != settings.max_steps:
        logger.warning(
            "--resume: extending the run from %s to %s steps at step %d; the %s learning-rate schedule is rebuilt "
            "for the new length, so from here the rate follows the longer run's curve (for a decaying schedule, "
            "higher than where the shorter run left it)", previous.get("max_steps"), settings.max_steps, reached,
            settings.lr_scheduler_type)
    interrupt = SaveOnInterrupt()
    trainer = build_trainer(settings, train_dataset=train_dataset, callbacks=[*(callbacks or []), interrupt])
    if main_process:
        record_run(settings.output_dir, record, previous, at_step=reached)
    if settings.resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s yet; training from the start", settings.output_dir)
    elif checkpoint:
        logger.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if interrupt.signum is not None:
        raise TrainingInterrupted(interrupt.signum, latest_complete_checkpoint(settings.output_dir))
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    trainer.save_model()
    pushed = None
    if settings.push_to_hub and trainer.is_world_process_zero():
        from ..hub.push import push_adapter

        pushed = push_adapter(settings.output_dir, settings.push_to_hub)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "output_dir": settings.output_dir,
        "attention": ATTENTION_IMPLEMENTATIONS[settings.attention],
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "train_loss": result.training_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "losses": losses,
        "eval_loss": metrics.get("eval_loss"),
        "eval_perplexity": math.exp(metrics["eval_loss"]) if "eval_loss" in metrics else None,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "seconds": round(time.perf_counter() - started, 2),
        "pushed_to": settings.push_to_hub if pushed is not None else None,
        "main_process": trainer.is_world_process_zero(),
    }
    return summary
