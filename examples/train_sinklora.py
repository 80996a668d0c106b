"""Extend a causal LM's context with the SinkLoRA recipe, through TRL's SFTTrainer.

    python examples/train_sinklora.py --model meta-llama/Llama-2-7b-hf \
        --dataset Yukang/LongAlpaca-12k --target-length 16384 --output-dir llama2-7b-sinklora-16k

    # the same script on several GPUs (DDP, FSDP or DeepSpeed; see docs/training.md)
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_sinklora.py ...

`--model` is a hub id or a local directory; `--dataset` a LongAlpaca-style or TRL-format
JSON/JSONL file, a directory of them, or a datasets hub id. The output directory holds the
adapter, the config with RoPE scaling and SF-Attn settings, the tokenizer and a model card;
`hf_sinklora.load_model(output_dir)` loads it for generation.

This script is the recipe written out to copy and change; `hf-sinklora train` runs the same
recipe (`hf_sinklora.training.recipe.build_trainer`), and a test checks that both build the
same trainer arguments and trainable parameters.

The recipe, step by step:
  1. load the model with attn_implementation="sf_attention" (SF-Attn while training);
  2. extend_context: linear RoPE position interpolation to --target-length;
  3. configure_sf_attention: group size ratio and sink tokens;
  4. sinklora_lora_config: LoRA on the attention projections + embeddings and norms trained;
  5. SinkLoRATrainer (trl.SFTTrainer) with loss on the responses, optionally packed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig

import hf_sinklora
from hf_sinklora.training.runs import end_process_group


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local directory")
    parser.add_argument("--dataset", required=True, help="JSON/JSONL file, directory or datasets hub id")
    parser.add_argument("--target-length", type=int, required=True, help="context length to reach")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--packing", action="store_true", help="pack examples (padding-free)")
    parser.add_argument("--group-size-ratio", type=float, default=0.25)
    parser.add_argument("--sink-tokens", type=int, default=4)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    return parser.parse_args(argv)


def build_trainer(args: argparse.Namespace) -> hf_sinklora.SinkLoRATrainer:
    """Steps 1-5 of the recipe; nothing is trained yet."""
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sf_attention", dtype="auto")
    hf_sinklora.extend_context(model, args.target_length)
    tokenizer.model_max_length = args.target_length
    hf_sinklora.configure_sf_attention(model, group_size_ratio=args.group_size_ratio, num_sink_tokens=args.sink_tokens)

    return hf_sinklora.SinkLoRATrainer(
        model=model,
        args=SFTConfig(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,  # 5% of the run
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            max_length=args.target_length,
            packing=args.packing,
            padding_free=args.packing,
            activation_checkpointing=not args.no_gradient_checkpointing,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            logging_steps=args.logging_steps,
            save_steps=args.save_steps,
            seed=args.seed,
            report_to="none",
            dataloader_pin_memory=torch.cuda.is_available(),
        ),
        train_dataset=hf_sinklora.load_sft_dataset(args.dataset),
        processing_class=tokenizer,
        peft_config=hf_sinklora.sinklora_lora_config(model, r=args.lora_r, alpha=args.lora_alpha),
        # hub ids go into the card's metadata; local files by name only
        dataset_names=[f"{Path(args.dataset).name} (local file)" if Path(args.dataset).exists() else args.dataset],
    )


def train(args: argparse.Namespace) -> None:
    """Trains, saves ``args.output_dir`` and pushes it (``--push-to-hub``)."""
    trainer = build_trainer(args)
    checkpoint = get_last_checkpoint(args.output_dir) if args.resume and Path(args.output_dir).is_dir() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # adapter + config.json (RoPE, sf_attention) + tokenizer + README.md card
    if args.push_to_hub and trainer.is_world_process_zero():
        hf_sinklora.push_adapter(args.output_dir, args.push_to_hub)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(args)
    end_process_group()  # after train() returned: the trainer's DDP model must not outlive the group


if __name__ == "__main__":
    main()
