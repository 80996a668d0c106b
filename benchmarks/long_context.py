"""The long-context benchmark of issue 9: which fine-tuning brings back retrieval at 4x the context?

End to end, on CPU:

1. **Base.** A small Llama is pretrained at context ``L`` on a mixture of natural text and
   long-range documents (``hf_sinklora.experiment.long_range``: varied-filler passkey prompts,
   repeated passages, key-value lists), or loaded from the base-model cache (the ``--vocab-size``
   ... ``--no-bos`` flags are its recipe; a second run with the same flags and books skips it).
2. **Models measured.** ``base`` at ``L``; ``interpolated``: the base RoPE-interpolated
   x``factor`` with no fine-tuning; and per ``--seeds`` seed, the base extended to ``4L =
   factor * L`` by the LoRA+ recipe (``hf_sinklora.training.recipe.run_training``) with each
   ``--methods`` training attention: ``full`` (causal SDPA), ``s2`` (the package's
   ``s2_attention``: S2-Attn without the wrap-around leak), ``sf`` (``sf_attention``) and
   ``longlora`` (LongLoRA's eager S2 with its wrap-around, ``benchmarks/longlora_eager_s2.py``).
   ``longlora`` is registered in this process only: the recipe builds its trainer with ``s2``
   attention (same LoRA+, group size and data), and a ``TrainerCallback`` switches the model to
   the registered ``longlora_eager_s2`` when training begins and back before the adapter is saved;
   the JSON records how many training attention calls went through it (a run with none fails).
   Fine-tuning data: ``--finetune-steps * --finetune-batch`` rows of ``4L`` tokens of natural
   text + repeated passages + key-value lists (never passkey prompts) drawn with the *seed*: a
   seed fixes both the rows (and their order) and the LoRA initialisation, every method of a
   seed trains on the same rows, and different seeds see different rows. ``--finetune-loss``:
   ``tokens`` (LM loss on every token) or ``targets`` (generated rows score only their retrieval
   targets).
3. **Metrics** (every model evaluated with full attention, ``sf_attention``'s eval mode):
   passkey accuracy at ``L``, ``2L`` and ``4L`` over ``--depths`` x ``--trials`` (the base at
   ``L`` only), held-out perplexity at ``L`` and ``4L`` (disjoint windows of the ``--eval-data``
   books), and long-range perplexity at ``4L``: only the tokens that need context further back
   than ``L`` (the copied tokens of passages repeated more than ``L`` tokens after their first
   occurrence, the values of keys queried more than ``L`` tokens after their definition) in
   ``--long-range-docs`` held-out documents of ``4L`` tokens.
   Passkey "at n tokens" means prompts of ``n - answer_room`` tokens (default 8) so prompt and
   answer fit in ``n`` positions; each length draws its keys from ``--eval-seed`` on its own, so
   every model (and every cache below) answers exactly the same prompts.
4. **Shares of the full-attention gain**, per seed and method, against the interpolated model:
   passkey at 4L ``(acc_m - acc_interp) / (acc_full - acc_interp)``; long-range and held-out
   perplexity at 4L on a log scale ``(log ppl_interp - log ppl_m) / (log ppl_interp - log
   ppl_full)``. Per method: mean, min, max and stdev over the seeds whose full gain is not ~0;
   a seed's share is null when ``|denominator|`` is below ``MIN_GAIN`` (recorded in the JSON).
5. **KV eviction on the same models.** For the ``--h2o-models`` fine-tuned models of the first
   seed (default ``full``): passkey accuracy at 4L (the same prompts) and long-range perplexity
   at 4L with the full cache and through ``eviction_cache(policy, budget, prompt_tokens)`` for
   each ``--h2o-policies`` policy (``h2o``, ``streaming``, ``recent``) at each ``--h2o-budgets``
   fraction of the prompt/document. Passkey goes through ``passkey_accuracy(cache_factory=...,
   prefill_chunk_size=--h2o-chunk)`` as ``hf-sinklora passkey --cache`` does; perplexity streams
   each document ``--h2o-chunk`` tokens per forward through the cache (``streamed_token_nll``)
   and scores the long-range tokens only. The full-cache row goes through the same chunking.
6. **Goal check**: base passkey at ``L`` >= 95% at every depth; interpolated <= 50% at 4L;
   full-attention fine-tuning >= 90% at 4L (mean over seeds); SF within 5 points of full and
   ahead of both S2s (``s2`` and ``longlora``) at 4L (means over seeds).

Outputs in ``--output-dir`` (default ``benchmarks/results``), stem ``--name`` (default
``long_context``; ``long_context_quick`` with ``--quick``): ``<name>.json`` (settings,
environment, every model's metrics per seed, shares with their spread, the eviction table, the
goal block, timings), ``<name>_passkey.png`` (heat maps length x depth per model, mean over
seeds), ``<name>_shares.png`` (shares per metric with the seed spread) and ``<name>_h2o.png``
(passkey and long-range perplexity against the budget per policy, the full cache as a line).
The base's entry also holds ``passkey_prompt_of_L_tokens`` (prompts filling all ``L`` positions,
the answer beyond them); ``--text-only-reference`` adds the same base pretrained on text only.
``--name calibrate_long_context`` writes under the calibration's old stem.

Time on 2 CPU cores (measured 2026-12-02, ``long_context.json``'s ``timings_s``): 42.4 min from
scratch. The two-phase base 10.9 min (2600 + 2500 steps; once, cached after); each of the 12
fine-tuning runs (4 methods x 3 seeds, 1200 steps x 4 rows of 512 tokens) 2.3-2.8 min,
evaluation included; the eviction sweep of one model (the full cache and 9 evicting ones, each 50
passkey prompts and 40 streamed documents, 32 tokens per forward) 0.9 min. About 32 min with the
base cached. ``--quick`` (tiny model,
2 steps, 1 trial, 2 seeds, every method, the sweep at one budget) runs end to end in ~10-20 s.

    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py
    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py --quick
    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py --base-model PATH --base-context 128   # a base trained elsewhere
    PYTHONPATH=src .venv/bin/python benchmarks/long_context.py --methods full,sf --seeds 0 --h2o-models full,sf
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import longlora_eager_s2
import torch
from bench_common import DEFAULT_OUTPUT_DIR, configure_logging, environment
from transformers import AutoTokenizer, DynamicCache, TrainerCallback, set_seed

from hf_sinklora import extend_context, load_model
from hf_sinklora.data.sources import load_books
from hf_sinklora.evaluation import accuracy_grid, passkey_accuracy, perplexity, tokenize_documents
from hf_sinklora.evaluation.cache_quality import POLICIES, eviction_cache
from hf_sinklora.experiment.base_model import BaseModelRecipe, cached_base_model
from hf_sinklora.experiment.long_range import (
    FINETUNING_MIXTURE,
    PRETRAINING_MIXTURE,
    TextSource,
    finetuning_examples,
    long_range_documents,
)
from hf_sinklora.experiment.long_range_metrics import long_range_perplexity, streamed_long_range_perplexity
from hf_sinklora.training.recipe import ATTENTION_IMPLEMENTATIONS, TrainSettings, run_training

logger = logging.getLogger("long_context")

GUTENBERG = Path(__file__).resolve().parents[2] / "shared" / "data" / "gutenberg"
DEFAULT_TRAIN = [str(GUTENBERG / f) for f in ("moby_dick.txt", "jack_sheppard.txt", "pride_and_prejudice.txt")]
DEFAULT_EVAL = [str(GUTENBERG / f) for f in ("news_from_nowhere.txt", "katrine.txt")]

FINISHED_RUN_FILE = "long_context_run.json"
"""Written into a fine-tuning run's folder when it ends: its settings, rows' hash and summary."""
LONGLORA = "longlora"
METHODS = ("full", "s2", "sf", LONGLORA)
"""Fine-tuning methods: the recipe's training attentions, and LongLoRA's eager S2 (benchmark-only)."""
GOALS = {"base_min_depth_at_L": 0.95, "interpolated_max_at_4L": 0.5, "full_min_at_4L": 0.9,
         "sf_max_points_behind_full": 0.05}
SHARE_METRICS = {
    "passkey_at_4L": "passkey accuracy at 4L: (acc_m - acc_interp) / (acc_full - acc_interp)",
    "long_range_ppl_at_4L": ("long-range perplexity at 4L, log scale: "
                             "(log ppl_interp - log ppl_m) / (log ppl_interp - log ppl_full)"),
    "held_out_ppl_at_4L": ("held-out perplexity at 4L, log scale: "
                           "(log ppl_interp - log ppl_m) / (log ppl_interp - log ppl_full)"),
}
MIN_GAIN = {"passkey_at_4L": 0.02, "long_range_ppl_at_4L": 1e-3, "held_out_ppl_at_4L": 1e-3}
"""A seed's share is null when the full-attention gain (the denominator) is below this in absolute
value: 0.02 accuracy (one prompt of 50), 0.001 in log perplexity (0.1%)."""


class LongLoRAAttention(TrainerCallback):
    """Trains the recipe's model (built with ``s2_attention``) through LongLoRA's eager S2.

    Switches the model's attention implementation to the registered ``longlora_eager_s2`` when
    training begins and back to ``s2_attention`` when it ends, before the adapter is saved.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.get_base_model().set_attn_implementation(longlora_eager_s2.NAME)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.get_base_model().set_attn_implementation(ATTENTION_IMPLEMENTATIONS["s2"])


def finetune(base_path: Path, examples: list[dict[str, list[int]]], method: str, seed: int, args: argparse.Namespace,
             output_dir: Path) -> dict[str, Any]:
    """One LoRA+ run of the recipe (``run_training``) on ``examples`` with ``method``'s training attention.

    With ``--reuse-adapters``, a finished run in ``output_dir`` whose settings and training rows
    are these is measured again instead of trained again (its summary is marked ``reused``).

    Returns:
        ``run_training``'s summary plus ``training_attention`` (the attention function trained
        through) and, for ``longlora``, ``longlora_training_calls`` (attention calls it served).

    Raises:
        RuntimeError: a ``longlora`` run that never called LongLoRA's attention.
    """
    from datasets import Dataset

    recipe_attention = "s2" if method == LONGLORA else method
    settings = TrainSettings(
        model=str(base_path), dataset="books + long-range documents", target_length=args.factor * args.base_context,
        output_dir=str(output_dir), attention=recipe_attention, max_steps=args.finetune_steps,
        batch_size=args.finetune_batch, lr=args.finetune_lr, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        seed=seed, logging_steps=max(1, args.finetune_steps // 10),
        save_steps=0, gradient_checkpointing=False, disable_tqdm=True, overwrite=True,
        **({} if method == "full" else {"group_size_ratio": args.group_size_ratio}),
    )
    columns = {"input_ids": [e["input_ids"] for e in examples]}
    if args.finetune_loss == "targets":
        columns["labels"] = [e["labels"] for e in examples]
    fingerprint = {"settings": {k: v for k, v in asdict(settings).items() if k != "output_dir"}, "method": method,
                   "rows_sha256": hashlib.sha256(json.dumps(columns).encode()).hexdigest()}
    summary_path = output_dir / FINISHED_RUN_FILE
    if args.reuse_adapters and summary_path.exists():
        finished = json.loads(summary_path.read_text())
        if finished.get("fingerprint") == fingerprint:
            logger.info("reusing the finished run in %s", output_dir)
            return {**finished["summary"], "output_dir": str(output_dir), "reused": True}
    calls_before = longlora_eager_s2.training_calls
    callbacks = [LongLoRAAttention()] if method == LONGLORA else []
    summary = run_training(settings, train_dataset=Dataset.from_dict(columns), callbacks=callbacks)
    summary["training_attention"] = longlora_eager_s2.NAME if method == LONGLORA else summary["attention"]
    if method == LONGLORA:
        summary["longlora_training_calls"] = longlora_eager_s2.training_calls - calls_before
        if not summary["longlora_training_calls"]:
            raise RuntimeError("the longlora run never went through longlora_eager_s2's attention")
    summary_path.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}, indent=1))
    return summary


def held_out_perplexity(model: Any, tokenizer: Any, documents: list[torch.Tensor], length: int) -> dict[str, float]:
    """Token perplexity at ``length`` (disjoint windows) and bits per character (tokenizer-independent)."""
    result = perplexity(model, documents, length, progress=False)
    chars = sum(len(tokenizer.decode(d[1:].tolist())) for d in documents)
    return {"ppl": result.perplexity, "bits_per_char": result.nll_sum / math.log(2) / chars, "tokens": result.tokens_scored}


def passkey(model: Any, tokenizer: Any, lengths: Sequence[int], args: argparse.Namespace, **cache_options: Any) -> dict[str, Any]:
    """Passkey accuracy at each of ``lengths`` (tokens, answer included) by depth.

    Each length runs on its own with ``--eval-seed``, so the prompts at a length are the same
    whatever other lengths are measured. ``cache_options`` go to ``passkey_accuracy``
    (``cache_factory``, ``prefill_chunk_size``).

    Returns:
        ``{"per_length": {str(n): accuracy}, "cells": [{length, prompt_length, depth, accuracy,
        correct, trials}], "min_depth": {str(n): lowest accuracy over depths}, "examples": [...]}``.
    """
    room = args.answer_room
    cells, examples, per_length = [], [], {}
    for n in lengths:
        result = passkey_accuracy(model, tokenizer, [n - room], depths=args.depths, trials=args.trials,
                                  seed=args.eval_seed, progress=False, **cache_options)
        per_length[str(n)] = result["accuracy"]
        cells += [{"length": n, "prompt_length": c["length"], **{k: c[k] for k in ("depth", "accuracy", "correct", "trials")}}
                  for c in result["cells"]]
        examples += [{k: s[k] for k in ("length", "depth", "key", "answer")} for s in result["samples"][:: args.trials]]
    return {
        "per_length": per_length,
        "cells": cells,
        "min_depth": {str(n): min(c["accuracy"] for c in cells if c["length"] == n) for n in lengths},
        "examples": examples[:12],
    }


def measure(name: str, model: Any, tokenizer: Any, lengths: Sequence[int], args: argparse.Namespace,
            held_out: list[torch.Tensor], ppl_lengths: Sequence[int], long_docs: list[Any] | None) -> dict[str, Any]:
    """Passkey at ``lengths``, held-out perplexity at ``ppl_lengths`` and (with ``long_docs``) long-range
    perplexity at 4L of one model, with the seconds it took."""
    started = time.perf_counter()
    entry: dict[str, Any] = {
        "passkey": passkey(model, tokenizer, lengths, args),
        "held_out": {str(n): held_out_perplexity(model, tokenizer, held_out, n) for n in ppl_lengths},
    }
    if long_docs is not None:
        entry["long_range"] = long_range_perplexity(model, long_docs, args.factor * args.base_context)
    entry["eval_seconds"] = round(time.perf_counter() - started, 1)
    logger.info("%s: passkey %s; held-out ppl %s; long-range ppl %s", name, entry["passkey"]["per_length"],
                {k: round(v["ppl"], 2) for k, v in entry["held_out"].items()},
                {k: round(v["ppl"], 2) for k, v in entry.get("long_range", {}).items()})
    return entry


def headline(entry: dict[str, Any], target: int) -> dict[str, float]:
    """The three metrics the shares compare, from one :func:`measure` entry."""
    return {
        "passkey_at_4L": entry["passkey"]["per_length"][str(target)],
        "long_range_ppl_at_4L": entry["long_range"]["long_range"]["ppl"],
        "held_out_ppl_at_4L": entry["held_out"][str(target)]["ppl"],
    }


def gain(metric: str, interpolated: float, value: float) -> float:
    """How much better ``value`` is than the interpolated model's: accuracy points for passkey,
    ``log ppl_interp - log ppl`` for perplexities (NaN where a perplexity is NaN)."""
    if metric == "passkey_at_4L":
        return value - interpolated
    if not (interpolated > 0 and value > 0):
        return float("nan")
    return math.log(interpolated) - math.log(value)


def share(metric: str, interpolated: float, full: float, value: float) -> float | None:
    """``value``'s share of the full-attention gain on ``metric``; None when that gain is ~0 (or NaN)."""
    denominator = gain(metric, interpolated, full)
    numerator = gain(metric, interpolated, value)
    if not abs(denominator) >= MIN_GAIN[metric] or math.isnan(numerator):
        return None
    return numerator / denominator


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, min, max and stdev of the non-null ``values`` (all None when none is left)."""
    kept = [v for v in values if v is not None]
    return {
        "mean": statistics.mean(kept) if kept else None,
        "min": min(kept) if kept else None,
        "max": max(kept) if kept else None,
        "stdev": (statistics.stdev(kept) if len(kept) > 1 else 0.0) if kept else None,
        "seeds_counted": len(kept),
    }


def shares(headlines: dict[str, dict[int, dict[str, float]]], interpolated: dict[str, float]) -> dict[str, Any]:
    """Per method (not full) and metric: each seed's share of the full-attention gain, and their spread.

    Args:
        headlines: ``{method: {seed: headline(...)}}``, ``full`` included.
        interpolated: ``headline(...)`` of the interpolated model.
    """
    seeds = list(headlines["full"])
    by_method = {}
    for method in (m for m in headlines if m != "full"):
        by_method[method] = {}
        for metric in SHARE_METRICS:
            per_seed = {s: share(metric, interpolated[metric], headlines["full"][s][metric], headlines[method][s][metric])
                        for s in seeds}
            by_method[method][metric] = {"per_seed": {str(s): v for s, v in per_seed.items()}, **spread(list(per_seed.values()))}
    return {
        "definition": SHARE_METRICS,
        "null_when": {m: f"|full-attention gain| < {g} (the full gain is ~0: no share to take)" for m, g in MIN_GAIN.items()},
        "full_gain": {metric: {str(s): gain(metric, interpolated[metric], headlines["full"][s][metric]) for s in seeds}
                      for metric in SHARE_METRICS},
        "methods": by_method,
    }


def cache_factories(policies: Sequence[str], budgets: Sequence[float]) -> dict[tuple[str, float], Callable[[int], Any]]:
    """``{(policy, budget): prompt_tokens -> fresh eviction_cache(policy, budget, prompt_tokens)}``."""
    factories: dict[tuple[str, float], Callable[[int], Any]] = {}
    for policy in policies:
        for budget in budgets:
            factories[(policy, budget)] = lambda tokens, p=policy, b=budget: eviction_cache(p, b, tokens)
    return factories


def eviction_sweep(model: Any, tokenizer: Any, long_docs: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Passkey accuracy and long-range perplexity at 4L with the full cache and every (policy, budget).

    Returns:
        ``{"full_cache": {"passkey_at_4L", "passkey_per_depth", "long_range_ppl_at_4L"},
        "policies": {policy: {str(budget): {... the same, "budget_tokens_passkey",
        "budget_tokens_documents"}}}, "seconds"}``.
    """
    started = time.perf_counter()
    target = args.factor * args.base_context
    prompt_tokens = target - args.answer_room

    def one(factory: Callable[[int], Any] | None) -> dict[str, Any]:
        accuracy = passkey(model, tokenizer, [target], args, cache_factory=factory, prefill_chunk_size=args.h2o_chunk)
        streamed = streamed_long_range_perplexity(
            model, long_docs, factory or (lambda _tokens: DynamicCache(config=model.config)), args.h2o_chunk)
        return {"passkey_at_4L": accuracy["per_length"][str(target)],
                "passkey_per_depth": {f"{c['depth']:g}": c["accuracy"] for c in accuracy["cells"]},
                "long_range_ppl_at_4L": streamed["long_range"]["ppl"], "long_range_tokens": streamed["long_range"]["tokens"]}

    out: dict[str, Any] = {"full_cache": one(None), "policies": {}}
    logger.info("  full cache: %s", {k: v for k, v in out["full_cache"].items() if k != "passkey_per_depth"})
    for (policy, budget), factory in cache_factories(args.h2o_policies, args.h2o_budgets).items():
        row = one(factory)
        row["budget_tokens_passkey"] = factory(prompt_tokens).policy.budget
        row["budget_tokens_documents"] = factory(target).policy.budget
        out["policies"].setdefault(policy, {})[f"{budget:g}"] = row
        logger.info("  %s at %g: passkey %.2f, long-range ppl %.2f", policy, budget, row["passkey_at_4L"],
                    row["long_range_ppl_at_4L"])
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def mean_over_seeds(per_seed: dict[str, dict[str, Any]], pick: Callable[[dict[str, Any]], float]) -> float:
    """Mean of ``pick(entry)`` over a method's per-seed entries."""
    return statistics.mean(pick(entry) for entry in per_seed.values())


def goal_check(models: dict[str, Any], target: int) -> dict[str, Any]:
    """The discrimination and comparison goals, each with its value(s), threshold and verdict
    (None where a method it needs was not run); ``met`` only when every goal is met."""
    finetuned = models["finetuned"]

    def at_4L(method: str) -> float | None:
        if method not in finetuned:
            return None
        return mean_over_seeds(finetuned[method], lambda e: e["passkey"]["per_length"][str(target)])

    base_min = min(models["base"]["passkey"]["min_depth"].values())
    interpolated = models["interpolated"]["passkey"]["per_length"][str(target)]
    full, sf, s2, longlora = at_4L("full"), at_4L("sf"), at_4L("s2"), at_4L(LONGLORA)
    goals = {
        "base_min_depth_at_L": {"value": base_min, "at_least": GOALS["base_min_depth_at_L"],
                                "met": base_min >= GOALS["base_min_depth_at_L"]},
        "interpolated_at_4L": {"value": interpolated, "at_most": GOALS["interpolated_max_at_4L"],
                               "met": interpolated <= GOALS["interpolated_max_at_4L"]},
        "full_at_4L": {"value": full, "at_least": GOALS["full_min_at_4L"], "met": full >= GOALS["full_min_at_4L"],
                       "per_seed": {s: e["passkey"]["per_length"][str(target)] for s, e in finetuned["full"].items()}},
        "sf_within_5_points_of_full": {"sf": sf, "full": full, "max_points_behind": GOALS["sf_max_points_behind_full"],
                                       "met": None if sf is None else sf >= full - GOALS["sf_max_points_behind_full"]},
        "sf_ahead_of_s2": {"sf": sf, "s2": s2, "met": None if sf is None or s2 is None else sf > s2},
        "sf_ahead_of_longlora": {"sf": sf, "longlora": longlora,
                                 "met": None if sf is None or longlora is None else sf > longlora},
    }
    return {
        "description": ("passkey at 4L = factor * L, means over seeds: base >= 95% at every depth at L; interpolated "
                        "without fine-tuning <= 50%; LoRA+ full attention >= 90%; SF within 5 points of full and "
                        "ahead of S2 and LongLoRA's eager S2"),
        **goals,
        "met": all(g["met"] is True for g in goals.values()),
    }


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def mean_cells(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Passkey cells (length, depth, accuracy) averaged over ``entries`` (one per seed)."""
    sums: dict[tuple[int, float], list[float]] = {}
    for entry in entries:
        for cell in entry["passkey"]["cells"]:
            sums.setdefault((cell["length"], cell["depth"]), []).append(cell["accuracy"])
    return [{"length": n, "depth": d, "accuracy": statistics.mean(v)} for (n, d), v in sums.items()]


def plot_passkey(document: dict[str, Any], path: Path) -> None:
    """Heat maps, one per model: x = length (tokens, answer included), y = key depth, colour =
    accuracy (mean over seeds for the fine-tuned models)."""
    models = document["models"]
    panels = [("base", mean_cells([models["base"]])), ("interpolated", mean_cells([models["interpolated"]]))]
    panels += [(f"LoRA+ {m} ({len(s)} seeds)", mean_cells(list(s.values()))) for m, s in models["finetuned"].items()]
    figure = _figure(2.6 * len(panels) + 1.0, 3.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for axis, (title, cells) in zip(axes, panels):
        lengths, depths, grid = accuracy_grid({"cells": cells})
        image = axis.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        axis.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        for row, values in enumerate(grid):
            for column, value in enumerate(values):
                if not math.isnan(value):
                    axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
        axis.set_xlabel("length (tokens)")
        axis.set_title(title, fontsize=8)
    axes[0].set_ylabel("key depth")
    figure.colorbar(image, ax=list(axes), label="passkey accuracy", fraction=0.02, pad=0.01)
    figure.suptitle(document["title"], fontsize=8)
    figure.savefig(path)


def plot_shares(document: dict[str, Any], path: Path) -> None:
    """One panel per metric: each method's share of the full-attention gain (bar: mean over
    seeds, whiskers: min..max, dots: seeds); 100% = full attention, 0% = no fine-tuning."""
    methods = document["shares"]["methods"]
    figure = _figure(4.2 * len(SHARE_METRICS), 4.0)
    axes = figure.subplots(1, len(SHARE_METRICS), squeeze=False)[0]
    for axis, metric in zip(axes, SHARE_METRICS):
        for index, method in enumerate(methods):
            entry = methods[method][metric]
            seeds = [100 * v for v in entry["per_seed"].values() if v is not None]
            if entry["mean"] is None:
                axis.text(index, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            mean = 100 * entry["mean"]
            axis.bar(index, mean, color=f"C{index}", alpha=0.6,
                     yerr=[[mean - 100 * entry["min"]], [100 * entry["max"] - mean]], capsize=5)
            axis.scatter([index] * len(seeds), seeds, color="black", s=10, zorder=3)
        axis.axhline(100, color="grey", linewidth=0.8)
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_xticks(range(len(methods)), list(methods))
        axis.set_title(metric.replace("_", " "), fontsize=9)
    axes[0].set_ylabel("% of the full-attention gain (vs interpolated)")
    figure.suptitle(document["title"], fontsize=8)
    figure.savefig(path)


def plot_h2o(document: dict[str, Any], path: Path) -> None:
    """Per swept model: passkey accuracy and long-range perplexity at 4L against the budget, one
    line per policy, the full cache as a dashed line."""
    sweeps = document["h2o"]["models"]
    figure = _figure(10, 3.6 * max(1, len(sweeps)))
    axes = figure.subplots(max(1, len(sweeps)), 2, squeeze=False)
    for row, (name, sweep) in zip(axes, sweeps.items()):
        for column, (metric, label) in enumerate((("passkey_at_4L", "passkey accuracy"),
                                                  ("long_range_ppl_at_4L", "long-range perplexity"))):
            axis = row[column]
            for policy, by_budget in sweep["policies"].items():
                budgets = sorted(by_budget, key=float)
                axis.plot([float(b) for b in budgets], [by_budget[b][metric] for b in budgets], marker="o", label=policy)
            axis.axhline(sweep["full_cache"][metric], color="black", linestyle="--", label="full cache")
            axis.set_xlabel("budget (fraction of the prompt / document)")
            axis.set_ylabel(f"{label} at 4L")
            if column == 0:
                axis.set_ylim(-0.05, 1.05)
            else:
                axis.set_yscale("log")
            axis.set_title(f"{name}: {label}", fontsize=9)
            axis.legend(fontsize=7)
    figure.suptitle(document["title"], fontsize=8)
    figure.savefig(path)


def base_recipe(args: argparse.Namespace) -> BaseModelRecipe:
    """The base model's recipe from the base flags."""
    return BaseModelRecipe(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_layers=args.layers, num_heads=args.heads, context_length=args.base_context, steps=args.pretrain_steps,
        batch_size=args.pretrain_batch, learning_rate=args.pretrain_lr, seed=args.base_seed,
        individual_digits=True, add_bos=not args.no_bos, mixture=tuple(args.pretrain_mixture.items()),
        warmup_steps=args.warmup_steps, max_grad_norm=1.0, loss=args.loss,
        induction_steps=args.induction_steps, induction_learning_rate=args.induction_lr,
    )


def read_books(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Training and held-out books, each cut to ``--max-chars`` characters when set."""
    train_texts, eval_texts = load_books(args.train_data), load_books(args.eval_data)
    if args.max_chars:
        train_texts = [t[: args.max_chars] for t in train_texts]
        eval_texts = [t[: args.max_chars] for t in eval_texts]
    return train_texts, eval_texts


def text_only_reference(recipe: BaseModelRecipe, train_texts: list[str], eval_texts: list[str],
                        args: argparse.Namespace) -> dict[str, Any]:
    """The same base pretrained on text only: its held-out perplexity and passkey accuracy at ``L``."""
    L = args.base_context
    text_only = BaseModelRecipe(**{**asdict(recipe), "mixture": (), "loss": "tokens", "induction_steps": 0})
    path, cached = cached_base_model(train_texts, text_only, args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_model(path)
    documents = tokenize_documents(tokenizer, eval_texts, max_tokens=args.eval_tokens)
    reference = {"path": str(path), "cached": cached,
                 "recipe": "same as the base, mixture=() and no induction phase (text only)",
                 "held_out": {str(L): held_out_perplexity(model, tokenizer, documents, L)},
                 "passkey_at_L": passkey(model, tokenizer, [L], args)["per_length"][str(L)]}
    logger.info("text-only reference: %s", reference)
    return reference


def measure_base(base_path: Path, tokenizer: Any, args: argparse.Namespace, held_out: list[torch.Tensor],
                 long_docs: list[Any]) -> dict[str, Any]:
    """``base`` at ``L`` (plus prompts filling all ``L`` positions) and ``interpolated`` at every length."""
    L, target = args.base_context, args.factor * args.base_context
    model = load_model(base_path)
    base = measure("base", model, tokenizer, [L], args, held_out, [L], None)
    if args.answer_room:  # the same prompts filling all L positions: the answer then lies beyond L
        full_prompt = passkey_accuracy(model, tokenizer, [L], depths=args.depths, trials=args.trials,
                                       seed=args.eval_seed, progress=False)
        base["passkey_prompt_of_L_tokens"] = {
            "accuracy": full_prompt["accuracy"], "per_depth": full_prompt["per_depth"],
            "note": f"prompt of {L} tokens, answer generated at positions {L}..{L}+: beyond the pretraining context"}
    extend_context(model, target)
    interpolated = measure("interpolated", model, tokenizer, lengths_of(args), args, held_out, [L, target], long_docs)
    return {"base": base, "interpolated": interpolated}


def lengths_of(args: argparse.Namespace) -> list[int]:
    """Passkey lengths of the extended models: ``L``, ``2L`` and ``factor * L``."""
    return sorted({args.base_context, 2 * args.base_context, args.factor * args.base_context})


def finetune_and_measure(base_path: Path, tokenizer: Any, rows: list[dict[str, list[int]]], method: str, seed: int,
                         args: argparse.Namespace, held_out: list[torch.Tensor], long_docs: list[Any]) -> dict[str, Any]:
    """One fine-tuning run (:func:`finetune`) and its :func:`measure` entry, with a ``training`` record."""
    started = time.perf_counter()
    target = args.factor * args.base_context
    logger.info("seed %d, %s: LoRA+ %d steps x %d rows of %d tokens", seed, method, args.finetune_steps,
                args.finetune_batch, target)
    trained = finetune(base_path, rows, method, seed, args, run_dir(args, method, seed))
    model = load_model(trained["output_dir"])
    entry = measure(f"LoRA+ {method} seed {seed}", model, tokenizer, lengths_of(args), args, held_out,
                    [args.base_context, target], long_docs)
    entry["training"] = {k: trained[k] for k in ("training_attention", "longlora_training_calls", "losses", "reused",
                                                 "trainable_parameters", "output_dir") if k in trained}
    entry["training"]["train_seconds"] = trained["seconds"]
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def eviction_sweeps(tokenizer: Any, long_docs: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """:func:`eviction_sweep` of each ``--h2o-models`` model of the first seed, with the sweep's settings."""
    seed = args.seeds[0]
    h2o: dict[str, Any] = {
        "settings": {"models": [f"{m} seed {seed}" for m in args.h2o_models], "policies": args.h2o_policies,
                     "budgets": args.h2o_budgets, "chunk_size": args.h2o_chunk, "length": args.factor * args.base_context,
                     "budget_of": "passkey: the prompt's tokens; long-range perplexity: the document's tokens"},
        "models": {},
    }
    for method in args.h2o_models:
        logger.info("eviction sweep on LoRA+ %s seed %d", method, seed)
        model = load_model(run_dir(args, method, seed))
        h2o["models"][f"{method} seed {seed}"] = eviction_sweep(model, tokenizer, long_docs, args)
    return h2o


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark (see the module docstring); writes the outputs and returns the JSON document."""
    started = time.perf_counter()
    env = environment("cpu")
    longlora_eager_s2.register()  # this process only; the package never registers it
    set_seed(args.base_seed)
    timings: dict[str, float] = {}
    L, target = args.base_context, args.factor * args.base_context
    train_texts, eval_texts = read_books(args)
    recipe = base_recipe(args)
    if args.base_model:
        base_path, was_cached = given_base(args), None
    else:
        base_path, was_cached = cached_base_model(train_texts, recipe, args.cache_dir)
    timings["pretrain_s"] = time.perf_counter() - started
    logger.info("base %s (%s)", base_path, "cached" if was_cached else "pretrained now")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    held_out = tokenize_documents(tokenizer, eval_texts, max_tokens=args.eval_tokens)
    long_docs = long_range_documents(TextSource(tokenizer, eval_texts), target, args.long_range_docs, threshold=L,
                                     seed=args.eval_seed)

    step = time.perf_counter()
    models: dict[str, Any] = {**measure_base(base_path, tokenizer, args, held_out, long_docs), "finetuned": {}}
    timings["base_and_interpolated_eval_s"] = time.perf_counter() - step
    reference = None
    if args.text_only_reference:
        step = time.perf_counter()
        reference = text_only_reference(recipe, train_texts, eval_texts, args)
        timings["text_only_reference_s"] = time.perf_counter() - step

    runs: dict[str, float] = {}
    source = TextSource(tokenizer, train_texts)
    for seed in args.seeds:
        rows = finetuning_examples(source, target, args.finetune_steps * args.finetune_batch, args.finetune_mixture,
                                   seed=seed, threshold=L)
        for method in args.methods:
            entry = finetune_and_measure(base_path, tokenizer, rows, method, seed, args, held_out, long_docs)
            models["finetuned"].setdefault(method, {})[str(seed)] = entry
            runs[f"{method}_seed{seed}_s"] = entry["seconds"]
    timings["finetune_and_eval_s"] = sum(runs.values())

    headlines = {m: {s: headline(models["finetuned"][m][str(s)], target) for s in args.seeds} for m in args.methods}
    share_table = shares(headlines, headline(models["interpolated"], target))
    logger.info("shares (means): %s", {m: {k: v["mean"] for k, v in by.items()} for m, by in share_table["methods"].items()})

    step = time.perf_counter()
    h2o = eviction_sweeps(tokenizer, long_docs, args)
    timings["h2o_sweep_s"] = time.perf_counter() - step
    timings["total_s"] = time.perf_counter() - started

    document = {
        "benchmark": ("long context (issue 9): passkey and long-range perplexity at factor * L after LoRA+ "
                      "extension with full, S2, SF and LongLoRA attention; KV eviction on the same models"),
        "title": (f"{recipe.num_layers}x{recipe.hidden_size} Llama, L={L}, {recipe.steps} pretraining steps; LoRA+ "
                  f"{args.finetune_steps} steps x {args.finetune_batch} at {target}, seeds {args.seeds}"),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": env,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "target_length": target, "lengths": lengths_of(args), "base_recipe": asdict(recipe)},
        "base": base_record(base_path, was_cached),
        "data": {"finetune_rows_per_seed": args.finetune_steps * args.finetune_batch,
                 "finetune_rows": "drawn with the seed: the same rows for every method of a seed, other rows per seed",
                 "held_out_tokens": sum(len(d) for d in held_out), "long_range_documents": len(long_docs),
                 "long_range_tokens": sum(sum(d.long_range_mask) for d in long_docs)},
        "models": models,
        "shares": share_table,
        "h2o": h2o,
        "text_only_reference": reference,
        "goal": goal_check(models, target),
        "timings_s": {k: round(v, 1) for k, v in {**timings, **runs}.items()},
    }
    write_outputs(document, args)
    logger.info("goal met: %s; total %.0f s", document["goal"]["met"], timings["total_s"])
    return document


def run_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    """Where the adapter of one (method, seed) run goes."""
    return args.work_dir / f"{method}-seed{seed}"


def given_base(args: argparse.Namespace) -> Path:
    """``--base-model``, checked: its RoPE must be unscaled with ``max_position_embeddings`` equal to
    ``--base-context`` (L is the length the base was pretrained at: the benchmark extends it x factor).

    Raises:
        ValueError: the checkpoint's length differs from ``--base-context``, or it is already scaled.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.base_model).get_text_config()
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default" or config.max_position_embeddings != args.base_context:
        raise ValueError(
            f"--base-model {args.base_model} must be an unscaled base pretrained at --base-context={args.base_context} "
            f"tokens; it has max_position_embeddings={config.max_position_embeddings} and rope {rope}")
    return Path(args.base_model)


def base_record(base_path: Path, was_cached: bool | None) -> dict[str, Any]:
    """Path, cache hit (None for ``--base-model``), parameter count and pretraining losses of the base
    (None when it was not trained by ``BaseModelRecipe``)."""
    recipe_path = base_path / "base_model_recipe.json"
    recipe_file = json.loads(recipe_path.read_text()) if recipe_path.exists() else {}
    parameters = sum(p.numel() for p in load_model(base_path).parameters())
    return {"path": str(base_path), "cached": was_cached, "parameters": parameters,
            "pretraining_losses": recipe_file.get("losses"), "recipe": recipe_file or None}


def write_outputs(document: dict[str, Any], args: argparse.Namespace) -> None:
    """``<name>.json`` and the three PNGs in ``--output-dir``."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.output_dir / f"{args.name}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    plot_passkey(document, args.output_dir / f"{args.name}_passkey.png")
    plot_shares(document, args.output_dir / f"{args.name}_shares.png")
    plot_h2o(document, args.output_dir / f"{args.name}_h2o.png")
    logger.info("wrote %s and its PNGs", json_path)


def _mixture(text: str) -> dict[str, float]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {k: float(v) for k, v in pairs}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


QUICK = {"vocab_size": 1024, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "base_context": 128,
         "pretrain_steps": 4, "induction_steps": 2, "pretrain_batch": 2, "lora_r": 4, "finetune_steps": 2,
         "finetune_batch": 1, "trials": 1,
         "depths": [0.0, 1.0], "eval_tokens": 1000, "long_range_docs": 2, "max_chars": 60_000, "seeds": [0, 1],
         "methods": list(METHODS), "h2o_budgets": [0.25], "h2o_chunk": 64}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    base = parser.add_argument_group("base model (pretrained at L, cached)")
    base.add_argument("--train-data", nargs="+", default=DEFAULT_TRAIN)
    base.add_argument("--eval-data", nargs="+", default=DEFAULT_EVAL)
    base.add_argument("--max-chars", type=int, default=0, help="keep the first N characters of each book (0: all)")
    base.add_argument("--base-context", type=int, default=128, help="pretraining context L")
    base.add_argument("--factor", type=int, default=4, help="extension factor: 4L means factor * L")
    base.add_argument("--vocab-size", type=int, default=4096)
    base.add_argument("--hidden-size", type=int, default=128)
    base.add_argument("--intermediate-size", type=int, default=512)
    base.add_argument("--layers", type=int, default=2)
    base.add_argument("--heads", type=int, default=4)
    base.add_argument("--induction-steps", type=int, default=2600,
                      help="first pretraining phase: steps on random-token repeats (copying forms there); 0: none")
    base.add_argument("--induction-lr", type=float, default=2e-3, help="constant learning rate of that phase")
    base.add_argument("--pretrain-steps", type=int, default=2500)
    base.add_argument("--pretrain-batch", type=int, default=16)
    base.add_argument("--pretrain-lr", type=float, default=2e-3)
    base.add_argument("--warmup-steps", type=int, default=100)
    base.add_argument("--pretrain-mixture", type=_mixture, default=dict(PRETRAINING_MIXTURE),
                      help="kind=weight,... of text, passkey, repeat, words, kv")
    base.add_argument("--loss", choices=("rows", "tokens"), default="rows",
                      help="pretraining loss: rows (retrieval targets only on generated rows, mean over rows) or tokens")
    base.add_argument("--no-bos", action="store_true", help="tokenizer without <s> first (prompts start bare)")
    base.add_argument("--base-seed", type=int, default=0)
    base.add_argument("--text-only-reference", action="store_true",
                      help="also pretrain (or load) the same base on text only and report its perplexity")
    tune = parser.add_argument_group("fine-tuning (LoRA+ recipe at factor * L)")
    tune.add_argument("--methods", type=_names, default=list(METHODS), help=f"comma-separated, from {METHODS}; full needed")
    tune.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",") if x], default=[0, 1, 2],
                      help="fine-tuning seeds: each draws its own rows and LoRA initialisation")
    tune.add_argument("--finetune-steps", type=int, default=1200,
                      help="LoRA+ steps per run (full attention, mean passkey at 4L over 3 seeds at lr 5e-3: 79%% "
                           "after 800; 92%% and 79%% in two runs after 1200)")
    tune.add_argument("--finetune-batch", type=int, default=4)
    tune.add_argument("--finetune-lr", type=float, default=2.5e-3,
                      help="peak learning rate (cosine); 5e-3 gave full attention 79-92%% passkey at 4L, 2.5e-3 100%%")
    tune.add_argument("--group-size-ratio", type=float, default=0.25,
                      help="group size / sequence length of s2, sf and longlora (full attention has no groups)")
    tune.add_argument("--lora-r", type=int, default=32, help="LoRA rank (alpha = 2 x rank)")
    tune.add_argument("--finetune-mixture", type=_mixture, default=dict(FINETUNING_MIXTURE),
                      help="kind=weight,... of text, repeat, words, kv (never passkey)")
    tune.add_argument("--finetune-loss", choices=("tokens", "targets"), default="targets",
                      help="tokens: LM loss on every token; targets: generated rows score only "
                           "their retrieval targets (a labels column)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    evaluation.add_argument("--trials", type=int, default=10, help="passkey prompts per (length, depth)")
    evaluation.add_argument("--answer-room", type=int, default=8,
                            help="passkey at n tokens = prompts of n - answer_room tokens, so prompt + answer fit in n")
    evaluation.add_argument("--eval-seed", type=int, default=1234)
    evaluation.add_argument("--eval-tokens", type=int, default=40_000, help="held-out tokens for plain perplexity")
    evaluation.add_argument("--long-range-docs", type=int, default=40, help="held-out long-range documents at 4L")
    h2o = parser.add_argument_group("KV eviction at 4L on the fine-tuned models of the first seed")
    h2o.add_argument("--h2o-models", type=_names, default=["full"], help="methods whose model is swept ('' for none)")
    h2o.add_argument("--h2o-policies", type=_names, default=["h2o", "streaming", "recent"],
                     help=f"comma-separated, from {list(POLICIES)} (default: h2o, streaming, recent)")
    h2o.add_argument("--h2o-budgets", type=_floats, default=[0.1, 0.25, 0.5],
                     help="fractions of the prompt (passkey) / document (perplexity) kept per layer and KV head")
    h2o.add_argument("--h2o-chunk", type=int, default=32,
                     help="tokens per forward through the cache: passkey prefill_chunk_size and perplexity streaming")
    out = parser.add_argument_group("runs and outputs")
    out.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (~10-20 s): a smoke test")
    out.add_argument("--base-model", default=None,
                     help="a base checkpoint (path) pretrained at --base-context to use instead of pretraining "
                          "one from the base flags (which are then ignored)")
    out.add_argument("--reuse-adapters", action="store_true",
                     help="measure a finished fine-tuning run in --work-dir again instead of retraining it, when its "
                          "settings and rows are the same (a benchmark stopped midway goes on where it was)")
    out.add_argument("--cache-dir", type=Path, default=None, help="base-model cache (default ~/.cache/hf_sinklora/base_models)")
    out.add_argument("--work-dir", type=Path, default=Path("runs/long_context"), help="adapters go here")
    out.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    out.add_argument("--name", default=None, help="stem of the JSON and PNGs (default long_context, "
                                                  "long_context_quick with --quick; calibrate_long_context works too)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.name = args.name or ("long_context_quick" if args.quick else "long_context")
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` on methods, seeds, sweep settings or a fine-tuning mixture that cannot run."""
    if args.base_model and args.text_only_reference:
        parser.error("--text-only-reference pretrains from the base flags, which --base-model replaces: use one")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or "full" not in args.methods:
        parser.error(f"--methods must include full and come from {list(METHODS)}; unknown {unknown}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must name distinct seeds, got {args.seeds}")
    if sorted(set(args.h2o_models) - set(args.methods)):
        parser.error(f"--h2o-models must come from --methods {args.methods}, got {args.h2o_models}")
    if sorted(set(args.h2o_policies) - set(POLICIES)) or not args.h2o_policies:
        parser.error(f"--h2o-policies must come from {list(POLICIES)}, got {args.h2o_policies}")
    if not args.h2o_budgets or not all(0 < b <= 1 for b in args.h2o_budgets):
        parser.error(f"--h2o-budgets must be fractions in (0, 1], got {args.h2o_budgets}")
    if args.h2o_chunk < 1:
        parser.error(f"--h2o-chunk must be >= 1, got {args.h2o_chunk}")
    if args.finetune_mixture.get("passkey", 0):
        parser.error("--finetune-mixture must not hold passkey prompts (retrieval at 4L must come from the base)")


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()
