"""The main job, end to end: pretrain (or load) a base that retrieves, extend its context 4x with
SinkLoRA, measure what that bought, run the same prompts through ``H2OCache``, write the adapter
and its card.

With no ``--model`` everything runs on a corpus every machine has, the Python standard
library's own sources: a small Llama and its tokenizer are pretrained at a short context ``L``
to *use* that context (a first phase on repeated random-token patterns forms copying by
content; a second mixes natural text with passkey prompts, repeated passages and key-value
lists), or loaded from the user cache when this exact base was built before. Interpolating its
RoPE to ``4L`` breaks retrieval; LoRA+ on ``4L`` rows of text, repeats and key-value lists (never
passkey prompts), with SF-Attn and, as the reference, with full attention, is meant to bring it
back, and the passkey check at ``4L`` shows whether it does (at the built-in size full attention
does and SF-Attn does not: docs/results.md). With ``--model`` the same pipeline runs on a real
checkpoint and ``--dataset`` text. Every number is measured.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoTokenizer, DynamicCache

from .cache import H2OCache, H2OPolicy
from .data.local_corpus import stdlib_source_files
from .data.sources import load_books, load_texts
from .evaluation import minimum_prompt_length, passkey_accuracy, perplexity, tokenize_documents
from .evaluation.cache_quality import eviction_cache
from .evaluation.timing import timed_generate
from .experiment.base_model import BaseModelRecipe, cached_base_model
from .experiment.long_range import (
    FINETUNING_MIXTURE,
    PRETRAINING_MIXTURE,
    TextSource,
    finetuning_examples,
    long_range_documents,
)
from .experiment.long_range_metrics import long_range_perplexity
from .hub.card import RECIPE_FILE, write_model_card
from .hub.gguf import load_pretrained
from .hub.loading import load_model
from .rope import extend_context
from .training.recipe import TrainSettings, run_training

logger = logging.getLogger(__name__)
HELD_OUT_FILES = 12  # the last stdlib files (by name) are never trained on
ANSWER_ROOM = 8  # passkey prompts end this many tokens short of their length, so the answer fits too
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class DemoSettings:
    """Knobs of the demo (defaults: a few minutes on 2 CPU cores)."""

    output_dir: str = field(default="sinklora-demo", metadata={"help": "where the adapter, card, summary and PNG go"})
    model: str | None = field(default=None, metadata={"help": "checkpoint path, .gguf file or hub id (default: pretrain a small base)"})
    dataset: list[str] = field(default_factory=list, metadata={"help": "text files/dirs/datasets ids (default: stdlib sources)"})
    target_length: int | None = field(default=None, metadata={"help": "context to reach (default: 4x the base's)"})
    base_context: int = field(default=128, metadata={"help": "pretraining context L of the built-in base"})
    induction_steps: int = field(default=700, metadata={
        "help": "first pretraining phase of the built-in base: steps on repeated random-token patterns"})
    pretrain_steps: int = field(default=1200, metadata={
        "help": "second phase: steps on text + passkey prompts + repeated passages + key-value lists"})
    finetune_steps: int = field(default=500, metadata={"help": "SinkLoRA (SF-Attn, LoRA+) steps"})
    batch_size: int = field(default=4, metadata={"help": "rows per fine-tuning step"})
    learning_rate: float = field(default=2.5e-3, metadata={"help": "fine-tuning learning rate"})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank (alpha = 2 x rank)"})
    full_attention_reference: bool = field(default=True, metadata={
        "help": "also extend with full-attention LoRA+ on the same rows, measured beside SF-Attn "
                "(what a sparse training attention is compared with; --no-full-attention-reference skips it)"})
    group_size_ratio: float = field(default=0.25, metadata={"help": "SF-Attn group size / sequence length"})
    sink_tokens: int = field(default=4, metadata={"help": "SF-Attn sink tokens"})
    eval_tokens: int = field(default=20_000, metadata={"help": "held-out tokens for perplexity"})
    long_range_docs: int = field(default=16, metadata={"help": "held-out documents for long-range perplexity"})
    passkey_trials: int = field(default=4, metadata={"help": "passkey prompts per (length, depth); 5 depths"})
    h2o_budget: float = field(default=0.25, metadata={"help": "H2OCache budget, fraction of the prompt"})
    h2o_prompt_tokens: int | None = field(default=None, metadata={"help": "prompt for the H2O speed run (default: 16x target)"})
    generate_tokens: int = field(default=32, metadata={"help": "tokens generated in the H2O speed run"})
    corpus_files: int | None = field(default=None, metadata={"help": "train on the first N stdlib files (default: all)"})
    cache_dir: str | None = field(default=None, metadata={"help": "base-model cache (default ~/.cache/hf_sinklora)"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def validate(self) -> None:
        positive = ("base_context", "pretrain_steps", "finetune_steps", "batch_size", "eval_tokens", "passkey_trials",
                    "generate_tokens", "lora_r", "long_range_docs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.induction_steps < 0:
            raise ValueError(f"induction_steps must be >= 0, got {self.induction_steps}")
        if self.corpus_files is not None and self.corpus_files < 1:
            raise ValueError(f"corpus_files must be >= 1, got {self.corpus_files}")
        if self.target_length is not None and self.target_length < 16:
            raise ValueError(f"target_length must be >= 16, got {self.target_length}")
        if not 0 < self.h2o_budget <= 1:
            raise ValueError(f"h2o_budget must be a fraction in (0, 1], got {self.h2o_budget}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def demo_base_recipe(settings: DemoSettings) -> BaseModelRecipe:
    """The built-in base: a 2-layer Llama (~0.7M parameters, 1024-token BPE with single digits) that
    retrieves at ``base_context``: ``induction_steps`` on repeated random-token patterns, then
    ``pretrain_steps`` on :data:`PRETRAINING_MIXTURE` with retrieval targets scored per row."""
    return BaseModelRecipe(vocab_size=1024, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4,
                           context_length=settings.base_context, steps=settings.pretrain_steps, batch_size=16,
                           learning_rate=2e-3, seed=settings.seed, individual_digits=True, add_bos=True,
                           mixture=tuple(PRETRAINING_MIXTURE.items()), warmup_steps=100, loss="rows",
                           induction_steps=settings.induction_steps, induction_learning_rate=2e-3,
                           induction_kind="periodic")


def demo_train_settings(settings: DemoSettings, base_path: str | Path, data_name: str, target: int,
                        adapter_dir: Path, attention: str = "sf") -> TrainSettings:
    """The recipe's settings for the demo's extension: LoRA+ on rows of ``target`` tokens trained
    through ``attention`` (SF-Attn by default; cosine schedule, alpha twice the rank)."""
    return TrainSettings(
        model=str(base_path), dataset=data_name, target_length=target, output_dir=str(adapter_dir), attention=attention,
        max_steps=settings.finetune_steps, batch_size=settings.batch_size, lr=settings.learning_rate,
        lora_r=settings.lora_r, lora_alpha=2 * settings.lora_r, group_size_ratio=settings.group_size_ratio,
        sink_tokens=settings.sink_tokens, seed=settings.seed,
        logging_steps=max(1, settings.finetune_steps // 10), save_steps=0, gradient_checkpointing=False,
        overwrite=True,  # the demo's own adapter folder: a re-run replaces it
    )


def _texts(settings: DemoSettings) -> tuple[list[str], list[str], str]:
    """(train texts, held-out texts, name of the data)."""
    if settings.dataset:
        books = load_books(settings.dataset)
        if len(books) == 1:  # one document: hold out its last tenth
            cut = int(len(books[0]) * 0.9)
            return [books[0][:cut]], [books[0][cut:]], ", ".join(settings.dataset)
        held = max(1, len(books) // 10)
        return books[:-held], books[-held:], ", ".join(settings.dataset)
    files = stdlib_source_files()
    train = files[:-HELD_OUT_FILES][: settings.corpus_files]
    return load_texts(train), load_texts(files[-HELD_OUT_FILES:]), "Python standard library sources"


def _stage(number: int, text: str) -> None:
    logger.info("[%d/5] %s", number, text)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Runs the five stages; writes ``adapter/`` (with its card), ``summary.json`` and ``summary.png``.

    Returns:
        The summary dict.
    """
    settings.validate()
    started = time.perf_counter()
    output_dir = Path(settings.output_dir)
    train_texts, held_texts, data_name = _texts(settings)

    _stage(1, "base model")
    if settings.model:
        base_path, cached = settings.model, None
        base_context = load_pretrained(AutoConfig, base_path).get_text_config().max_position_embeddings
        pretrain_losses: dict[str, list[float]] = {}
    else:
        base_path, cached = cached_base_model(train_texts, demo_base_recipe(settings), settings.cache_dir)
        base_context = settings.base_context
        record = json.loads((Path(base_path) / "base_model_recipe.json").read_text())
        pretrain_losses = {"induction": record.get("induction_losses", []), "mixture": record["losses"]}
    target = settings.target_length or 4 * base_context
    tokenizer = load_pretrained(AutoTokenizer, base_path)
    held_out = tokenize_documents(tokenizer, held_texts, max_tokens=settings.eval_tokens)
    examples = finetuning_examples(TextSource(tokenizer, train_texts), target, settings.finetune_steps * settings.batch_size,
                                   FINETUNING_MIXTURE, seed=settings.seed, threshold=base_context)

    _stage(2, f"extending the context {target / base_context:g}x ({base_context} -> {target}) with SinkLoRA")
    rows = Dataset.from_dict({"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]})
    adapters = {"after": output_dir / "adapter"}
    if settings.full_attention_reference:
        adapters["full_reference"] = output_dir / "full-attention-reference"
    trained = {name: run_training(demo_train_settings(settings, base_path, data_name, target, path,
                                                      "sf" if name == "after" else "full"), train_dataset=rows)
               for name, path in adapters.items()}

    _stage(3, f"passkey retrieval and perplexity at {target} tokens, before and after (full attention)")
    before = load_model(base_path)
    base_ppl = perplexity(before, held_out, base_context).perplexity
    base_passkey = _passkey(before, tokenizer, passkey_lengths(tokenizer, (base_context,)), settings)
    extend_context(before, target)  # interpolated positions, not fine-tuned: the fair "before"
    models = {"before": before, **{name: load_model(path) for name, path in adapters.items()}}
    long_docs = long_range_documents(TextSource(tokenizer, held_texts), target, settings.long_range_docs,
                                     threshold=base_context, seed=settings.seed)
    lengths = passkey_lengths(tokenizer, (target // 2, target))
    quality = {name: _quality(model, tokenizer, held_out, long_docs, lengths, target, settings)
               for name, model in models.items()}
    quality["base_at_own_context"] = base_ppl
    quality["base_passkey"] = base_passkey
    record_results_on_card(adapters["after"], quality["after"], data_name, target)

    _stage(4, f"the passkey prompts through H2OCache and StreamingLLM ({settings.h2o_budget:.0%} budget); "
              "generation speed and memory")
    h2o = _h2o_comparison(models["after"], tokenizer, held_texts, settings, target)
    h2o["passkey"] = {name: _passkey_through_caches(models[name], tokenizer, lengths[-1:], settings)
                      for name in adapters} if lengths else {}

    _stage(5, "writing the summary")
    summary = {
        "what": "SinkLoRA demo: base -> 4x context with SF-Attn LoRA+ (SFTTrainer) -> evaluation -> H2O generation",
        "settings": asdict(settings),
        "data": data_name,
        "base": {"path": str(base_path), "from_cache": cached, "context": base_context, "pretrain_losses": pretrain_losses},
        "extension": {"target_length": target, "rows": len(examples), "mixture": FINETUNING_MIXTURE, **trained["after"]},
        "full_attention_reference": trained.get("full_reference"),
        "quality": quality,
        "h2o": h2o,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(summary, output_dir / "summary.png")
    return summary


def passkey_lengths(tokenizer: Any, sizes: tuple[int, ...]) -> list[int]:
    """Prompt lengths of the passkey check at ``sizes`` tokens: each ``ANSWER_ROOM`` short so the
    answer fits inside the size too; sizes too short for a passkey prompt are dropped."""
    shortest = minimum_prompt_length(tokenizer)
    lengths = [n - ANSWER_ROOM for n in sizes if n - ANSWER_ROOM >= shortest]
    if not lengths:
        logger.warning("%s tokens are too short for a passkey prompt (%d tokens): passkey skipped there",
                       "/".join(map(str, sizes)), shortest)
    return lengths


def _passkey(model: Any, tokenizer: Any, lengths: list[int], settings: DemoSettings, **cache_options: Any) -> dict[str, Any]:
    """``{str(length): {"accuracy", "correct", "prompts"}}`` over :data:`PASSKEY_DEPTHS` x ``passkey_trials``."""
    if not lengths:
        return {}
    result = passkey_accuracy(model, tokenizer, lengths, PASSKEY_DEPTHS, settings.passkey_trials, settings.seed,
                              progress=False, **cache_options)
    out = {}
    for n in lengths:
        cells = [c for c in result["cells"] if c["length"] == n]
        out[str(n)] = {"accuracy": result["per_length"][str(n)], "correct": sum(c["correct"] for c in cells),
                       "prompts": sum(c["trials"] for c in cells)}
    return out


def _quality(model: Any, tokenizer: Any, held_out: list[torch.Tensor], long_docs: list[Any], lengths: list[int],
             target: int, settings: DemoSettings) -> dict[str, Any]:
    """Held-out and long-range perplexity at ``target`` and passkey accuracy at ``lengths`` of one model."""
    long_range = long_range_perplexity(model, long_docs, target)["long_range"]
    return {"ppl": perplexity(model, held_out, target).perplexity, "long_range_ppl": long_range["ppl"],
            "long_range_tokens": long_range["tokens"], "passkey": _passkey(model, tokenizer, lengths, settings)}


def _passkey_through_caches(model: Any, tokenizer: Any, lengths: list[int], settings: DemoSettings) -> dict[str, Any]:
    """Passkey at ``lengths`` with the prompt streamed through an H2O and a StreamingLLM cache of
    ``h2o_budget`` of the prompt, in chunks of a quarter of that budget (so eviction happens while
    the prompt is read, as it would for a prompt longer than memory allows)."""
    chunk = max(1, int(settings.h2o_budget * lengths[0]) // 4)
    out: dict[str, Any] = {"budget": settings.h2o_budget, "prefill_chunk_size": chunk}
    for policy in ("h2o", "streaming"):
        out[policy] = _passkey(model, tokenizer, lengths, settings, prefill_chunk_size=chunk,
                               cache_factory=lambda n, p=policy: eviction_cache(p, settings.h2o_budget, n))
    return out


def record_results_on_card(adapter_dir: Path, after: dict[str, Any], data_name: str, target: int) -> None:
    """Adds the measured perplexity and passkey accuracy to the adapter's recipe record and card."""
    record = json.loads((adapter_dir / RECIPE_FILE).read_text())
    common = dict(task_type="text-generation", dataset_type=data_name)
    record["eval_results"] = [
        *record.get("eval_results", []),
        {**common, "dataset_name": f"{data_name} (held out)", "dataset_split": f"{target}-token windows",
         "metric_type": "perplexity", "metric_value": round(after["ppl"], 3)},
        *({**common, "dataset_name": f"passkey retrieval, {length}-token prompts", "metric_type": "accuracy",
           "metric_value": round(cell["accuracy"], 3)} for length, cell in after["passkey"].items()),
    ]
    write_model_card(adapter_dir, record)


def _h2o_comparison(model: Any, tokenizer: Any, texts: list[str], settings: DemoSettings, target: int) -> dict[str, Any]:
    """Greedy generation from a long held-out prompt with the full cache and with ``H2OCache``:
    decode speed, KV memory and how many first tokens agree."""
    # long enough for eviction to pay off; beyond the trained context only speed and memory mean much
    prompt_tokens = settings.h2o_prompt_tokens or 16 * target
    ids = torch.cat(tokenize_documents(tokenizer, texts, max_tokens=prompt_tokens))[:prompt_tokens][None]
    budget = H2OPolicy(budget=float(settings.h2o_budget), num_sink_tokens=settings.sink_tokens).budget_for(ids.shape[1])
    options = dict(max_new_tokens=settings.generate_tokens, do_sample=False, prefill_chunk_size=target,
                   pad_token_id=tokenizer.pad_token_id)
    full = timed_generate(model, ids, DynamicCache(config=model.config), **options)
    evicting = timed_generate(model, ids, H2OCache(budget, num_sink_tokens=settings.sink_tokens), **options)
    new_full, new_h2o = full.sequences[0, ids.shape[1]:], evicting.sequences[0, ids.shape[1]:]
    agree = int((new_full == new_h2o).int().cumprod(0).sum()) if len(new_full) == len(new_h2o) else 0
    return {
        "prompt_tokens": ids.shape[1],
        "budget_tokens": budget,
        "full": {"decode_tokens_per_s": full.decode_tokens_per_s, "kv_bytes": full.kv_bytes, "prefill_s": full.prefill_s},
        "h2o": {"decode_tokens_per_s": evicting.decode_tokens_per_s, "kv_bytes": evicting.kv_bytes,
                "prefill_s": evicting.prefill_s},
        "identical_first_tokens": agree,
        "generated_tokens": len(new_h2o),
        "h2o_text": tokenizer.decode(new_h2o, skip_special_tokens=True),
    }


MODEL_LABELS = {"before": "interpolated", "after": "SF-Attn LoRA+", "full_reference": "full-attention LoRA+"}
MODEL_COLORS = {"before": "C3", "after": "C2", "full_reference": "C4"}


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Six panels: losses; held-out and long-range perplexity; passkey per model; passkey through
    the evicting caches; decode speed and KV memory of H2O vs the full cache."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8), dpi=100)
    FigureCanvasAgg(figure)
    losses, ppl, long_range, passkey, survival, h2o = (figure.add_subplot(2, 3, i) for i in range(1, 7))
    quality, target = summary["quality"], summary["extension"]["target_length"]
    context = summary["base"]["context"]
    names = [n for n in MODEL_LABELS if n in quality]
    _plot_losses(losses, summary)
    _labelled_bars(ppl, [(f"base @{context}", quality["base_at_own_context"])]
                   + [(MODEL_LABELS[n], quality[n]["ppl"]) for n in names], ["grey"] + [MODEL_COLORS[n] for n in names],
                   "%.1f")
    ppl.set(title=f"held-out perplexity @{target} (full attention)", ylabel="perplexity")
    _labelled_bars(long_range, [(MODEL_LABELS[n], quality[n]["long_range_ppl"]) for n in names],
                   [MODEL_COLORS[n] for n in names], "%.2f")
    long_range.set(title=f"long-range perplexity @{target}: tokens only\npredictable from more than {context} tokens back",
                   ylabel="perplexity (log scale)", yscale="log")
    lengths = list(quality["after"]["passkey"])
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        cells = [quality[name]["passkey"][n] for n in lengths]
        drawn = passkey.bar([i + (index - (len(names) - 1) / 2) * width for i in range(len(lengths))],
                            [c["accuracy"] for c in cells], width, label=MODEL_LABELS[name], color=MODEL_COLORS[name])
        passkey.bar_label(drawn, labels=[_counted(c) for c in cells], fontsize=8)
    passkey.set_xticks(range(len(lengths)), lengths)
    base_cells = ", ".join(f"{_counted(c)} at {n}" for n, c in quality.get("base_passkey", {}).items())
    passkey.set(title="passkey retrieval (full cache)" + (f"\nbase at its own context: {base_cells}" if base_cells else ""),
                xlabel="prompt tokens", ylabel="accuracy", ylim=(0, 1.35))
    passkey.legend(loc="upper center", ncols=len(names), fontsize=8)
    _plot_survival(survival, summary)
    _plot_speed(h2o, summary["h2o"], 0.38)
    figure.suptitle(f"hf-sinklora demo ({summary['data']}), {summary['total_seconds']:.0f} s", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def _labelled_bars(axis: Any, bars: list[tuple[str, float]], colors: list[str], fmt: str) -> None:
    drawn = axis.bar([b[0] for b in bars], [b[1] for b in bars], color=colors)
    axis.bar_label(drawn, fmt=fmt)
    axis.tick_params(axis="x", labelsize=8)


def _plot_losses(axis: Any, summary: dict[str, Any]) -> None:
    done = 0
    for name, values in summary["base"]["pretrain_losses"].items():
        if values:
            axis.plot(range(done, done + len(values)), values, marker="o", label=f"base, {name} phase")
            done += len(values)
    target = summary["extension"]["target_length"]
    runs = [("after", summary["extension"]), ("full_reference", summary.get("full_attention_reference"))]
    for name, run in runs:
        if run:
            axis.plot(range(done, done + len(run["losses"])), run["losses"], marker="o", color=MODEL_COLORS[name],
                      label=f"{MODEL_LABELS[name]} at {target}")
    axis.set(title="training loss (logged points; retrieval targets only\non generated rows)", xlabel="log step",
             ylabel="loss")
    axis.legend(fontsize=8)


def _plot_survival(axis: Any, summary: dict[str, Any]) -> None:
    per_model = summary["h2o"]["passkey"]
    if not per_model:
        axis.set_axis_off()
        return
    names = list(per_model)
    first = per_model[names[0]]
    length = next(iter(first["h2o"]))
    width = 0.27
    for index, (cache, color) in enumerate((("full cache", "grey"), ("h2o", "C0"), ("streaming", "C1"))):
        cells = [summary["quality"][n]["passkey"][length] if cache == "full cache" else per_model[n][cache][length]
                 for n in names]
        drawn = axis.bar([i + (index - 1) * width for i in range(len(names))], [c["accuracy"] for c in cells], width,
                         color=color, label={"h2o": "H2O", "streaming": "StreamingLLM"}.get(cache, cache))
        axis.bar_label(drawn, labels=[_counted(c) for c in cells], fontsize=8)
    axis.set_xticks(range(len(names)), [MODEL_LABELS[n] for n in names])
    axis.set(title=f"passkey at {length} tokens through a {first['budget']:.0%} KV budget", ylabel="accuracy",
             ylim=(0, 1.35))
    axis.legend(loc="upper center", ncols=3, fontsize=8)


def _plot_speed(axis: Any, runs: dict[str, Any], width: float) -> None:
    names = ["full cache", f"H2O {runs['budget_tokens']} tokens"]
    speed = [runs["full"]["decode_tokens_per_s"], runs["h2o"]["decode_tokens_per_s"]]
    memory = [runs["full"]["kv_bytes"] / 2**20, runs["h2o"]["kv_bytes"] / 2**20]
    speed_bars = axis.bar([0, 1], speed, width, color="C0", label="decode tokens/s")
    kv_axis = axis.twinx()
    memory_bars = kv_axis.bar([width, 1 + width], memory, width, color="C1", label="KV MiB")
    axis.bar_label(speed_bars, fmt="%.1f")
    kv_axis.bar_label(memory_bars, fmt="%.1f")
    axis.set_xticks([width / 2, 1 + width / 2], names)
    axis.set(title=f"generation from a {runs['prompt_tokens']}-token prompt", ylabel="decode tokens/s",
             ylim=(0, max(speed) * 1.3))
    kv_axis.set(ylabel="KV cache MiB", ylim=(0, max(memory) * 1.3))
    axis.legend([speed_bars, memory_bars], ["decode tokens/s", "KV MiB"], loc="upper center", ncols=2, fontsize=8)


def _counted(cell: dict[str, Any]) -> str:
    return f"{cell['correct']}/{cell['prompts']}"


def format_summary(summary: dict[str, Any]) -> str:
    """The readable table printed at the end: each number with what it means."""
    quality, h2o, base = summary["quality"], summary["h2o"], summary["base"]
    target, context = summary["extension"]["target_length"], base["context"]
    names = [n for n in MODEL_LABELS if n in quality]
    tuned = [n for n in names if n != "before"]

    def each(pick: Any) -> str:
        return " | ".join(f"{MODEL_LABELS[n]} {pick(quality[n])}" for n in names)

    rows = [
        ("base model", f"{base['path']}" + ("" if base["from_cache"] is None else
                                           (" (from the cache)" if base["from_cache"] else " (pretrained now)"))),
        ("context", f"{context} -> {target}: linear RoPE interpolation, then LoRA+ for "
                    f"{summary['settings']['finetune_steps']} SFTTrainer steps on text, repeats and key-value lists "
                    "(never passkeys)"),
        ("passkey retrieval", "a 5-digit key hidden at 5 depths of filler, asked for at the end: correct answers "
                              "of prompts, full attention"),
        *((f"  {n} tokens", each(lambda q, n=n: _counted(q["passkey"][n]))) for n in quality["after"]["passkey"]),
        *(() if quality["after"]["passkey"] else (("  skipped", "the target length is shorter than a passkey prompt"),)),
        *((f"  base at {n} tokens", f"{_counted(cell)} (its own context)") for n, cell in quality["base_passkey"].items()),
        (f"long-range ppl @{target}", each(lambda q: f"{q['long_range_ppl']:.2f}")),
        ("", f"(over {quality['after']['long_range_tokens']} tokens that only context more than {context} tokens back "
             "predicts: copies, queried values)"),
        (f"held-out ppl @{target}", each(lambda q: f"{q['ppl']:.2f}") + f" (base at {context}: "
                                    f"{quality['base_at_own_context']:.2f})"),
    ]
    if h2o["passkey"]:
        first = h2o["passkey"][tuned[0]]
        n = next(iter(first["h2o"]))
        rows.append((f"passkey, {first['budget']:.0%} KV budget",
                     f"{n}-token prompts read in chunks of {first['prefill_chunk_size']}; a needle gets little "
                     "attention before its question comes"))
        rows += [(f"  {MODEL_LABELS[name]}", f"H2O {_counted(h2o['passkey'][name]['h2o'][n])}, StreamingLLM "
                                             f"{_counted(h2o['passkey'][name]['streaming'][n])}, full cache "
                                             f"{_counted(quality[name]['passkey'][n])}") for name in tuned]
    rows += [
        ("generation", f"{h2o['prompt_tokens']}-token prompt, {h2o['generated_tokens']} new tokens, SF-Attn model "
                       f"(a prompt {h2o['prompt_tokens'] / target:g}x the trained context: only speed and memory mean much)"),
        ("  full cache", f"{h2o['full']['decode_tokens_per_s']:.1f} tok/s, KV {h2o['full']['kv_bytes'] / 2**20:.2f} MiB"),
        (f"  H2OCache({h2o['budget_tokens']})", f"{h2o['h2o']['decode_tokens_per_s']:.1f} tok/s, "
                                                 f"KV {h2o['h2o']['kv_bytes'] / 2**20:.2f} MiB; the first "
                                                 f"{h2o['identical_first_tokens']} of {h2o['generated_tokens']} tokens "
                                                 "identical to the full cache's"),
        ("adapter + model card", summary["extension"]["output_dir"]),
        ("summary", f"{Path(summary['settings']['output_dir']) / 'summary.json'} and summary.png"),
        ("time", f"{summary['total_seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
