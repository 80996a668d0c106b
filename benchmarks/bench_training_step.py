"""A whole training step with ``sf_attention`` against full causal SDPA, beside the FLOP-count prediction.

For each model shape and sequence length ``n``: a ``LlamaForCausalLM`` (the same random weights for
both attentions; 2-layer toy shapes by default, ``--shapes real`` for SmolLM2-135M's 30 layers and a
4-layer slice of Llama-3-8B), wrapped with the recipe's LoRA+ (``sinklora_lora_config``), in train
mode; one step = forward with labels, backward, AdamW step, zero_grad. The two attentions
alternate, each step timed ``--repeats`` times after a warm-up; medians with min/max spread.

The prediction assumes every FLOP costs the same: a step is 3x its forward FLOPs (the 6N rule),
the forward being the linear layers (``2 * weights`` per token: projections, MLP, LM head) plus
attention (``4 * D * H`` per visible (query, key) pair: ``n^2 / 2`` pairs for causal attention,
about ``n * (G / 2 + s)`` for SF-Attn). What it leaves out (softmax, norms, the block copies of
grouped attention) is what a gap between the measurement and the prediction shows.

    .venv/bin/python benchmarks/bench_training_step.py                  # both shapes, n = 4k/8k/16k
    .venv/bin/python benchmarks/bench_training_step.py --quick          # smoke run, tiny sizes
    python benchmarks/bench_training_step.py --device cuda --shapes real --lengths 16384 32768

Writes ``<output-dir>/bench_training_step_<device>.json`` and ``.png`` (``bench_training_step_real_<device>``
for the real shapes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    DEFAULT_OUTPUT_DIR,
    MODEL_SHAPES,
    add_dtype_argument,
    dtype_name_for,
    environment,
    length_axis,
    model_from_config,
    synchronize,
)
from peft import get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

import hf_sinklora
from hf_sinklora.attention.config import BACKENDS

logger = logging.getLogger("bench_training_step")
CONTENDERS = ("sdpa", "sf_attention")


@dataclass(frozen=True)
class Shape:
    """A Llama: ``heads`` query heads and ``kv_heads`` key/value heads (default: as many) of ``head_dim``."""

    name: str
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    vocab: int
    layers: int = 2
    kv_heads: int | None = None
    tied: bool = False
    rope_theta: float = 10000.0

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    def config(self, max_length: int) -> LlamaConfig:
        return LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
                           max_position_embeddings=max_length, tie_word_embeddings=self.tied, rope_theta=self.rope_theta)

    @classmethod
    def of_model(cls, name: str) -> Shape:
        """The shape of ``bench_common.MODEL_SHAPES[name]``."""
        c = MODEL_SHAPES[name]
        return cls(name, hidden=c["hidden_size"], heads=c["num_attention_heads"], head_dim=c["head_dim"],
                   intermediate=c["intermediate_size"], vocab=c["vocab_size"], layers=c["num_hidden_layers"],
                   kv_heads=c["num_key_value_heads"], tied=c["tie_word_embeddings"], rope_theta=c["rope_theta"])


SHAPES = (
    Shape("8 heads x 128, hidden 1024, vocab 8000", hidden=1024, heads=8, head_dim=128, intermediate=2816, vocab=8000),
    Shape("4 heads x 128, hidden 512, vocab 32000", hidden=512, heads=4, head_dim=128, intermediate=1408, vocab=32000),
)
QUICK_SHAPES = (Shape("quick", hidden=64, heads=2, head_dim=32, intermediate=128, vocab=256),)
REAL_SHAPES = tuple(Shape.of_model(name) for name in MODEL_SHAPES)


def predicted_ratio(shape: Shape, n: int, settings: hf_sinklora.SFAttentionConfig) -> float:
    """sf/sdpa step time if every FLOP cost the same (see the module docstring)."""
    attention_weights = shape.hidden * shape.head_dim * 2 * (shape.heads + shape.num_kv_heads)
    linear = n * 2 * (shape.layers * (attention_weights + 3 * shape.hidden * shape.intermediate) + shape.hidden * shape.vocab)
    per_pair = 4 * shape.head_dim * shape.heads * shape.layers
    group = settings.group_size_for(n)
    full_pairs = n * (n + 1) / 2
    sf_pairs = n * ((group + 1) / 2 + min(settings.num_sink_tokens, n))
    return (linear + per_pair * sf_pairs) / (linear + per_pair * full_pairs)


def contenders(extra_backends: Sequence[str]) -> list[str]:
    """``sdpa``, ``sf_attention`` (``backend="auto"``) and one ``sf_attention:<backend>`` per extra backend."""
    return [*CONTENDERS, *(f"sf_attention:{backend}" for backend in extra_backends)]


def build_models(shape: Shape, n: int, device: str, dtype: torch.dtype, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    """The same LoRA+ model under each attention."""
    models = {}
    for name in names:
        implementation, _, backend = name.partition(":")
        base = model_from_config(shape.config(n), device, dtype, implementation)
        hf_sinklora.configure_sf_attention(base, backend=backend or "auto")
        torch.manual_seed(1)
        models[name] = get_peft_model(base, hf_sinklora.sinklora_lora_config(base)).train()
    return models


def timed_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - started


def measure(shape: Shape, n: int, repeats: int, device: str, dtype: torch.dtype = torch.float32,
            extra_backends: Sequence[str] = ()) -> dict[str, Any]:
    names = contenders(extra_backends)
    models = build_models(shape, n, device, dtype, names)
    optimizers = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    ids = torch.randint(0, shape.vocab, (1, n), generator=torch.Generator().manual_seed(2)).to(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up
        timed_step(models[name], optimizers[name], ids, device)
    for _ in range(repeats):
        for name in names:  # alternate, so load on a shared machine hits both alike
            times[name].append(timed_step(models[name], optimizers[name], ids, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["sf_attention"] / medians["sdpa"]
    prediction = predicted_ratio(shape, n, hf_sinklora.SFAttentionConfig())
    logger.info("%s n=%d: sdpa %.3fs, sf %.3fs, sf/sdpa %.3f (FLOP prediction %.3f)", shape.name, n,
                medians["sdpa"], medians["sf_attention"], ratio, prediction)
    extra_ratios = {name: medians[name] / medians["sdpa"] for name in names[len(CONTENDERS):]}
    for name, value in extra_ratios.items():
        logger.info("%s n=%d: %s %.3fs, /sdpa %.3f", shape.name, n, name, medians[name], value)
    return {"n": n, "seconds": times, "median_s": medians, "ratio": ratio, "predicted_ratio": prediction,
            "within_5_percent": ratio <= prediction * 1.05, "extra_ratios": extra_ratios}


def plot(document: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6 * len(document["shapes"]), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    for index, entry in enumerate(document["shapes"], start=1):
        axis = figure.add_subplot(1, len(document["shapes"]), index)
        lengths = [cell["n"] for cell in entry["cells"]]
        spread = [[cell["ratio"] - min(cell["seconds"]["sf_attention"]) / max(cell["seconds"]["sdpa"]) for cell in entry["cells"]],
                  [max(cell["seconds"]["sf_attention"]) / min(cell["seconds"]["sdpa"]) - cell["ratio"] for cell in entry["cells"]]]
        axis.errorbar(lengths, [c["ratio"] for c in entry["cells"]], yerr=spread, marker="o", capsize=3,
                      label="measured (median, min-max)")
        axis.plot(lengths, [c["predicted_ratio"] for c in entry["cells"]], marker="x", linestyle="--",
                  label="FLOP-count prediction")
        length_axis(axis, lengths)
        top = max(1.2, 1.1 * max(max(c["seconds"]["sf_attention"]) / min(c["seconds"]["sdpa"]) for c in entry["cells"]))
        axis.set(title=entry["shape"]["name"], ylabel="step time, sf_attention / sdpa", ylim=(0, top))
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.legend(fontsize=8)
    figure.suptitle(document["title"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path)


def run(lengths: Sequence[int], shapes: Sequence[Shape], repeats: int, device: str, output_dir: Path,
        dtype: torch.dtype = torch.float32, extra_backends: Sequence[str] = (), tag: str = "") -> dict[str, Any]:
    """Measures every (shape, n) cell; writes ``bench_training_step_<tag><device>.json/.png`` after each."""
    env = environment(device)
    document = {
        "benchmark": "whole training step (LoRA+, train mode, Llama shapes): sf_attention vs causal SDPA",
        "title": f"training step, sf_attention / sdpa on {env['device_name']} ({device})",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "repeats": repeats,
        "dtype": str(dtype).removeprefix("torch."),
        "extra_backends": list(extra_backends),
        "shapes": [],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"bench_training_step_{tag}{'cuda' if device.startswith('cuda') else 'cpu'}"
    for shape in shapes:
        entry = {"shape": asdict(shape), "cells": []}
        document["shapes"].append(entry)
        for n in lengths:  # rewritten after every cell, so a run stopped early keeps what it measured
            entry["cells"].append(measure(shape, n, repeats, device, dtype, extra_backends))
            stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
            plot(document, stem.with_suffix(".png"))
    return document


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per contender after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny shape, n = 256/512, 1 repeat (a smoke run)")
    add_dtype_argument(parser)
    parser.add_argument("--extra-backends", nargs="*", default=[], choices=[b for b in BACKENDS if b != "auto"],
                        help="also time sf_attention with these backends forced (e.g. sdpa flex on CUDA)")
    parser.add_argument("--shapes", choices=["toy", "real"], default="toy",
                        help="toy: the two 2-layer shapes (default); real: " + ", ".join(MODEL_SHAPES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    dtype = getattr(torch, dtype_name_for(args.dtype, args.device))
    if args.quick:
        run([256, 512], QUICK_SHAPES, 1, args.device, args.output_dir, dtype, args.extra_backends)
    elif args.shapes == "real":
        run(args.lengths, REAL_SHAPES, args.repeats, args.device, args.output_dir, dtype, args.extra_backends, "real_")
    else:
        run(args.lengths, SHAPES, args.repeats, args.device, args.output_dir, dtype, args.extra_backends)


if __name__ == "__main__":
    main()
