"""Why SF-Attn fine-tuning loses passkey retrieval at this scale (issue 9): a grid of probes.

Each probe fine-tunes the demo's base (or a copy of it made robust to position interpolation) at
4L with the demo's LoRA+ recipe, through one attention and on one row mixture, and measures
passkey accuracy at L, 2L and 4L with :func:`hf_sinklora.evaluation.passkey_accuracy` (greedy
answers, as ``hf-sinklora passkey``). The questions it answers:

- Does the base's retrieval survive linear position interpolation without fine-tuning?
- Which fine-tuning keeps or restores it, by attention (``full``, ``sf``) and by the distances the
  rows' retrieval targets lie at (``standard``: :data:`FINETUNING_MIXTURE`, most targets further
  back than a group; ``in_group``: text + periodic copies 8-60 tokens back; ``text``: text only)?

The position-robust base (``--scale-augmented-steps``) continues the base's pretraining at L with
RoPE's inverse frequencies divided by a factor drawn from ``--scale-factors`` for each batch, so
interpolation by that factor is something it has seen. Writes ``retrieval_probes.json`` and a PNG.

    python benchmarks/retrieval_probes.py                 # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from bench_common import DEFAULT_OUTPUT_DIR, configure_logging, environment  # noqa: E402
from hf_sinklora.demo import (  # noqa: E402
    HELD_OUT_FILES, PASSKEY_DEPTHS, DemoSettings, demo_base_recipe, demo_train_settings, passkey_lengths,
)
from hf_sinklora.data.local_corpus import stdlib_source_files  # noqa: E402
from hf_sinklora.data.sources import load_texts  # noqa: E402
from hf_sinklora.evaluation import passkey_accuracy  # noqa: E402
from hf_sinklora.experiment.base_model import cached_base_model, row_mean_target_loss  # noqa: E402
from hf_sinklora.experiment.long_range import (  # noqa: E402
    FINETUNING_MIXTURE, PRETRAINING_MIXTURE, TextSource, finetuning_examples, pretraining_examples,
)
from hf_sinklora.hub.loading import load_model  # noqa: E402
from hf_sinklora.rope import extend_context  # noqa: E402
from hf_sinklora.training.recipe import run_training  # noqa: E402

logger = logging.getLogger("retrieval_probes")

MIXTURES = {
    "standard": dict(FINETUNING_MIXTURE),
    "in_group": {"text": 0.5, "periodic": 0.5},
    "text": {"text": 1.0},
}
DEFAULT_PROBES = ("sf:standard", "full:standard", "sf:in_group", "full:in_group", "sf:text", "full:text")


def scale_augmented_base(base: Path, texts: list[str], out: Path, *, steps: int, factors: list[float],
                         context: int, learning_rate: float, seed: int) -> dict[str, Any]:
    """Continues pretraining ``base`` for ``steps`` batches of 16 rows of :data:`PRETRAINING_MIXTURE` at
    ``context`` tokens, each batch with RoPE's inverse frequencies divided by a factor drawn from
    ``factors``; saves model + tokenizer to ``out`` (original frequencies restored).

    Returns:
        The mean loss of the last 50 batches per factor.
    """
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sdpa")
    rows = pretraining_examples(TextSource(tokenizer, texts), context, steps * 16, PRETRAINING_MIXTURE, seed=seed + 7)
    rotary = model.model.rotary_emb
    inverse_frequencies = rotary.inv_freq.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    history: list[tuple[float, float]] = []
    model.train()
    for step in range(steps):
        batch = rows[step * 16 : (step + 1) * 16]
        factor = rng.choice(factors)
        rotary.inv_freq.copy_(inverse_frequencies / factor)
        ids = torch.tensor([r["input_ids"] for r in batch])
        loss = row_mean_target_loss(model(input_ids=ids, use_cache=False).logits, torch.tensor([r["labels"] for r in batch]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append((factor, loss.item()))
    rotary.inv_freq.copy_(inverse_frequencies)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    last = history[-50:]
    return {str(f): sum(l for g, l in last if g == f) / max(1, sum(g == f for g, _ in last)) for f in factors}


def passkey_cells(model: Any, tokenizer: Any, lengths: list[int], trials: int, seed: int) -> dict[str, Any]:
    """``{str(length): {"accuracy", "per_depth"}}`` over :data:`PASSKEY_DEPTHS` x ``trials``."""
    result = passkey_accuracy(model, tokenizer, lengths, PASSKEY_DEPTHS, trials, seed, progress=False)
    out = {}
    for n in lengths:
        cells = [c for c in result["cells"] if c["length"] == n]
        out[str(n)] = {"accuracy": result["per_length"][str(n)],
                       "per_depth": {str(c["depth"]): c["accuracy"] for c in cells}}
    return out


def run_probes(args: argparse.Namespace) -> dict[str, Any]:
    settings = DemoSettings(output_dir=str(args.work_dir), finetune_steps=args.finetune_steps, seed=args.seed,
                            cache_dir=args.cache_dir)
    files = stdlib_source_files()
    texts = load_texts(files[:-HELD_OUT_FILES])
    base, _ = cached_base_model(texts, demo_base_recipe(settings), settings.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    context = settings.base_context
    target = 4 * context
    lengths = passkey_lengths(tokenizer, (context, 2 * context, target))
    bases = {"demo": Path(base)}
    results: dict[str, Any] = {"bases": {}, "probes": {}}
    if args.scale_augmented_steps:
        out = Path(args.work_dir) / "scale_augmented_base"
        start = time.perf_counter()
        losses = scale_augmented_base(Path(base), texts, out, steps=args.scale_augmented_steps,
                                      factors=args.scale_factors, context=context, learning_rate=args.augment_lr,
                                      seed=args.seed)
        bases["scale_augmented"] = out
        results["bases"]["scale_augmented_losses"] = losses
        results["bases"]["scale_augmented_s"] = time.perf_counter() - start
    source = TextSource(tokenizer, texts)
    for base_name, path in bases.items():
        model = load_model(path)
        row = {"at_L": passkey_cells(model, tokenizer, lengths[:1], args.trials, args.eval_seed)}
        extend_context(model, target)
        row["interpolated"] = passkey_cells(model, tokenizer, lengths, args.trials, args.eval_seed)
        results["bases"][base_name] = row
        logger.info("%s: %s", base_name, json.dumps(row))
        for probe in args.probes:
            attention, mixture = probe.split(":")
            rows = finetuning_examples(source, target, args.finetune_steps * settings.batch_size, MIXTURES[mixture],
                                       seed=args.seed)
            adapter = Path(args.work_dir) / f"{base_name}_{attention}_{mixture}"
            start = time.perf_counter()
            run_training(demo_train_settings(settings, path, f"probe:{mixture}", target, adapter, attention),
                         train_dataset=Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows],
                                                          "labels": [r["labels"] for r in rows]}))
            tuned = load_model(adapter)
            cell = {"attention": attention, "mixture": mixture, "base": base_name,
                    "passkey": passkey_cells(tuned, tokenizer, lengths, args.trials, args.eval_seed),
                    "seconds": time.perf_counter() - start}
            results["probes"][f"{base_name}/{probe}"] = cell
            logger.info("%s/%s: %s", base_name, probe, json.dumps(cell["passkey"]))
    results["lengths"] = lengths
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    """One bar group per model (interpolated bases, then the probes), one bar per passkey length."""
    lengths = [str(n) for n in results["lengths"]]
    names, rows = [], []
    for base_name, row in results["bases"].items():
        if isinstance(row, dict) and "interpolated" in row:
            names.append(f"{base_name}\ninterpolated")
            rows.append(row["interpolated"])
    for name, cell in results["probes"].items():
        names.append(name.replace("/", "\n").replace(":", " on "))
        rows.append(cell["passkey"])
    fig, axis = plt.subplots(figsize=(max(6, 1.3 * len(names)), 3.8))
    width = 0.8 / len(lengths)
    for i, n in enumerate(lengths):
        axis.bar([x + i * width for x in range(len(names))], [100 * r[n]["accuracy"] for r in rows], width,
                 label=f"passkey at {n} tokens")
    axis.set_xticks([x + width * (len(lengths) - 1) / 2 for x in range(len(names))], names, fontsize=7)
    axis.set_ylabel("passkey accuracy (%)")
    axis.set_ylim(0, 105)
    axis.legend(fontsize=7)
    axis.set_title("Passkey after LoRA+ at 4L, by attention and by where the rows' targets lie")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=lambda s: s.split(","), default=list(DEFAULT_PROBES),
                        help=f"attention:mixture pairs; mixtures {sorted(MIXTURES)}")
    parser.add_argument("--finetune-steps", type=int, default=500)
    parser.add_argument("--scale-augmented-steps", type=int, default=600,
                        help="batches of RoPE-scale-augmented pretraining for the position-robust base (0: none)")
    parser.add_argument("--scale-factors", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 4.0])
    parser.add_argument("--augment-lr", type=float, default=1e-3)
    parser.add_argument("--trials", type=int, default=4, help="passkey prompts per (length, depth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--cache-dir", default=None, help="base-model cache (default ~/.cache/hf_sinklora/base_models)")
    parser.add_argument("--work-dir", default="runs/retrieval_probes")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)
    unknown = [p for p in args.probes if p.count(":") != 1 or p.split(":")[0] not in ("full", "sf", "s2")
               or p.split(":")[1] not in MIXTURES]
    if unknown:
        parser.error(f"--probes: {unknown} are not attention:mixture with attention in full/sf/s2 and mixture in {sorted(MIXTURES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = parse_args(argv)
    start = time.perf_counter()
    results = run_probes(args)
    record = {"benchmark": "retrieval_probes", "command": ["python", "benchmarks/retrieval_probes.py", *(sys.argv[1:] if argv is None else argv)],
              "environment": environment("cpu"), "settings": {k: str(v) if isinstance(v, Path) else v
                                                              for k, v in vars(args).items()},
              **results, "total_s": time.perf_counter() - start}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "retrieval_probes.json").write_text(json.dumps(record, indent=1))
    plot(results, args.output_dir / "retrieval_probes.png")
    logger.info("wrote %s", args.output_dir / "retrieval_probes.json")


if __name__ == "__main__":
    main()
