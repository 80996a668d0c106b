"""``SinkLoRATrainer``: TRL's ``SFTTrainer`` whose every save is a complete SinkLoRA output.

Training is stock ``SFTTrainer`` (the model only needs ``attn_implementation="sf_attention"``),
except that where TRL's fused LM head would project every position (no Triton: the CPU, MPS) the
loss comes from the model's own head run on the scored positions only
(:mod:`hf_sinklora.training.scored_positions`): the same loss, about twice as fast on a CPU.
What this subclass adds is on the save side, for the final save and every checkpoint:

* ``config.json`` of the base model, with its RoPE scaling and ``sf_attention`` settings, next
  to the adapter (peft saves only ``adapter_config.json``, whose base would load unscaled);
* the recipe record and the model card ``README.md``, written *after* transformers/peft have
  saved (peft writes its generic card inside ``save_pretrained``), and instead of TRL's card
  that ``SFTTrainer`` writes into ``output_dir`` before each checkpoint.

Each save is staged and moved into place with the files that make it loadable last, so a killed
save never leaves a half-written adapter or card that loads.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import SFTTrainer

from .._checks import accepts_logits_to_keep
from .._warnings import without_known_deprecations
from ..hub.adapter_config import SinkLoRAAdapterConfig
from ..hub.card import CARD_FILE, recipe_record, render_model_card, write_model_card
from ..hub.files import staged_save, write_text_atomic
from . import chunked_head
from .chunked_head import chunked_head_loss, plain_head_model
from .scored_positions import (
    IGNORE_INDEX,
    fused_head_projects_every_position,
    scored_positions,
    token_statistics,
)

logger = logging.getLogger(__name__)


def format_log(step: int, logs: Mapping[str, Any]) -> str:
    """``step 10: loss=1.234 grad_norm=0.5 ...``: a Trainer log as numbers, not a dict of quoted strings."""
    shown = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in logs.items() if key != "total_flos")
    return f"step {step}: {shown}"


class NumericProgressCallback(ProgressCallback):
    """transformers' progress bar, writing each log with :func:`format_log`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(format_log(state.global_step, logs or {}))


class NumericPrinterCallback(PrinterCallback):
    """transformers' log printer (used without progress bars), printing with :func:`format_log`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero:
            print(format_log(state.global_step, logs or {}))


def save_sinklora_files(
    model: Any,
    output_dir: str | Path,
    *,
    datasets: Iterable[str] = (),
    training: Mapping[str, Any] | None = None,
    eval_results: Iterable[EvalResult | Mapping[str, Any]] = (),
    destination: str | Path | None = None,
) -> None:
    """Writes the base ``config.json`` (adapters only), ``sinklora_recipe.json`` and ``README.md``.

    Call after ``model.save_pretrained(output_dir)`` when saving without the trainer.

    Args:
        destination: where the files end up when ``output_dir`` is a staging folder moved there
            afterwards (:func:`~hf_sinklora.hub.files.staged_save`): the card's title and loading
            snippets name it. Default: ``output_dir``.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if getattr(model, "peft_config", None):
        config = copy.deepcopy(base.config)
        config.use_cache = True  # Trainer sets it to TrainingArguments.use_cache (False) while training
        SinkLoRAAdapterConfig.wrapping(config).save_pretrained(output_dir)
    record = recipe_record(model, datasets=datasets, training=training, eval_results=eval_results)
    final = Path(destination if destination is not None else output_dir)
    write_model_card(output_dir, record, load_path=str(final), model_name=final.name)


def _causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside a peft model (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def training_sequence_lengths(dataset: Any) -> list[int] | None:
    """Token count of every sequence the trainer sees: a packed row's sequences one by one (TRL's
    ``seq_lengths``, kept apart by padding-free attention), else each row's ``input_ids``; None
    for data without those columns or without a length (a streamed ``IterableDataset``)."""
    if not hasattr(dataset, "column_names") or not hasattr(dataset, "with_format"):
        return None
    import pyarrow.compute as pc

    columns = dataset.column_names
    if "seq_lengths" in columns:
        lengths = pc.list_flatten(dataset.with_format("arrow")[:]["seq_lengths"])
    elif "input_ids" in columns:
        lengths = pc.list_value_length(dataset.with_format("arrow")[:]["input_ids"])
    else:
        return None
    return [int(n) for n in lengths.to_pylist()]


class SinkLoRATrainer(SFTTrainer):
    """``trl.SFTTrainer`` that saves SinkLoRA outputs (config with RoPE + SF-Attn, model card).

    Takes every ``SFTTrainer`` argument, plus:

    Args:
        dataset_names: names of the training data for the card (hub ids become metadata).
        eval_dataset_name: name of ``eval_dataset`` for the card's evaluation results.
    """

    def __init__(self, *args: Any, dataset_names: Iterable[str] = (), eval_dataset_name: str | None = None,
                 **kwargs: Any) -> None:
        given = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        with without_known_deprecations():
            super().__init__(*args, **kwargs)
        for stock, numeric in ((ProgressCallback, NumericProgressCallback), (PrinterCallback, NumericPrinterCallback)):
            if self.pop_callback(stock) is not None:
                self.add_callback(numeric)
        self._forward_takes_logits_to_keep = accepts_logits_to_keep(self.model)
        self.dataset_names = [str(name) for name in dataset_names]
        self.eval_dataset_name = eval_dataset_name
        self._check_nothing_dropped(given)
        self._sequence_lengths = training_sequence_lengths(self.train_dataset)
        self._warn_when_sequences_are_short()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with without_known_deprecations():
            return super().train(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """``SFTTrainer``'s loss; where its fused LM head would project every position, the model's
        own loss on the logits of the positions some row scores (``logits_to_keep``, ``shift_labels``),
        with the same logged entropy, token accuracy and token count."""
        if return_outputs or not self._head_on_scored_positions_only(inputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        positions, shift_labels = scored_positions(inputs["labels"])
        if positions.numel() == 0:  # nothing scored: TRL's loss is a finite zero, a mean over no token is not
            return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self._long_enough_for_a_chunked_head(model, shift_labels):
            return self._chunked_head_loss(model, inputs, positions, shift_labels, num_items_in_batch)
        kept = {**inputs, "use_cache": False, "logits_to_keep": positions, "shift_labels": shift_labels}
        loss, outputs = Trainer.compute_loss(self, model, kept, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self._log_token_statistics(token_statistics(outputs.logits, shift_labels), inputs)
        return loss

    def _long_enough_for_a_chunked_head(self, model: Any, shift_labels: torch.Tensor) -> bool:
        """The batch's logits would exceed :data:`CHUNKED_HEAD_MIN_ELEMENTS`, the head is a plain one
        and one process trains (the decoder is called directly, outside a DDP/FSDP wrapper's forward)."""
        if self.accelerator.num_processes != 1:
            return False
        base = _causal_lm_of(self.accelerator.unwrap_model(model))
        if not plain_head_model(base):
            return False
        return shift_labels.numel() * base.config.vocab_size > chunked_head.CHUNKED_HEAD_MIN_ELEMENTS

    def _chunked_head_loss(self, model: Any, inputs: Mapping[str, Any], positions: torch.Tensor,
                           shift_labels: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
        """The model's loss with the head and cross-entropy run chunk by chunk (:mod:`.chunked_head`)."""
        base = _causal_lm_of(self.accelerator.unwrap_model(model))
        decoder = getattr(base, base.base_model_prefix)
        decoder_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "logits_to_keep")}
        hidden = decoder(**decoder_inputs, use_cache=False).last_hidden_state[:, positions]  # (B, K, H)
        scored = shift_labels != IGNORE_INDEX
        loss, sums = chunked_head_loss(
            base.get_output_embeddings(), hidden[scored], shift_labels[scored],
            softcap=getattr(base.config, "final_logit_softcapping", None), num_items_in_batch=num_items_in_batch,
        )
        self._log_token_statistics(sums, inputs)
        return loss

    def _head_on_scored_positions_only(self, inputs: Mapping[str, Any]) -> bool:
        """The plain LM loss (no custom loss, smoothing, ``loss_type`` other than ``"nll"``, MoE aux
        loss or sequence/context parallelism), on a device where TRL's fused head projects every
        position, through a model whose forward takes ``logits_to_keep``."""
        labels = inputs.get("labels")
        if labels is None or "shift_labels" in inputs or not fused_head_projects_every_position(labels.device):
            return False
        if (self.compute_loss_func is not None or self.label_smoother is not None or self.args.loss_type != "nll"
                or self.aux_loss_enabled or self.accelerator.parallelism_config is not None):
            return False
        return self._forward_takes_logits_to_keep

    def _log_token_statistics(self, sums: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
        """Records entropy, token accuracy and (training) the token count as ``SFTTrainer.compute_loss`` does."""
        mode = "train" if self.model.training else "eval"
        scored, entropy_sum, correct = (self.accelerator.gather_for_metrics(sums[k]).sum()
                                        for k in ("scored", "entropy_sum", "correct"))
        self._metrics[mode]["entropy"].append((entropy_sum / scored).item() if scored > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / scored).item() if scored > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum()
            else:  # padding-free rows carry position_ids instead
                tokens = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def _check_nothing_dropped(self, given: Any) -> None:
        """SFTTrainer silently drops examples whose response lies beyond ``max_length``: say so."""
        kept = self.train_dataset
        if not hasattr(given, "__len__") or not hasattr(kept, "__len__") or self.args.packing:
            return
        if len(kept) == 0:
            raise ValueError(
                f"no training example keeps any response token within max_length={self.args.max_length}: "
                f"all {len(given)} prompts are longer. Raise max_length (--target-length) or shorten the prompts"
            )
        if len(kept) < len(given):
            logger.warning("%d of %d examples dropped: their response starts after max_length=%d tokens",
                           len(given) - len(kept), len(given), self.args.max_length)

    def _warn_when_sequences_are_short(self) -> None:
        """One line when the longest training sequence is under half of ``max_length`` (the target):
        positions beyond it are never trained, whatever the RoPE scaling says."""
        lengths, target = self._sequence_lengths, self.args.max_length
        if not lengths or target is None or max(lengths) * 2 > target:
            return
        logger.warning(
            "the training sequences are far shorter than max_length=%d: the longest has %d tokens (median %d, %d "
            "sequences%s), so positions beyond %d are never trained; use rows as long as the target (LongAlpaca-style)",
            target, max(lengths), int(statistics.median(lengths)), len(lengths),
            "; packed rows keep their sequences apart" if self.args.packing else "", max(lengths))

    def _training_facts(self) -> dict[str, Any]:
        args, state = self.args, self.state
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        facts = {
            "trainer": "hf_sinklora.SinkLoRATrainer (trl.SFTTrainer)",
            "global_step": state.global_step,
            "epochs": round(state.epoch or 0.0, 4),
            "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "max_length": args.max_length,
            "packing": args.packing,
            "padding_free": bool(getattr(self, "padding_free", args.padding_free)),
            "completion_only_loss": getattr(self, "completion_only_loss", args.completion_only_loss),
        }
        if self._sequence_lengths:
            lengths = self._sequence_lengths
            facts["trained_sequence_tokens"] = (f"median {int(statistics.median(lengths))}, longest {max(lengths)} "
                                                f"({len(lengths)} sequences)")
            facts["longest_trained_sequence"] = max(lengths)
        if losses:
            facts["last_logged_loss"] = round(losses[-1], 4)
        return facts

    def _eval_results(self) -> list[dict[str, Any]]:
        """Loss and perplexity of the last evaluation, on the data named ``eval_dataset_name``
        (a hub id goes into the card's model-index; a local file into its text only)."""
        evals = [entry for entry in self.state.log_history if "eval_loss" in entry]
        if not evals:
            return []
        loss = evals[-1]["eval_loss"]
        name = self.eval_dataset_name or "held-out data"
        common = dict(task_type="text-generation", dataset_type=name, dataset_name=name, dataset_split="eval")
        return [
            {**common, "metric_type": "loss", "metric_value": round(loss, 4)},
            {**common, "metric_type": "perplexity", "metric_value": round(math.exp(min(loss, 50.0)), 4)},
        ]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Saves the weights, tokenizer and arguments (transformers/peft) plus the SinkLoRA files,
        all staged and moved into ``output_dir`` together (see :mod:`hf_sinklora.hub.files`)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            super()._save(output_dir, state_dict=state_dict)
            return
        with staged_save(output_dir) as staging:
            super()._save(str(staging), state_dict=state_dict)
            save_sinklora_files(
                self.accelerator.unwrap_model(self.model, keep_torch_compile=False), staging,
                datasets=self.dataset_names, training=self._training_facts(), eval_results=self._eval_results(),
                destination=output_dir,
            )

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """Writes the SinkLoRA card into ``output_dir`` (replaces TRL's generic card)."""
        if not self.is_world_process_zero():
            return
        record = recipe_record(
            self.accelerator.unwrap_model(self.model, keep_torch_compile=False),
            datasets=self.dataset_names or ([dataset_name] if dataset_name else []),
            training=self._training_facts(), eval_results=self._eval_results(),
        )
        load_path = self.args.hub_model_id or self.args.output_dir
        card = render_model_card(record, load_path=load_path, model_name=model_name,
                                 tags=[tags] if isinstance(tags, str) else tags or ())
        write_text_atomic(os.path.join(self.args.output_dir, CARD_FILE), str(card))
