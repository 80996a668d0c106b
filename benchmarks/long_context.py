"""Calibration for issue 9: does a small base use its context, and does the experiment discriminate?

End to end, on CPU:

1. a small Llama is pretrained at context ``L`` on a mixture of natural text and long-range
   documents (``hf_sinklora.experiment.long_range``: varied-filler passkey prompts, repeated
   passages, key-value lists), or loaded from the base-model cache;
2. the base at ``L``: passkey accuracy by depth (the standard prompt, ``passkey_accuracy``)
   and held-out perplexity;
3. the base RoPE-interpolated x``factor`` without fine-tuning: passkey at ``L``, ``2L``,
   ``factor*L``, held-out perplexity and long-range perplexity at ``factor*L``;
4. LoRA+ fine-tuning at ``factor*L`` (the recipe's ``run_training``; ``full`` and optionally ``sf``/``s2``
   attention) on natural text + repeated passages + key-value lists (never passkey prompts),
   then the same measurements.

Passkey "at n tokens" means prompts of ``n - answer_room`` tokens (default 8), so the prompt
and the answer (a space, 5 digits, at most 2 more tokens) fit in ``n`` positions: a base
pretrained on rows of ``L`` tokens never saw a position beyond ``L``, and a prompt of exactly
``L`` tokens puts the answer there (measured too, as ``passkey_prompt_of_L_tokens``).

Long-range perplexity scores only the tokens that need context further back than ``L``: the
copied tokens of passages repeated more than ``L`` tokens after their first occurrence, and
the values of keys queried more than ``L`` tokens after their definition (held-out books).

The discrimination check: base passkey at ``L`` >= 95% at every depth, interpolated without
fine-tuning <= 50% at ``factor*L``, full-attention fine-tuning >= 90% at ``factor*L``.

    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py
    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py --quick   # < 60 s, tiny

Writes ``<output-dir>/calibrate_long_context.json`` and ``calibrate_long_context.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from bench_common import DEFAULT_OUTPUT_DIR, configure_logging, environment
from transformers import AutoTokenizer, set_seed

from hf_sinklora import extend_context, load_model
from hf_sinklora.evaluation import passkey_accuracy, perplexity, tokenize_documents
from hf_sinklora.experiment.base_model import BaseModelRecipe, cached_base_model
from hf_sinklora.data.sources import load_books
from hf_sinklora.training.recipe import ATTENTION_IMPLEMENTATIONS, TrainSettings, run_training
from hf_sinklora.experiment.long_range import (
    FINETUNING_MIXTURE,
    PRETRAINING_MIXTURE,
    TextSource,
    finetuning_examples,
    long_range_documents,
)

logger = logging.getLogger("calibrate_long_context")

GUTENBERG = Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg"
DEFAULT_TRAIN = [str(GUTENBERG / f) for f in ("moby_dick.txt", "jack_sheppard.txt", "pride_and_prejudice.txt")]
DEFAULT_EVAL = [str(GUTENBERG / f) for f in ("news_from_nowhere.txt", "katrine.txt")]
GOALS = {"base_min_depth_at_L": 0.95, "interpolated_max_at_4L": 0.5, "full_min_at_4L": 0.9}


def extend(base_path: Path, examples: list[dict[str, list[int]]], method: str, args: argparse.Namespace, seed: int,
           output_dir: Path) -> dict[str, Any]:
    """The recipe (``run_training``: LoRA+, interpolation, ``method``'s training attention) on the
    fine-tuning rows. ``--finetune-loss tokens``: language modelling on every token; ``targets``:
    the rows' ``labels`` (generated rows score only their retrieval targets)."""
    from datasets import Dataset

    settings = TrainSettings(
        model=str(base_path), dataset="books + long-range documents", target_length=args.factor * args.base_context,
        output_dir=str(output_dir), attention=method, max_steps=args.finetune_steps, batch_size=args.finetune_batch,
        lr=args.finetune_lr, seed=seed, logging_steps=max(1, args.finetune_steps // 10), save_steps=0,
        gradient_checkpointing=False, disable_tqdm=True, overwrite=True,
    )
    columns = {"input_ids": [e["input_ids"] for e in examples]}
    if args.finetune_loss == "targets":
        columns["labels"] = [e["labels"] for e in examples]
    return run_training(settings, train_dataset=Dataset.from_dict(columns))


def long_range_perplexity(model: Any, documents: list[Any], length: int) -> dict[str, Any]:
    """Perplexity over the masked tokens only (per kind and together), and over the unmasked ones.

    Each document (``LongRangeDocument`` of ``length`` tokens) is one window of ``length``.
    """
    result = perplexity(model, [torch.tensor(d.input_ids) for d in documents], length, keep_token_nll=True,
                        progress=False)
    sums: dict[str, list[float]] = {}
    for document, nll in zip(documents, result.token_nll):
        mask = torch.tensor(document.long_range_mask[1:])  # token t's NLL is nll[t - 1]
        sums.setdefault(document.kind, [0.0, 0])
        sums[document.kind][0] += float(nll[mask].double().sum())
        sums[document.kind][1] += int(mask.sum())
        sums.setdefault("rest", [0.0, 0])
        sums["rest"][0] += float(nll[~mask].double().sum())
        sums["rest"][1] += int((~mask).sum())
    out: dict[str, Any] = {kind: {"ppl": math.exp(s / n) if n else float("nan"), "tokens": n} for kind, (s, n) in sums.items()}
    masked = [v for k, v in sums.items() if k != "rest"]
    total_nll, total_n = sum(s for s, _ in masked), sum(n for _, n in masked)
    out["long_range"] = {"ppl": math.exp(total_nll / total_n) if total_n else float("nan"), "tokens": total_n}
    return out


def held_out_perplexity(model: Any, tokenizer: Any, documents: list[torch.Tensor], length: int) -> dict[str, float]:
    """Token perplexity at ``length`` (disjoint windows) and bits per character (tokenizer-independent)."""
    result = perplexity(model, documents, length, progress=False)
    chars = sum(len(tokenizer.decode(d[1:].tolist())) for d in documents)
    return {"ppl": result.perplexity, "bits_per_char": result.nll_sum / math.log(2) / chars, "tokens": result.tokens_scored}


def measure(name: str, model: Any, tokenizer: Any, lengths: Sequence[int], args: argparse.Namespace,
            held_out: list[torch.Tensor], ppl_lengths: Sequence[int], long_docs: list[Any] | None) -> dict[str, Any]:
    started = time.perf_counter()
    room = args.answer_room
    passkey = passkey_accuracy(model, tokenizer, [n - room for n in lengths], depths=args.depths, trials=args.trials,
                               seed=args.eval_seed, progress=False)
    cells = [{"length": c["length"] + room, "prompt_length": c["length"],
              **{k: c[k] for k in ("depth", "accuracy", "correct", "trials")}} for c in passkey["cells"]]
    entry: dict[str, Any] = {
        "passkey": {
            "per_length": {str(n): passkey["per_length"][str(n - room)] for n in lengths},
            "cells": cells,
            "min_depth": {str(n): min(c["accuracy"] for c in cells if c["length"] == n) for n in lengths},
            "examples": [{k: s[k] for k in ("length", "depth", "key", "answer")} for s in passkey["samples"][:: max(1, args.trials)]][:12],
        },
        "held_out": {str(n): held_out_perplexity(model, tokenizer, held_out, n) for n in ppl_lengths},
    }
    if long_docs is not None:
        entry["long_range"] = long_range_perplexity(model, long_docs, args.factor * args.base_context)
    entry["eval_seconds"] = round(time.perf_counter() - started, 1)
    logger.info("%s: passkey %s; held-out %s; long-range %s", name, entry["passkey"]["per_length"],
                {k: round(v["ppl"], 2) for k, v in entry["held_out"].items()},
                {k: round(v["ppl"], 2) for k, v in entry.get("long_range", {}).items()})
    return entry


def plot(document: dict[str, Any], path: Path) -> None:
    """Left: passkey accuracy by length per model. Middle: by depth at 4L. Right: long-range ppl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = document["models"]
    names = list(models)
    lengths = document["settings"]["lengths"]
    target = str(lengths[-1])
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.4))
    width = 0.8 / max(1, len(names))
    for index, name in enumerate(names):
        per_length = models[name]["passkey"]["per_length"]
        xs = [i + index * width for i, n in enumerate(lengths) if str(n) in per_length]
        left.bar(xs, [100 * per_length[str(n)] for n in lengths if str(n) in per_length], width, label=name, color=f"C{index}")
        cells = [c for c in models[name]["passkey"]["cells"] if str(c["length"]) == target]
        if cells:
            middle.plot([c["depth"] for c in cells], [100 * c["accuracy"] for c in cells], marker="o", label=name, color=f"C{index}")
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(lengths))], [str(n) for n in lengths])
    left.set_xlabel("prompt length (tokens)")
    left.set_ylabel("passkey accuracy (%)")
    left.axhline(90, color="grey", linestyle=":", linewidth=0.8)
    left.axhline(50, color="red", linestyle=":", linewidth=0.8)
    left.legend(fontsize=7)
    left.set_title(f"passkey by length (L = {document['settings']['base_context']})")
    middle.set_xlabel("key depth")
    middle.set_ylabel(f"passkey accuracy at {target} (%)")
    middle.set_ylim(-5, 105)
    middle.legend(fontsize=7)
    middle.set_title(f"passkey by depth at {target} tokens")
    with_long = [n for n in names if "long_range" in models[n]]
    right.bar(range(len(with_long)), [models[n]["long_range"]["long_range"]["ppl"] for n in with_long],
              color=[f"C{names.index(n)}" for n in with_long])
    right.set_xticks(range(len(with_long)), with_long, fontsize=7)
    right.set_yscale("log")
    right.set_ylabel(f"long-range perplexity at {target} (log)")
    right.set_title(f"tokens needing > {document['settings']['base_context']} tokens of context")
    figure.suptitle(document["title"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mixture(text: str) -> dict[str, float]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {k: float(v) for k, v in pairs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    set_seed(args.base_seed)
    timings: dict[str, float] = {}
    L, target = args.base_context, args.factor * args.base_context
    lengths = sorted({L, 2 * L, target})
    train_texts = load_books(args.train_data)
    eval_texts = load_books(args.eval_data)
    if args.max_chars:
        train_texts = [t[: args.max_chars] for t in train_texts]
        eval_texts = [t[: args.max_chars] for t in eval_texts]
    recipe = BaseModelRecipe(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_layers=args.layers, num_heads=args.heads, context_length=L, steps=args.pretrain_steps,
        batch_size=args.pretrain_batch, learning_rate=args.pretrain_lr, seed=args.base_seed,
        individual_digits=True, add_bos=not args.no_bos, mixture=tuple(args.pretrain_mixture.items()), warmup_steps=args.warmup_steps,
        max_grad_norm=1.0, loss=args.loss,
    )
    base_path, was_cached = cached_base_model(train_texts, recipe, args.cache_dir)
    timings["pretrain_s"] = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    held_out = tokenize_documents(tokenizer, eval_texts, max_tokens=args.eval_tokens)
    long_docs = long_range_documents(TextSource(tokenizer, eval_texts), target, args.long_range_docs, threshold=L,
                                     seed=args.eval_seed)
    models: dict[str, Any] = {}

    base = load_model(base_path)
    models["base"] = measure("base", base, tokenizer, [L], args, held_out, [L], None)
    if args.answer_room:  # the same prompts filling all L positions: the answer then lies beyond L
        full_prompt = passkey_accuracy(base, tokenizer, [L], depths=args.depths, trials=args.trials,
                                       seed=args.eval_seed, progress=False)
        models["base"]["passkey_prompt_of_L_tokens"] = {
            "accuracy": full_prompt["accuracy"], "per_depth": full_prompt["per_depth"],
            "note": f"prompt of {L} tokens, answer generated at positions {L}..{L}+: beyond the pretraining context"}
    step = time.perf_counter()
    extend_context(base, target)
    models["interpolated"] = measure("interpolated", base, tokenizer, lengths, args, held_out, [L, target], long_docs)
    del base
    timings["base_and_interpolated_eval_s"] = time.perf_counter() - step

    reference = None
    if args.text_only_reference:
        step = time.perf_counter()
        text_only = BaseModelRecipe(**{**asdict(recipe), "mixture": (), "loss": "tokens"})
        ref_path, ref_cached = cached_base_model(train_texts, text_only, args.cache_dir)
        ref_tokenizer = AutoTokenizer.from_pretrained(ref_path)
        ref_model = load_model(ref_path)
        ref_docs = tokenize_documents(ref_tokenizer, eval_texts, max_tokens=args.eval_tokens)
        reference = {"path": str(ref_path), "cached": ref_cached, "recipe": "same as the base, mixture=() (text only)",
                     "held_out": {str(L): held_out_perplexity(ref_model, ref_tokenizer, ref_docs, L)},
                     "passkey_at_L": passkey_accuracy(ref_model, ref_tokenizer, [L], depths=args.depths,
                                                      trials=args.trials, seed=args.eval_seed,
                                                      progress=False)["per_length"][str(L)]}
        timings["text_only_reference_s"] = time.perf_counter() - step
        logger.info("text-only reference: %s", reference)

    rows = finetuning_examples(TextSource(tokenizer, train_texts), target, args.finetune_steps * args.finetune_batch,
                               args.finetune_mixture, seed=args.finetune_seed, threshold=L)
    runs = {}
    for method in args.methods:
        step = time.perf_counter()
        trained = extend(base_path, rows, method, args, args.finetune_seed, args.work_dir / method)
        model = load_model(trained["output_dir"])
        name = f"lora+ {method}"
        models[name] = measure(name, model, tokenizer, lengths, args, held_out, [L, target], long_docs)
        runs[method] = {"losses": trained["losses"], "train_seconds": trained["seconds"],
                        "trainable_parameters": trained["trainable_parameters"],
                        "seconds": round(time.perf_counter() - step, 1)}
        timings[f"{method}_s"] = time.perf_counter() - step
    timings["total_s"] = time.perf_counter() - started

    base_min = min(models["base"]["passkey"]["min_depth"].values())
    interp = models["interpolated"]["passkey"]["per_length"][str(target)]
    full = models["lora+ full"]["passkey"]["per_length"][str(target)] if "lora+ full" in models else None
    recipe_file = json.loads((base_path / "base_model_recipe.json").read_text())
    document = {
        "benchmark": "calibration of a long-context-capable base (issue 9): passkey and long-range perplexity",
        "title": (f"{recipe.num_layers}x{recipe.hidden_size} Llama, L={L}, {recipe.steps} pretraining steps on "
                  f"{dict(recipe.mixture)}; LoRA+ {args.finetune_steps} steps x {args.finetune_batch} at {target} on "
                  f"{args.finetune_mixture}"),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": environment("cpu"),
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "target_length": target, "lengths": lengths, "base_recipe": asdict(recipe)},
        "base": {"path": str(base_path), "cached": was_cached, "parameters": sum(
            p.numel() for p in load_model(base_path).parameters()), "pretraining_losses": recipe_file.get("losses")},
        "data": {"finetune_rows": len(rows), "held_out_tokens": sum(len(d) for d in held_out),
                 "long_range_documents": len(long_docs),
                 "long_range_tokens": sum(sum(d.long_range_mask) for d in long_docs)},
        "models": models,
        "finetuning": runs,
        "text_only_reference": reference,
        "goal": {
            "description": ("base passkey at L >= 95% at every depth; interpolated without fine-tuning <= 50% at 4L; "
                            "LoRA+ full attention >= 90% at 4L"),
            "base_min_depth_at_L": base_min, "interpolated_at_4L": interp, "full_at_4L": full,
            "met": bool(base_min >= GOALS["base_min_depth_at_L"] and interp <= GOALS["interpolated_max_at_4L"]
                        and full is not None and full >= GOALS["full_min_at_4L"]),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / f"{args.name}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, args.output_dir / f"{args.name}.png")
    logger.info("goal: %s; total %.0f s; wrote %s", document["goal"], timings["total_s"], json_path)
    return document


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


QUICK = {"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "base_context": 128,
         "pretrain_steps": 4, "pretrain_batch": 2, "finetune_steps": 2, "finetune_batch": 1, "trials": 1,
         "depths": [0.0, 1.0], "eval_tokens": 1000, "long_range_docs": 2, "max_chars": 60_000, "methods": ["full"],
         "name": "calibrate_long_context_quick"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", nargs="+", default=DEFAULT_TRAIN)
    parser.add_argument("--eval-data", nargs="+", default=DEFAULT_EVAL)
    parser.add_argument("--max-chars", type=int, default=0, help="keep the first N characters of each book (0: all)")
    parser.add_argument("--base-context", type=int, default=128, help="pretraining context L")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--intermediate-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--pretrain-mixture", type=_mixture, default=dict(PRETRAINING_MIXTURE),
                        help="kind=weight,... of text, passkey, repeat, words, kv")
    parser.add_argument("--loss", choices=("rows", "tokens"), default="rows",
                        help="pretraining loss: rows (retrieval targets only on generated rows, mean over rows) or tokens")
    parser.add_argument("--no-bos", action="store_true", help="tokenizer without <s> first (prompts start bare)")
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--finetune-batch", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=2e-3)
    parser.add_argument("--finetune-mixture", type=_mixture, default=dict(FINETUNING_MIXTURE),
                        help="kind=weight,... of text, repeat, words, kv (never passkey)")
    parser.add_argument("--finetune-seed", type=int, default=0)
    parser.add_argument("--finetune-loss", choices=("tokens", "targets"), default="tokens",
                        help="tokens: LM loss on every token; targets: generated rows score only "
                             "their retrieval targets (a labels column)")
    parser.add_argument("--methods", type=lambda t: t.split(","), default=["full"])
    parser.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--answer-room", type=int, default=8,
                        help="passkey at n tokens = prompts of n - answer_room tokens, so prompt + answer fit in n")
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--eval-tokens", type=int, default=40_000, help="held-out tokens for plain perplexity")
    parser.add_argument("--long-range-docs", type=int, default=40, help="held-out long-range documents at 4L")
    parser.add_argument("--text-only-reference", action="store_true",
                        help="also pretrain (or load) the same base on text only and report its perplexity")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (< 60 s): a smoke test")
    parser.add_argument("--cache-dir", type=Path, default=None, help="base-model cache (default ~/.cache/hf_sinklora/base_models)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/calibrate_long_context"))
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--name", default="calibrate_long_context", help="stem of the JSON and PNG")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    unknown = sorted(set(args.methods) - set(ATTENTION_IMPLEMENTATIONS))
    if unknown:
        parser.error(f"--methods must come from {sorted(ATTENTION_IMPLEMENTATIONS)}; unknown {unknown}")
    if args.finetune_mixture.get("passkey", 0):
        parser.error("--finetune-mixture must not hold passkey prompts (retrieval at 4L must come from the base)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()
