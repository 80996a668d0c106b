"""The main job, end to end: pretrain (or load) a base, extend its context 4x with SinkLoRA,
measure what that bought, generate with ``H2OCache``, write the adapter and its card.

With no ``--model`` everything runs on a corpus every machine has, the Python standard
library's own sources: a small Llama and its tokenizer are pretrained at a short context
(or loaded from the user cache when this exact base was built before). With ``--model`` the
same pipeline runs on a real checkpoint and ``--dataset`` text. Every number is measured.
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
from .data.local_corpus import chunk_token_ids, stdlib_source_files
from .data.sources import load_books, load_texts
from .evaluation import minimum_prompt_length, passkey_accuracy, perplexity, tokenize_documents
from .evaluation.timing import timed_generate
from .experiment.base_model import BaseModelRecipe, cached_base_model
from .hub.card import RECIPE_FILE, write_model_card
from .hub.loading import load_model
from .rope import extend_context
from .training.recipe import TrainSettings, run_training

logger = logging.getLogger(__name__)
HELD_OUT_FILES = 12  # the last stdlib files (by name) are never trained on


@dataclass
class DemoSettings:
    """Knobs of the demo (defaults: a few minutes on 2 CPU cores)."""

    output_dir: str = field(default="sinklora-demo", metadata={"help": "where the adapter, card, summary and PNG go"})
    model: str | None = field(default=None, metadata={"help": "checkpoint path or hub id (default: pretrain a small base)"})
    dataset: list[str] = field(default_factory=list, metadata={"help": "text files/dirs/datasets ids (default: stdlib sources)"})
    target_length: int | None = field(default=None, metadata={"help": "context to reach (default: 4x the base's)"})
    base_context: int = field(default=128, metadata={"help": "pretraining context of the built-in base"})
    pretrain_steps: int = field(default=600, metadata={"help": "pretraining steps of the built-in base"})
    finetune_steps: int = field(default=100, metadata={"help": "SinkLoRA (SF-Attn, LoRA+) steps"})
    batch_size: int = field(default=4, metadata={"help": "rows per fine-tuning step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "fine-tuning learning rate"})
    group_size_ratio: float = field(default=0.25, metadata={"help": "SF-Attn group size / sequence length"})
    sink_tokens: int = field(default=4, metadata={"help": "SF-Attn sink tokens"})
    eval_tokens: int = field(default=20_000, metadata={"help": "held-out tokens for perplexity"})
    passkey_trials: int = field(default=2, metadata={"help": "passkey prompts per (length, depth)"})
    h2o_budget: float = field(default=0.25, metadata={"help": "H2OCache budget, fraction of the prompt"})
    h2o_prompt_tokens: int | None = field(default=None, metadata={"help": "prompt for the H2O run (default: 16x target)"})
    generate_tokens: int = field(default=32, metadata={"help": "tokens generated in the H2O comparison"})
    corpus_files: int | None = field(default=None, metadata={"help": "train on the first N stdlib files (default: all)"})
    cache_dir: str | None = field(default=None, metadata={"help": "base-model cache (default ~/.cache/hf_sinklora)"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def validate(self) -> None:
        positive = ("base_context", "pretrain_steps", "finetune_steps", "batch_size", "eval_tokens", "passkey_trials",
                    "generate_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.corpus_files is not None and self.corpus_files < 1:
            raise ValueError(f"corpus_files must be >= 1, got {self.corpus_files}")
        if self.target_length is not None and self.target_length < 16:
            raise ValueError(f"target_length must be >= 16, got {self.target_length}")
        if not 0 < self.h2o_budget <= 1:
            raise ValueError(f"h2o_budget must be a fraction in (0, 1], got {self.h2o_budget}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def demo_base_recipe(settings: DemoSettings) -> BaseModelRecipe:
    """The built-in base: ~1.3M parameters, trained at ``base_context`` on stdlib sources."""
    return BaseModelRecipe(vocab_size=2048, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
                           context_length=settings.base_context, steps=settings.pretrain_steps, batch_size=16,
                           learning_rate=3e-3, seed=settings.seed)


def demo_train_settings(settings: DemoSettings, base_path: str | Path, data_name: str, target: int,
                        adapter_dir: Path) -> TrainSettings:
    """The recipe's settings for the demo's extension: SF-Attn LoRA+ on rows of ``target`` tokens."""
    return TrainSettings(
        model=str(base_path), dataset=data_name, target_length=target, output_dir=str(adapter_dir), attention="sf",
        max_steps=settings.finetune_steps, batch_size=settings.batch_size, lr=settings.learning_rate,
        group_size_ratio=settings.group_size_ratio, sink_tokens=settings.sink_tokens, seed=settings.seed,
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
        base_context = AutoConfig.from_pretrained(base_path).get_text_config().max_position_embeddings
        pretrain_losses: list[float] = []
    else:
        base_path, cached = cached_base_model(train_texts, demo_base_recipe(settings), settings.cache_dir)
        base_context = settings.base_context
        pretrain_losses = json.loads((Path(base_path) / "base_model_recipe.json").read_text())["losses"]
    target = settings.target_length or 4 * base_context
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    held_out = tokenize_documents(tokenizer, held_texts, max_tokens=settings.eval_tokens)
    rows = chunk_token_ids(tokenizer, train_texts, target)
    if not rows:
        raise ValueError(f"the training text holds fewer than target_length={target} tokens")

    _stage(2, f"extending the context {target / base_context:g}x ({base_context} -> {target}) with SinkLoRA")
    adapter_dir = output_dir / "adapter"
    trained = run_training(
        demo_train_settings(settings, base_path, data_name, target, adapter_dir),
        train_dataset=Dataset.from_dict({"input_ids": rows}),
    )

    _stage(3, "perplexity and passkey retrieval, before and after (full attention)")
    before = load_model(base_path)
    base_ppl = perplexity(before, held_out, base_context).perplexity
    extend_context(before, target)  # interpolated positions, not fine-tuned: the fair "before"
    after = load_model(adapter_dir)
    shortest = minimum_prompt_length(tokenizer)
    lengths = sorted({n for n in (target // 2, target) if n >= shortest})
    if not lengths:
        logger.warning("target_length=%d is too short for a passkey prompt (%d tokens): passkey skipped", target, shortest)
    quality = {}
    for name, model in (("before", before), ("after", after)):
        passkey = passkey_accuracy(model, tokenizer, lengths, (0.0, 0.5, 1.0), settings.passkey_trials,
                                   settings.seed) if lengths else {"per_length": {}}
        quality[name] = {"ppl": perplexity(model, held_out, target).perplexity, "passkey": passkey["per_length"]}
    quality["base_at_own_context"] = base_ppl
    record_results_on_card(adapter_dir, quality["after"], data_name, target)

    _stage(4, f"generation: H2OCache at a {settings.h2o_budget:.0%} budget vs the full cache")
    h2o = _h2o_comparison(after, tokenizer, held_texts, settings, target)

    _stage(5, "writing the summary")
    summary = {
        "what": "SinkLoRA demo: base -> 4x context with SF-Attn LoRA+ (SFTTrainer) -> evaluation -> H2O generation",
        "settings": asdict(settings),
        "data": data_name,
        "base": {"path": str(base_path), "from_cache": cached, "context": base_context, "pretrain_losses": pretrain_losses},
        "extension": {"target_length": target, "rows": len(rows), **trained},
        "quality": quality,
        "h2o": h2o,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_summary(summary, output_dir / "summary.png")
    return summary


def record_results_on_card(adapter_dir: Path, after: dict[str, Any], data_name: str, target: int) -> None:
    """Adds the measured perplexity and passkey accuracy to the adapter's recipe record and card."""
    record = json.loads((adapter_dir / RECIPE_FILE).read_text())
    common = dict(task_type="text-generation", dataset_type=data_name)
    record["eval_results"] = [
        *record.get("eval_results", []),
        {**common, "dataset_name": f"{data_name} (held out)", "dataset_split": f"{target}-token windows",
         "metric_type": "perplexity", "metric_value": round(after["ppl"], 3)},
        *({**common, "dataset_name": f"passkey retrieval, {length}-token prompts", "metric_type": "accuracy",
           "metric_value": round(accuracy, 3)} for length, accuracy in after["passkey"].items()),
    ]
    write_model_card(adapter_dir, record)


def _h2o_comparison(model: Any, tokenizer: Any, texts: list[str], settings: DemoSettings, target: int) -> dict[str, Any]:
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


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Four panels: losses, perplexity, passkey accuracy, H2O vs full cache."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 8), dpi=100)
    FigureCanvasAgg(figure)
    losses, ppl, passkey, h2o = (figure.add_subplot(2, 2, i) for i in range(1, 5))
    pre, tuned = summary["base"]["pretrain_losses"], summary["extension"]["losses"]
    if pre:
        losses.plot(range(len(pre)), pre, marker="o", label=f"pretraining at {summary['base']['context']}")
    losses.plot(range(len(pre), len(pre) + len(tuned)), tuned, marker="o",
                label=f"SinkLoRA at {summary['extension']['target_length']}")
    losses.set(title="training loss (logged points)", xlabel="log step", ylabel="loss")
    losses.legend()
    quality, target = summary["quality"], summary["extension"]["target_length"]
    bars = [(f"base @{summary['base']['context']}", quality["base_at_own_context"]),
            (f"interpolated @{target}", quality["before"]["ppl"]), (f"SinkLoRA @{target}", quality["after"]["ppl"])]
    ppl.bar([b[0] for b in bars], [b[1] for b in bars], color=["grey", "C3", "C2"])
    ppl.set(title="held-out perplexity (full attention)", ylabel="perplexity")
    lengths = list(quality["after"]["passkey"])
    width = 0.38
    for offset, name, color in ((-width / 2, "before", "C3"), (width / 2, "after", "C2")):
        bars = passkey.bar([i + offset for i in range(len(lengths))], [quality[name]["passkey"][n] for n in lengths],
                           width, label=name, color=color)
        passkey.bar_label(bars, fmt="%.2f")
    passkey.set_xticks(range(len(lengths)), lengths)
    passkey.set(title="passkey accuracy", xlabel="prompt tokens", ylabel="accuracy", ylim=(0, 1.05))
    passkey.legend()
    runs = summary["h2o"]
    names = ["full cache", f"H2O {runs['budget_tokens']} tokens"]
    speed = [runs["full"]["decode_tokens_per_s"], runs["h2o"]["decode_tokens_per_s"]]
    memory = [runs["full"]["kv_bytes"] / 2**20, runs["h2o"]["kv_bytes"] / 2**20]
    speed_bars = h2o.bar([0, 1], speed, width, color="C0", label="decode tokens/s")
    kv_axis = h2o.twinx()
    memory_bars = kv_axis.bar([width, 1 + width], memory, width, color="C1", label="KV MiB")
    h2o.bar_label(speed_bars, fmt="%.1f")
    kv_axis.bar_label(memory_bars, fmt="%.1f")
    h2o.set_xticks([width / 2, 1 + width / 2], names)
    h2o.set(title=f"generation from a {runs['prompt_tokens']}-token prompt", ylabel="decode tokens/s",
            ylim=(0, max(speed) * 1.3))
    kv_axis.set(ylabel="KV cache MiB", ylim=(0, max(memory) * 1.3))
    h2o.legend([speed_bars, memory_bars], ["decode tokens/s", "KV MiB"], loc="upper center", ncols=2, fontsize=8)
    figure.suptitle(f"hf-sinklora demo ({summary['data']}), {summary['total_seconds']:.0f} s", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def format_summary(summary: dict[str, Any]) -> str:
    """The readable table printed at the end."""
    quality, h2o, base = summary["quality"], summary["h2o"], summary["base"]
    target = summary["extension"]["target_length"]
    lengths = list(quality["after"]["passkey"])
    rows = [
        ("base model", f"{base['path']}" + ("" if base["from_cache"] is None else
                                           (" (from the cache)" if base["from_cache"] else " (pretrained now)"))),
        ("context", f"{base['context']} -> {target} (linear RoPE interpolation, SF-Attn LoRA+, "
                    f"{summary['settings']['finetune_steps']} SFTTrainer steps)"),
        (f"held-out ppl @{base['context']}", f"{quality['base_at_own_context']:.2f} (base at its own context)"),
        (f"held-out ppl @{target}", f"{quality['before']['ppl']:.2f} before -> {quality['after']['ppl']:.2f} after"),
        ("passkey accuracy", ", ".join(f"{n} tok: {quality['before']['passkey'][n]:.2f} -> "
                                       f"{quality['after']['passkey'][n]:.2f}" for n in lengths)
                             or "skipped: the target length is shorter than a passkey prompt"),
        ("generation", f"{h2o['prompt_tokens']}-token prompt, {h2o['generated_tokens']} new tokens"),
        ("  full cache", f"{h2o['full']['decode_tokens_per_s']:.1f} tok/s, KV {h2o['full']['kv_bytes'] / 2**20:.2f} MiB"),
        (f"  H2OCache({h2o['budget_tokens']})", f"{h2o['h2o']['decode_tokens_per_s']:.1f} tok/s, "
                                                 f"KV {h2o['h2o']['kv_bytes'] / 2**20:.2f} MiB; first "
                                                 f"{h2o['identical_first_tokens']} tokens identical"),
        ("adapter + model card", summary["extension"]["output_dir"]),
        ("summary", f"{Path(summary['settings']['output_dir']) / 'summary.json'} and summary.png"),
        ("time", f"{summary['total_seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
