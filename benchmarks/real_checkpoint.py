"""The package on a real pretrained checkpoint (issue 22, part 3): SmolLM2-135M-Instruct on held-out books.

Three parts (``--parts``, comma-separated; default all), each a table keyed by method:

* ``zero_shot``: the frozen model in *train mode* (``model.train()`` under ``torch.no_grad``, so
  ``sf_attention`` and ``s2_attention`` apply their sparse rule; the model's dropout is 0), perplexity
  on ``--zero-shot-windows`` disjoint windows of ``--length`` + 1 held-out tokens (``--length`` inputs
  each, every next token scored) with ``sdpa``, ``sf_attention``, ``s2_attention`` and LongLoRA's
  eager S2 (``longlora_eager_s2``, registered in this process only; ``benchmarks/longlora_eager_s2.py``).
  Group size ``--group-size-ratio`` x length, 4 sinks for SF (the recipe's defaults).
* ``in_window_finetune``: the recipe's training path (``run_training``: LoRA+ with the CLI's
  defaults, lr 2e-4, rank 8, alpha 16, cosine, 5% warm-up, gradient checkpointing) at ``--length``
  tokens with ``sf``, ``s2`` and ``full`` attention, no RoPE change (``TrainSettings.within_context``:
  the recipe refuses a target within the model's context unless told), on the same rows of book
  text (disjoint ``--length``-token windows of the fine-tuning books drawn with ``--seed``) and the
  same seed. Every step's loss is kept (the loss curve). Then each fine-tuned model and the base
  (row ``base``, no fine-tuning) is measured with full attention (eval mode, ``sdpa``): passkey at
  ``--length`` (``--depths`` x ``--trials`` prompts of ``--length`` tokens) and held-out perplexity
  (``perplexity()``, eval mode) on the zero-shot windows. The goal of the issue is checked: SF keeps
  >= 95% of the base's passkey accuracy, and its held-out perplexity is within 2% of full-attention
  fine-tuning's.
* ``eviction``: the base model (eval mode), per ``--eviction-lengths`` length: passkey (``--depths``
  x ``--eviction-trials`` prompts, fed ``--eviction-chunk`` tokens per forward) and perplexity of
  ``--eviction-segments`` held-out segments streamed through the cache ``--eviction-chunk`` tokens per
  forward, with the full cache and with ``h2o``, ``streaming`` and ``recent``
  (``eviction_cache(policy, budget, tokens)``) at each ``--eviction-budgets`` fraction of the
  prompt / segment.

Held-out text: ``--held-out-books``; fine-tuning rows: ``--finetune-books`` (both from ``--books``,
default ``../shared/data/gutenberg`` next to the repository; Gutenberg boilerplate stripped).

**Resumable.** Each finished unit (a method's zero-shot perplexity, a fine-tuned model's results,
the base's, an eviction cell) is stored with the settings it was measured under in the resume file
``<output-dir>/<name>_progress.json`` (rewritten atomically after every unit; committed with the
results). A rerun, on this machine or a fresh one, reuses every unit whose settings are unchanged and
computes the rest; the JSON holds every stored unit of the current settings, whatever ``--parts``
this run computed, and lists the units still missing under ``pending``. Within one machine a
fine-tuning run also resumes from its latest checkpoint (``--work-dir``, every ``--save-steps``).
``--time-budget-min`` stops starting new units after that many minutes (the outputs are written).

Outputs: ``<output-dir>/<name>.json`` (``settings``, ``zero_shot``, ``in_window_finetune``,
``eviction``, ``goal``, ``pending``, ``environment``) and ``<name>.png``. ``--quick`` is a smoke run
(128 tokens, 2 windows, 2 fine-tuning steps, 2 depths x 1 prompt, one budget) writing under
``runs/real_checkpoint_quick`` unless ``--output-dir`` says otherwise.

    PYTHONPATH=src .venv/bin/python benchmarks/real_checkpoint.py --parts zero_shot
    PYTHONPATH=src .venv/bin/python benchmarks/real_checkpoint.py --parts eviction --eviction-lengths 2048
    PYTHONPATH=src .venv/bin/python benchmarks/real_checkpoint.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import longlora_eager_s2
import torch
from bench_common import DEFAULT_OUTPUT_DIR, configure_logging, environment

import hf_sinklora  # noqa: F401  (registers sf_attention and s2_attention)
from hf_sinklora.data.sources import load_books

logger = logging.getLogger("real_checkpoint")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BOOKS = ROOT.parent / "shared" / "data" / "gutenberg"
FINETUNE_BOOKS = ("moby_dick.txt", "jack_sheppard.txt", "pride_and_prejudice.txt")
HELD_OUT_BOOKS = ("news_from_nowhere.txt", "katrine.txt")
PARTS = ("zero_shot", "eviction", "in_window_finetune")
ZERO_SHOT_METHODS = ("sdpa", "sf_attention", "s2_attention", longlora_eager_s2.NAME)
FINETUNE_METHODS = ("sf", "s2", "full")
POLICIES = ("h2o", "streaming", "recent")
FULL_CACHE = "full"
GOALS = {"sf_passkey_share_of_base_at_least": 0.95, "sf_ppl_over_full_at_most": 1.02}
PROGRESS_VERSION = 1


# ------------------------------------------------------------------------------------------ resume file


class Progress:
    """The resume file: finished units by part and name, each with the settings it was measured under.

    A unit is reused only when its stored settings equal the current ones (compared as JSON).
    Every :meth:`put` rewrites the file atomically (a temporary file, then ``os.replace``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.units: dict[str, dict[str, Any]] = {part: {} for part in PARTS}
        if path.exists():
            stored = json.loads(path.read_text())
            for part in PARTS:
                self.units[part].update(stored.get("units", {}).get(part, {}))

    def get(self, part: str, unit: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of ``unit`` when it was measured under ``config``, else None."""
        entry = self.units[part].get(unit)
        if entry is not None and entry["config"] == _as_json(config):
            return entry["result"]
        return None

    def put(self, part: str, unit: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """Stores ``unit``'s result and rewrites the file."""
        self.units[part][unit] = {"config": _as_json(config), "result": _as_json(result),
                                  "finished_utc": _now()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"version": PROGRESS_VERSION, "units": self.units}, indent=1) + "\n")
        os.replace(temporary, self.path)


def _as_json(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _sha(value: Any) -> str:
    """Short sha256 of ``value``'s JSON."""
    return hashlib.sha256(json.dumps(_as_json(value), sort_keys=True).encode()).hexdigest()[:16]


class Deadline:
    """``--time-budget-min``: after it, no new unit starts (0: no limit)."""

    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + 60 * minutes if minutes > 0 else math.inf
        self.hit = False

    def passed(self) -> bool:
        """True once the budget is spent (logged once)."""
        if time.monotonic() >= self.end and not self.hit:
            logger.warning("time budget spent: no new unit starts; rerun to go on")
            self.hit = True
        return self.hit


# ------------------------------------------------------------------------------------------ data


class Workspace:
    """What every part shares: the checkpoint, its tokenizer, the held-out windows and the resume file.

    Attributes:
        model_path: the converted checkpoint folder.
        model_id: what identifies the checkpoint in unit settings (no machine paths).
        tokenizer: its tokenizer.
        held_out: the held-out token stream (the held-out books, in order, each tokenized on its own).
        progress: the :class:`Progress` resume file.
        deadline: the :class:`Deadline`.
        pending: units that were not computed (not asked for, or the time budget ran out).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.model_path = resolve_model(args.model)
        self.model_id = model_identity(self.model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.held_out = tokenize_books(self.tokenizer, args.books, args.held_out_books, args.max_chars)
        self.progress = Progress(args.output_dir / f"{args.name}_progress.json")
        self.deadline = Deadline(args.time_budget_min)
        self.pending: list[str] = []
        self._windows: dict[tuple[int, int], list[torch.Tensor]] = {}

    def windows(self, length: int, count: int) -> list[torch.Tensor]:
        """``count`` held-out windows of ``length`` tokens (cached per pair)."""
        key = (length, count)
        if key not in self._windows:
            self._windows[key] = spread_windows(self.held_out, length, count)
        return self._windows[key]

    def unit(self, part: str, name: str, config: dict[str, Any], compute: Callable[[], dict[str, Any]],
             wanted: bool) -> dict[str, Any] | None:
        """A unit's result: stored, computed now (when ``wanted`` and time is left), or None (pending)."""
        config = {"model": self.model_id, **config}
        stored = self.progress.get(part, name, config)
        if stored is not None:
            logger.info("%s / %s: stored result reused", part, name)
            return stored
        if not wanted or self.deadline.passed():
            self.pending.append(f"{part}/{name}")
            return None
        logger.info("%s / %s: computing", part, name)
        started = time.perf_counter()
        result = compute()
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.progress.put(part, name, config, result)
        logger.info("%s / %s: done in %.0f s", part, name, result["seconds"])
        return result


def resolve_model(model: str | None) -> Path:
    """``--model``, or the converted SmolLM2-135M-Instruct folder of ``real_checkpoint()``."""
    if model:
        return Path(model)
    from hf_sinklora.hub.real_checkpoint import real_checkpoint

    return Path(real_checkpoint())


def model_identity(folder: Path) -> dict[str, Any]:
    """The checkpoint as unit settings record it: folder name and its GGUF source record (or the
    sha256 of ``config.json`` when it was not converted from GGUF); machine paths left out."""
    from hf_sinklora.hub.gguf import SOURCE_RECORD

    record = folder / SOURCE_RECORD
    if record.exists():
        return {"folder": folder.name, "gguf_source": json.loads(record.read_text())}
    return {"folder": folder.name, "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]}


def tokenize_books(tokenizer: Any, books: Path, names: Sequence[str], max_chars: int = 0) -> list[torch.Tensor]:
    """Each book of ``names`` in ``books`` (Gutenberg boilerplate stripped; its first ``max_chars``
    characters when set) as one 1-D long tensor of token ids."""
    texts = load_books([str(books / name) for name in names])
    if max_chars:
        texts = [text[:max_chars] for text in texts]
    return [torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long) for text in texts]


def all_windows(documents: Sequence[torch.Tensor], length: int) -> list[torch.Tensor]:
    """Every disjoint window of ``length`` tokens of each document, in order (remainders dropped)."""
    return [doc[start:start + length] for doc in documents for start in range(0, len(doc) - length + 1, length)]


def spread_windows(documents: Sequence[torch.Tensor], length: int, count: int) -> list[torch.Tensor]:
    """``count`` disjoint windows of ``length`` tokens spread evenly over all of them (same every run).

    Raises:
        ValueError: the documents hold fewer than ``count`` windows.
    """
    windows = all_windows(documents, length)
    if len(windows) < count:
        raise ValueError(f"the held-out books hold {len(windows)} windows of {length} tokens, fewer than {count}")
    return [windows[(i * len(windows)) // count] for i in range(count)]


def tokens_sha(windows: Sequence[torch.Tensor]) -> str:
    """Short sha256 of the token ids of ``windows`` (the data a unit saw)."""
    digest = hashlib.sha256()
    for window in windows:
        digest.update(window.numpy().astype("int64").tobytes())
    return digest.hexdigest()[:16]


def finetune_rows(tokenizer: Any, args: argparse.Namespace) -> list[list[int]]:
    """``--finetune-steps * --finetune-batch`` disjoint ``--length``-token windows of the fine-tuning
    books, drawn with ``--seed`` (every method trains on these rows, in this order)."""
    windows = all_windows(tokenize_books(tokenizer, args.books, args.finetune_books, args.max_chars), args.length)
    needed = args.finetune_steps * args.finetune_batch
    if len(windows) < needed:
        raise ValueError(f"the fine-tuning books hold {len(windows)} windows of {args.length} tokens, fewer than {needed}")
    return [windows[i].tolist() for i in random.Random(args.seed).sample(range(len(windows)), needed)]


# ------------------------------------------------------------------------------------------ models and metrics


def load_base(path: Path, attention: str, group_size_ratio: float | None = None) -> Any:
    """The checkpoint (fp32) with ``attention``; ``longlora_eager_s2`` is loaded as ``s2_attention``
    and switched to LongLoRA's function. Sparse attentions get ``group_size_ratio``."""
    from transformers import AutoModelForCausalLM

    from hf_sinklora import configure_sf_attention

    load_as = "s2_attention" if attention == longlora_eager_s2.NAME else attention
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=load_as, dtype=torch.float32)
    if group_size_ratio is not None and attention != "sdpa":
        configure_sf_attention(model, group_size_ratio=group_size_ratio)
    if attention == longlora_eager_s2.NAME:
        model.set_attn_implementation(longlora_eager_s2.NAME)
    return model


@torch.no_grad()
def train_mode_perplexity(model: Any, windows: Sequence[torch.Tensor], progress: bool = True) -> dict[str, Any]:
    """Perplexity with the model in train mode (sparse training attention applies), no gradients.

    Each window of ``n + 1`` tokens is one forward of its first ``n`` tokens, scoring tokens
    ``1 .. n``. The library's ``perplexity()`` puts the model in eval mode (full attention), hence
    this function. The model's mode is restored.

    Returns:
        ``{"perplexity", "mean_nll", "tokens_scored", "windows", "per_window_ppl"}``.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.train()
    nlls = []
    try:
        for window in tqdm(windows, desc="train-mode ppl", unit="win", disable=not progress):
            logits = model(input_ids=window[None, :-1], use_cache=False).logits[0].float()  # (n, V)
            nlls.append(torch.nn.functional.cross_entropy(logits, window[1:], reduction="none").double())
    finally:
        model.train(was_training)
    total = torch.cat(nlls)
    return {"perplexity": math.exp(total.mean().item()), "mean_nll": total.mean().item(),
            "tokens_scored": total.numel(), "windows": len(windows),
            "per_window_ppl": [round(math.exp(n.mean().item()), 3) for n in nlls]}


def eval_perplexity(model: Any, windows: Sequence[torch.Tensor], length: int, progress: bool = True) -> dict[str, Any]:
    """Held-out perplexity in eval mode (full attention) by the library's ``perplexity()``: each
    window of ``length + 1`` tokens is one document, one forward of ``length`` inputs."""
    from hf_sinklora.evaluation import perplexity

    result = perplexity(model, list(windows), length, progress=progress)
    return {"perplexity": result.perplexity, "mean_nll": result.mean_nll, "tokens_scored": result.tokens_scored,
            "windows": result.windows}


def passkey(model: Any, tokenizer: Any, length: int, depths: Sequence[float], trials: int, seed: int,
            progress: bool = True, **cache_options: Any) -> dict[str, Any]:
    """Passkey accuracy at prompts of ``length`` tokens (``passkey_accuracy``): overall, per depth, the
    cells and a few answers. ``cache_options`` go to ``passkey_accuracy`` (``cache_factory``,
    ``prefill_chunk_size``)."""
    from hf_sinklora import passkey_accuracy

    result = passkey_accuracy(model, tokenizer, [length], depths=depths, trials=trials, seed=seed, progress=progress,
                              **cache_options)
    return {"accuracy": result["accuracy"], "correct": sum(c["correct"] for c in result["cells"]),
            "prompts": len(result["samples"]), "per_depth": result["per_depth"],
            "examples": [{k: s[k] for k in ("depth", "key", "answer", "correct")} for s in result["samples"][::trials]]}


# ------------------------------------------------------------------------------------------ the three parts


def zero_shot(ws: Workspace, wanted: bool) -> dict[str, Any]:
    """Train-mode perplexity of the frozen model per attention (one unit each)."""
    args = ws.args
    windows = ws.windows(args.length + 1, args.zero_shot_windows)
    table = {}
    for method in args.zero_shot_methods:
        config = {"attention": method, "length": args.length, "windows": len(windows), "tokens": tokens_sha(windows),
                  "group_size_ratio": args.group_size_ratio, "mode": "train, no_grad"}

        def compute(method: str = method) -> dict[str, Any]:
            model = load_base(ws.model_path, method, args.group_size_ratio)
            calls = longlora_eager_s2.training_calls
            result = train_mode_perplexity(model, windows, progress=args.progress)
            if method == longlora_eager_s2.NAME:
                result["longlora_calls"] = longlora_eager_s2.training_calls - calls
                if not result["longlora_calls"]:
                    raise RuntimeError("the longlora_eager_s2 row never went through LongLoRA's attention")
            logger.info("zero-shot %s: train-mode ppl %.3f", method, result["perplexity"])
            return result

        result = ws.unit("zero_shot", method, config, compute, wanted)
        if result is not None:
            table[method] = result
    return table


def finetune_settings(ws: Workspace, method: str, output_dir: Path) -> Any:
    """The recipe's ``TrainSettings`` of one in-window run: the CLI's defaults but for the length,
    the attention, the steps, the seed and ``within_context``."""
    from hf_sinklora.training.recipe import TrainSettings

    args = ws.args
    return TrainSettings(
        model=str(ws.model_path), dataset=f"book text rows ({', '.join(args.finetune_books)})",
        target_length=args.length, output_dir=str(output_dir), attention=method, max_steps=args.finetune_steps,
        batch_size=args.finetune_batch, lr=args.lr, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, seed=args.seed,
        group_size_ratio=args.group_size_ratio, logging_steps=1, save_steps=args.save_steps, save_total_limit=1,
        resume=True, within_context=True, disable_tqdm=not args.progress,
    )


def comparable_settings(settings: Any) -> dict[str, Any]:
    """A run's settings without what differs between machines or runs of the same study."""
    skip = {"model", "output_dir", "resume", "overwrite", "disable_tqdm", "save_steps", "save_total_limit"}
    return {k: v for k, v in asdict(settings).items() if k not in skip}


def finetune_and_measure(ws: Workspace, method: str, rows: list[list[int]], windows: list[torch.Tensor]) -> dict[str, Any]:
    """One in-window LoRA+ run of the recipe (resumed from its checkpoints when stopped), then passkey and
    held-out perplexity with full attention (eval mode)."""
    from datasets import Dataset

    from hf_sinklora import load_model
    from hf_sinklora.training.recipe import run_training

    args = ws.args
    settings = finetune_settings(ws, method, run_dir(ws, method, rows))
    finished = Path(settings.output_dir) / "real_checkpoint_run.json"
    if finished.exists():
        logger.info("%s: the finished run in %s is measured again", method, settings.output_dir)
        trained = json.loads(finished.read_text())
    else:
        summary = run_training(settings, train_dataset=Dataset.from_dict({"input_ids": rows}))
        trained = {k: summary.get(k) for k in ("attention", "global_step", "train_loss", "losses", "trainable_parameters",
                                               "seconds", "resumed_from")}
        finished.write_text(json.dumps(trained, indent=1))
    model = load_model(settings.output_dir, attn_implementation="sdpa").eval()
    return {"training": trained, **measure_full_attention(ws, model, windows)}


def measure_full_attention(ws: Workspace, model: Any, windows: list[torch.Tensor]) -> dict[str, Any]:
    """Passkey at ``--length`` and held-out perplexity of ``model`` in eval mode."""
    args = ws.args
    result = {"passkey": passkey(model, ws.tokenizer, args.length, args.depths, args.trials, args.eval_seed,
                                 progress=args.progress),
              "held_out": eval_perplexity(model, windows, args.length, progress=args.progress)}
    logger.info("passkey %.2f, held-out ppl %.3f", result["passkey"]["accuracy"], result["held_out"]["perplexity"])
    return result


def run_dir(ws: Workspace, method: str, rows: list[list[int]]) -> Path:
    """Where one run's adapter and checkpoints go: named by method and a hash of its settings and rows,
    so a changed study never resumes an old run."""
    settings = comparable_settings(finetune_settings(ws, method, Path(".")))
    return ws.args.work_dir / f"{method}-{_sha({'settings': settings, 'rows': _sha(rows), 'model': ws.model_id})}"


def in_window_finetune(ws: Workspace, wanted: bool) -> dict[str, Any]:
    """The base's row and one row per fine-tuning method (each one unit), plus the goal check."""
    args = ws.args
    windows = ws.windows(args.length + 1, args.zero_shot_windows)
    rows = finetune_rows(ws.tokenizer, args) if wanted or ws.progress.units["in_window_finetune"] else []
    evaluation = {"length": args.length, "depths": args.depths, "trials": args.trials, "eval_seed": args.eval_seed,
                  "held_out_tokens": tokens_sha(windows), "attention_at_inference": "sdpa, eval mode"}
    table: dict[str, Any] = {}

    def base() -> dict[str, Any]:
        return {"training": None, **measure_full_attention(ws, load_base(ws.model_path, "sdpa").eval(), windows)}

    result = ws.unit("in_window_finetune", "base", {"evaluation": evaluation}, base, wanted)
    if result is not None:
        table["base"] = result
    for method in args.finetune_methods:
        config = {"evaluation": evaluation, "training": comparable_settings(finetune_settings(ws, method, Path("."))),
                  "rows_sha256": _sha(rows), "rows": len(rows)}
        result = ws.unit("in_window_finetune", method, config,
                         lambda method=method: finetune_and_measure(ws, method, rows, windows), wanted)
        if result is not None:
            table[method] = result
    return table


def goal_check(finetuned: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal: SF keeps >= 95% of the base's passkey accuracy; SF's held-out perplexity is
    at most 2% above full-attention fine-tuning's. A check is None while a row it needs is missing."""
    base, sf, full = (finetuned.get(k) for k in ("base", "sf", "full"))
    keeps = None
    if base and sf:
        share = sf["passkey"]["accuracy"] / base["passkey"]["accuracy"] if base["passkey"]["accuracy"] else None
        keeps = {"sf": sf["passkey"]["accuracy"], "base": base["passkey"]["accuracy"], "share": share,
                 "at_least": GOALS["sf_passkey_share_of_base_at_least"],
                 "met": None if share is None else share >= GOALS["sf_passkey_share_of_base_at_least"]}
    within = None
    if sf and full:
        ratio = sf["held_out"]["perplexity"] / full["held_out"]["perplexity"]
        within = {"sf": sf["held_out"]["perplexity"], "full": full["held_out"]["perplexity"], "ratio": ratio,
                  "at_most": GOALS["sf_ppl_over_full_at_most"], "met": ratio <= GOALS["sf_ppl_over_full_at_most"]}
    checks = {"sf_keeps_95pct_of_base_passkey": keeps, "sf_ppl_within_2pct_of_full": within}
    done = all(c is not None and c["met"] is not None for c in checks.values())
    return {"description": "SF fine-tuning keeps >= 95% of the base's passkey accuracy at the length, and its held-out "
                           "perplexity is at most 2% above full-attention fine-tuning's (both measured with full attention)",
            **checks, "met": all(c["met"] for c in checks.values()) if done else None}


def eviction(ws: Workspace, wanted: bool) -> dict[str, Any]:
    """Per cache method, length and budget: passkey and streamed perplexity on the base (units per cell).

    Returns:
        ``{method: {str(length): {str(budget): {"passkey": ..., "perplexity": ...}}}}``; the full cache
        under budget ``"1"``. Within a length, every perplexity cell runs before the passkey cells.
    """
    args = ws.args
    model = None
    table: dict[str, Any] = {}

    def base_model() -> Any:
        nonlocal model
        if model is None:  # sf_attention: full causal attention in eval mode, and it hands H2O its scores
            model = load_base(ws.model_path, "sf_attention").eval()
        return model

    cells = [(FULL_CACHE, 1.0)] + [(p, b) for p in args.eviction_policies for b in args.eviction_budgets]
    for length in args.eviction_lengths:
        segments = ws.windows(length, args.eviction_segments)
        for metric in ("perplexity", "passkey"):
            for method, budget in cells:
                config = {"metric": metric, "cache": method, "budget": budget, "length": length,
                          "chunk": args.eviction_chunk}
                if metric == "passkey":
                    config.update(depths=args.depths, trials=args.eviction_trials, eval_seed=args.eval_seed)
                else:
                    config.update(segments=len(segments), tokens=tokens_sha(segments))

                def compute(metric=metric, method=method, budget=budget, length=length, segments=segments):
                    if metric == "passkey":
                        return eviction_passkey(base_model(), ws, method, budget, length)
                    return eviction_perplexity(base_model(), ws, method, budget, segments)

                result = ws.unit("eviction", f"{metric}/{length}/{method}/{budget:g}", config, compute, wanted)
                if result is not None:
                    table.setdefault(method, {}).setdefault(str(length), {}).setdefault(f"{budget:g}", {})[metric] = result
    return table


def cache_factory(method: str, budget: float) -> Callable[[int], Any] | None:
    """``tokens -> fresh eviction_cache(method, budget, tokens)``; None for the full cache."""
    from hf_sinklora.evaluation.cache_quality import eviction_cache

    if method == FULL_CACHE:
        return None
    return lambda tokens: eviction_cache(method, budget, tokens)


def eviction_passkey(model: Any, ws: Workspace, method: str, budget: float, length: int) -> dict[str, Any]:
    """Passkey at ``length`` through one cache (prompts fed ``--eviction-chunk`` tokens per forward)."""
    args = ws.args
    factory = cache_factory(method, budget)
    result = passkey(model, ws.tokenizer, length, args.depths, args.eviction_trials, args.eval_seed,
                     progress=args.progress, cache_factory=factory, prefill_chunk_size=args.eviction_chunk)
    if factory is not None:
        result["budget_tokens"] = factory(length).policy.budget
    logger.info("eviction passkey %s %g at %d: %d/%d", method, budget, length, result["correct"], result["prompts"])
    return result


def eviction_perplexity(model: Any, ws: Workspace, method: str, budget: float, segments: list[torch.Tensor]) -> dict[str, Any]:
    """Perplexity of ``segments`` streamed ``--eviction-chunk`` tokens per forward through one cache
    (each token predicted from what the cache holds; budget a fraction of the segment)."""
    from transformers import DynamicCache

    from hf_sinklora.evaluation import streamed_nll

    length = len(segments[0])
    factory = cache_factory(method, budget) or (lambda _tokens: DynamicCache(config=model.config))
    total, scored = 0.0, 0
    for segment in segments:
        nll, count = streamed_nll(model, segment, factory(length), ws.args.eviction_chunk)
        total, scored = total + nll, scored + count
    result = {"perplexity": math.exp(total / scored), "mean_nll": total / scored, "tokens_scored": scored,
              "segments": len(segments)}
    if method != FULL_CACHE:
        result["budget_tokens"] = factory(length).policy.budget
    logger.info("eviction ppl %s %g at %d: %.3f", method, budget, length, result["perplexity"])
    return result


def add_ratios(table: dict[str, Any]) -> None:
    """Each eviction perplexity cell gets ``ppl_ratio``: its perplexity over the full cache's at that length."""
    for method, by_length in table.items():
        for length, by_budget in by_length.items():
            full = table.get(FULL_CACHE, {}).get(length, {}).get("1", {}).get("perplexity")
            for cell in by_budget.values():
                if full and "perplexity" in cell:
                    cell["perplexity"]["ppl_ratio"] = cell["perplexity"]["perplexity"] / full["perplexity"]


# ------------------------------------------------------------------------------------------ outputs


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _not_run(axis: Any, title: str) -> None:
    axis.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(title, fontsize=9)


def plot(document: dict[str, Any], path: Path) -> None:
    """One PNG: zero-shot perplexity per attention; fine-tuning loss curves; passkey and held-out
    perplexity of the base and the fine-tuned models; eviction passkey and perplexity against the
    budget (one line per policy and length, the full cache dashed). Missing parts say so."""
    figure = _figure(15, 8)
    axes = figure.subplots(2, 3)
    zero = document["zero_shot"]
    axis = axes[0][0]
    if zero:
        names = list(zero)
        axis.bar(range(len(names)), [zero[m]["perplexity"] for m in names], color=[f"C{i}" for i in range(len(names))])
        axis.set_xticks(range(len(names)), [m.replace("_", "\n") for m in names], fontsize=7)
        for i, m in enumerate(names):
            axis.text(i, zero[m]["perplexity"], f"{zero[m]['perplexity']:.1f}", ha="center", va="bottom", fontsize=8)
        axis.set_ylabel("perplexity (train mode)")
        axis.set_title(f"zero-shot, frozen, train mode, {document['settings']['length']} tokens", fontsize=9)
    else:
        _not_run(axis, "zero-shot")
    tuned = document["in_window_finetune"]
    plot_finetune(tuned, axes[0][1], axes[0][2])
    plot_eviction(document["eviction"], axes[1][0], axes[1][1])
    axes[1][2].axis("off")
    axes[1][2].text(0, 1, summary_text(document), va="top", ha="left", fontsize=7, family="monospace")
    figure.suptitle(document["title"], fontsize=9)
    figure.savefig(path)


def plot_finetune(tuned: dict[str, Any], curves: Any, bars: Any) -> None:
    """Loss curves of the fine-tuning runs and the passkey / perplexity of every row."""
    runs = {m: e for m, e in tuned.items() if e.get("training")}
    if runs:
        for method, entry in runs.items():
            losses = entry["training"]["losses"]
            curves.plot(range(1, len(losses) + 1), losses, label=method)
        curves.set_xlabel("step")
        curves.set_ylabel("training loss")
        curves.legend(fontsize=7)
        curves.set_title("in-window LoRA+ (same rows and seed)", fontsize=9)
    else:
        _not_run(curves, "in-window fine-tuning: loss")
    if tuned:
        names = list(tuned)
        accuracy = [tuned[m]["passkey"]["accuracy"] for m in names]
        bars.bar(range(len(names)), accuracy, color="C0", alpha=0.7)
        bars.set_ylim(0, 1.05)
        bars.set_ylabel("passkey accuracy (full attention)")
        twin = bars.twinx()
        twin.plot(range(len(names)), [tuned[m]["held_out"]["perplexity"] for m in names], "o", color="C3")
        twin.set_ylabel("held-out perplexity (eval mode)", color="C3")
        bars.set_xticks(range(len(names)), names)
        bars.set_title("after in-window fine-tuning", fontsize=9)
    else:
        _not_run(bars, "in-window fine-tuning: passkey / perplexity")


def plot_eviction(table: dict[str, Any], accuracy_axis: Any, ppl_axis: Any) -> None:
    """Passkey and perplexity against the budget per policy and length; the full cache dashed."""
    if not table:
        _not_run(accuracy_axis, "eviction: passkey")
        _not_run(ppl_axis, "eviction: perplexity")
        return
    for axis, metric, value in ((accuracy_axis, "passkey", "accuracy"), (ppl_axis, "perplexity", "perplexity")):
        lengths = sorted({n for by_length in table.values() for n in by_length}, key=int)
        for j, length in enumerate(lengths):
            style = "-" if j == 0 else ":"
            for i, policy in enumerate(p for p in table if p != FULL_CACHE):
                cells = table[policy].get(length, {})
                budgets = sorted((b for b in cells if metric in cells[b]), key=float)
                if budgets:
                    axis.plot([float(b) for b in budgets], [cells[b][metric][value] for b in budgets], style, marker="o",
                              color=f"C{i}", label=f"{policy} @ {length}")
            full = table.get(FULL_CACHE, {}).get(length, {}).get("1", {}).get(metric)
            if full:
                axis.axhline(full[value], color="black", linestyle="--" if j == 0 else ":", label=f"full cache @ {length}")
        axis.set_xlabel("budget (fraction of the prompt / segment)")
        axis.set_ylabel(f"{metric} (base model)")
        if metric == "passkey":
            axis.set_ylim(-0.05, 1.05)
        else:
            axis.set_yscale("log")
        axis.legend(fontsize=6)
        axis.set_title(f"KV eviction: {metric}", fontsize=9)


def summary_text(document: dict[str, Any]) -> str:
    """The goal block and the pending units as a few lines of text for the PNG."""
    goal = document["goal"]
    lines = [f"goal met: {goal['met']}"]
    for name in ("sf_keeps_95pct_of_base_passkey", "sf_ppl_within_2pct_of_full"):
        check = goal[name]
        lines.append(f"{name}: " + ("n/a" if check is None else f"met={check['met']}"))
    pending = document["pending"]
    lines.append(f"pending units: {len(pending)}")
    lines += [f"  {unit}" for unit in pending[:20]] + (["  ..."] if len(pending) > 20 else [])
    return "\n".join(lines)


def write_outputs(document: dict[str, Any], args: argparse.Namespace) -> Path:
    """``<name>.json`` and ``<name>.png`` in ``--output-dir``; returns the JSON path."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{args.name}.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
    plot(document, args.output_dir / f"{args.name}.png")
    logger.info("wrote %s and %s.png", path, args.name)
    return path


def settings_record(ws: Workspace) -> dict[str, Any]:
    """The run's settings for the JSON (the data split named)."""
    args = ws.args
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record.update({
        "model_folder": str(ws.model_path), "model": ws.model_id,
        "held_out_books": list(args.held_out_books), "finetune_books": list(args.finetune_books),
        "data_split": "fine-tuning rows come from finetune_books only; every perplexity window, eviction segment "
                      "and passkey filler is from held_out_books or generated (no overlap)",
        "held_out_tokens": sum(len(d) for d in ws.held_out),
        "passkey_prompt_tokens": "prompts of exactly the length (answer generated after it)",
        "zero_shot_mode": "model.train() under torch.no_grad (sparse training attention on; dropout is 0)",
        "finetune_recipe": "hf_sinklora.training.recipe.run_training (LoRA+ on q/k/v/o, embeddings and norms "
                           "trained), CLI defaults but the length, attention, steps, seed; within_context=True",
    })
    return record


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark (see the module docstring); writes the outputs and returns the JSON document."""
    started = time.perf_counter()
    longlora_eager_s2.register()  # this process only; the package never registers it
    ws = Workspace(args)
    env = environment("cpu")
    document: dict[str, Any] = {
        "benchmark": "issue 22 part 3: SmolLM2-135M-Instruct, zero-shot train-mode perplexity, in-window LoRA+, "
                     "KV eviction",
        "title": (f"{ws.model_path.name}: train-mode ppl and in-window LoRA+ at {args.length} tokens; eviction at "
                  f"{args.eviction_lengths} (held-out: {', '.join(args.held_out_books)})"),
        "created_utc": _now(),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": env,
        "settings": settings_record(ws),
    }
    document["zero_shot"] = zero_shot(ws, "zero_shot" in args.parts)
    document["eviction"] = eviction(ws, "eviction" in args.parts)
    add_ratios(document["eviction"])
    document["in_window_finetune"] = in_window_finetune(ws, "in_window_finetune" in args.parts)
    document["goal"] = goal_check(document["in_window_finetune"])
    document["pending"] = ws.pending
    document["seconds_this_run"] = round(time.perf_counter() - started, 1)
    write_outputs(document, args)
    logger.info("%d units pending; %.0f s", len(ws.pending), document["seconds_this_run"])
    return document


# ------------------------------------------------------------------------------------------ arguments


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


QUICK = {"length": 128, "zero_shot_windows": 2, "finetune_steps": 2, "save_steps": 0, "trials": 1,
         "depths": [0.0, 1.0], "eviction_lengths": [128], "eviction_trials": 1, "eviction_budgets": [0.5],
         "eviction_segments": 1, "eviction_chunk": 32, "max_chars": 100_000}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=_names, default=list(PARTS), help=f"comma-separated, from {list(PARTS)}")
    parser.add_argument("--model", default=None, help="a checkpoint folder (default: real_checkpoint(), SmolLM2-135M-Instruct)")
    parser.add_argument("--books", type=Path, default=DEFAULT_BOOKS, help="folder of the Gutenberg books")
    parser.add_argument("--held-out-books", type=_names, default=list(HELD_OUT_BOOKS))
    parser.add_argument("--finetune-books", type=_names, default=list(FINETUNE_BOOKS))
    parser.add_argument("--max-chars", type=int, default=0, help="keep the first N characters of each book (0: all)")
    parser.add_argument("--length", type=int, default=2048, help="zero-shot and fine-tuning length (tokens)")
    parser.add_argument("--group-size-ratio", type=float, default=0.25, help="group size / length of the sparse attentions")
    parser.add_argument("--zero-shot-windows", type=int, default=16,
                        help="held-out windows of the zero-shot and the fine-tuned models' perplexity")
    parser.add_argument("--zero-shot-methods", type=_names, default=list(ZERO_SHOT_METHODS))
    tune = parser.add_argument_group("in-window fine-tuning")
    tune.add_argument("--finetune-methods", type=_names, default=list(FINETUNE_METHODS))
    tune.add_argument("--finetune-steps", type=int, default=200, help="optimizer steps per method")
    tune.add_argument("--finetune-batch", type=int, default=1)
    tune.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (the CLI's default)")
    tune.add_argument("--lora-r", type=int, default=8, help="LoRA rank (the CLI's default; alpha = 2 x rank)")
    tune.add_argument("--seed", type=int, default=0, help="draws the rows and the LoRA initialisation")
    tune.add_argument("--save-steps", type=int, default=25, help="checkpoint every N steps (resume within a machine)")
    evaluation = parser.add_argument_group("passkey")
    evaluation.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    evaluation.add_argument("--trials", type=int, default=10, help="prompts per depth after fine-tuning")
    evaluation.add_argument("--eval-seed", type=int, default=1234)
    evict = parser.add_argument_group("eviction (base model)")
    evict.add_argument("--eviction-lengths", type=_ints, default=[2048, 4096])
    evict.add_argument("--eviction-policies", type=_names, default=list(POLICIES))
    evict.add_argument("--eviction-budgets", type=_floats, default=[0.1, 0.25, 0.5])
    evict.add_argument("--eviction-trials", type=int, default=5, help="passkey prompts per depth")
    evict.add_argument("--eviction-segments", type=int, default=4, help="held-out segments per perplexity cell")
    evict.add_argument("--eviction-chunk", type=int, default=128,
                       help="tokens per forward through the cache (passkey prefill and streamed perplexity)")
    out = parser.add_argument_group("runs and outputs")
    out.add_argument("--quick", action="store_true", help="a smoke run at tiny sizes")
    out.add_argument("--time-budget-min", type=float, default=0, help="start no unit after this many minutes (0: none)")
    out.add_argument("--work-dir", type=Path, default=None, help="fine-tuning runs (default runs/real_checkpoint)")
    out.add_argument("--output-dir", type=Path, default=None,
                     help="JSON, PNG and resume file (default benchmarks/results; runs/real_checkpoint_quick with --quick)")
    out.add_argument("--name", default="real_checkpoint", help="stem of the JSON, PNG and <name>_progress.json")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.output_dir = args.output_dir or (ROOT / "runs" / "real_checkpoint_quick" if args.quick else DEFAULT_OUTPUT_DIR)
    args.work_dir = args.work_dir or (args.output_dir / "work" if args.quick else ROOT / "runs" / "real_checkpoint")
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` on parts, methods, policies or budgets that cannot run, and on overlapping books."""
    choices = {"parts": (args.parts, PARTS), "zero-shot-methods": (args.zero_shot_methods, ZERO_SHOT_METHODS),
               "finetune-methods": (args.finetune_methods, FINETUNE_METHODS),
               "eviction-policies": (args.eviction_policies, POLICIES)}
    for flag, (given, allowed) in choices.items():
        if sorted(set(given) - set(allowed)):
            parser.error(f"--{flag} must come from {list(allowed)}, got {given}")
    if not all(0 < b < 1 for b in args.eviction_budgets):
        parser.error(f"--eviction-budgets must be fractions in (0, 1), got {args.eviction_budgets}")
    if set(args.held_out_books) & set(args.finetune_books):
        parser.error(f"--held-out-books and --finetune-books overlap: {sorted(set(args.held_out_books) & set(args.finetune_books))}")
    if args.length % 8 or args.length < 64:
        parser.error(f"--length must be a multiple of 8 and >= 64, got {args.length}")


def main(argv: Sequence[str] | None = None) -> None:
    configure_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()
