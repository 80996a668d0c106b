"""Fine-tune any causal LM with SF-Attn through the stock transformers Trainer.

    python examples/finetune_sf_attention.py --model meta-llama/Llama-3.2-1B \
        --text-files book1.txt book2.txt --seq-len 8192 --max-steps 1000 --output-dir out

`--model` is a hub id or a local directory; the text files are concatenated, tokenized and
cut into rows of `--seq-len` tokens. The script changes nothing in the model class: it only
asks for `attn_implementation="sf_attention"` and stores the SF-Attn settings on the config,
so the saved model reloads with them. This is full-parameter training on fixed-length rows.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

import hf_sinklora


def rows_of_tokens(tokenizer, files: list[str], seq_len: int) -> datasets.Dataset:
    ids: list[int] = []
    for path in files:
        ids.extend(tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    rows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not rows:
        raise ValueError(f"--text-files hold {len(ids)} tokens, fewer than --seq-len {seq_len}")
    return datasets.Dataset.from_dict({"input_ids": rows})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local directory")
    parser.add_argument("--text-files", nargs="+", required=True)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--group-size-ratio", type=float, default=0.25)
    parser.add_argument("--sink-tokens", type=int, default=4)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sf_attention")
    hf_sinklora.configure_sf_attention(model, group_size_ratio=args.group_size_ratio, num_sink_tokens=args.sink_tokens)

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.output_dir,
            max_steps=args.max_steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            logging_steps=max(1, args.max_steps // 10),
            save_strategy="no",
            report_to="none",
        ),
        train_dataset=rows_of_tokens(tokenizer, args.text_files, args.seq_len),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)


if __name__ == "__main__":
    main()
