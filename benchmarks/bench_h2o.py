"""Decode latency and KV memory of ``H2OCache`` against the stock ``DynamicCache``.

What it measures
----------------
For every context length ``n`` (``--lengths``) a prompt of ``n`` random tokens is prefilled
and then ``--decode-steps`` tokens are decoded greedily, one forward per token, with:

* ``dynamic``: the stock ``DynamicCache`` with ``attn_implementation="sdpa"`` (the baseline),
  prefilled in one forward;
* ``h2o@f``: ``H2OCache(budget=round(f * n))`` with ``attn_implementation="sf_attention"`` for
  every budget fraction ``f`` of ``--budgets``, prefilled in chunks of ``--chunk`` tokens
  (what ``generate(..., prefill_chunk_size=chunk)`` does);
* ``streaming@f`` / ``recent@f``: the same class keeping sinks + recent tokens only
  (StreamingLLM) / the recent tokens only, at the budget ``--policy-budget``;
* ``h2o@f-unchunked``: H2O at ``--policy-budget`` prefilled in one forward, for the prefill
  memory comparison.

Reported per (method, n): the median per-token decode latency over the decode steps after
``--warmup-steps`` (``time.perf_counter``, ``torch.cuda.synchronize()`` around each step on
CUDA); the KV bytes held after decoding (every layer's key and value tensors); the peak KV
bytes during the prefill (after every layer update) and the prefill wall time. Ratios are
against ``dynamic`` of the same run: ``speedup = latency_dynamic / latency``,
``kv_ratio = kv_bytes / kv_bytes_dynamic``.

The default model is a randomly initialised Llama-shaped decoder whose decode cost at long
context is dominated by attention (4 layers, hidden 256, 4 heads of 64, vocabulary 4096,
fp32): the regime KV eviction is for. ``--model`` benchmarks a real checkpoint (path or hub
id) instead. The project goal on this CPU: at ``n = 16384`` with a 20% budget, decoding at
least 3x faster than ``dynamic`` with at most 0.21x its KV bytes, and a chunked prefill
holding at most ``budget + chunk`` tokens per layer.

How to run
----------
From the repository root::

    .venv/bin/python benchmarks/bench_h2o.py                          # CPU defaults, ~10 min
    .venv/bin/python benchmarks/bench_h2o.py --lengths 2048 4096 8192 16384 32768
    .venv/bin/python benchmarks/bench_h2o.py --device cuda --dtype bfloat16 --model meta-llama/Llama-3.2-1B

Writes ``<output-dir>/bench_h2o_<device>.json`` and ``.png`` and logs a summary table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    DEFAULT_OUTPUT_DIR, add_dtype_argument, dtype_name_for, environment, is_cuda, length_axis, synchronize,
)
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig
from transformers.cache_utils import Cache

from hf_sinklora.cache import H2OPolicy
from hf_sinklora.cache import EvictingCache, cache_kv_bytes
from hf_sinklora.evaluation.cache_quality import POLICIES

logger = logging.getLogger("bench_h2o")

BASELINE = "dynamic"
GOAL = {"n": 16384, "budget": 0.2, "speedup": 3.0, "kv_ratio": 0.21}


@dataclass(frozen=True)
class Settings:
    model: str | None
    dtype: str
    device: str
    budgets: tuple[float, ...]
    policy_budget: float
    chunk: int
    decode_steps: int
    warmup_steps: int
    seed: int


@dataclass(frozen=True)
class Method:
    """One cache configuration: ``kind`` is dynamic, h2o, streaming or recent."""

    kind: str
    fraction: float | None = None
    chunked: bool = True

    @property
    def name(self) -> str:
        if self.kind == BASELINE:
            return BASELINE
        return f"{self.kind}@{self.fraction:g}" + ("" if self.chunked else "-unchunked")

    def make_cache(self, n: int, config: Any) -> Cache:
        if self.kind == BASELINE:
            return DynamicCache(config=config)
        budget = self.budget_tokens(n)
        return EvictingCache(POLICIES[self.kind](budget))

    def budget_tokens(self, n: int) -> int | None:
        return None if self.kind == BASELINE else H2OPolicy(budget=float(self.fraction)).budget_for(n)


def methods_for(settings: Settings) -> list[Method]:
    methods = [Method(BASELINE)] + [Method("h2o", f) for f in settings.budgets]
    methods += [Method("streaming", settings.policy_budget), Method("recent", settings.policy_budget)]
    return methods + [Method("h2o", settings.policy_budget, chunked=False)]


def default_config(max_length: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=max(max_length * 2, 4096),
    )


def load_models(settings: Settings, max_length: int) -> dict[str, torch.nn.Module]:
    """The same weights twice: stock SDPA (baseline) and ``sf_attention`` (which H2O needs)."""
    dtype = getattr(torch, settings.dtype)
    models = {}
    for implementation in ("sdpa", "sf_attention"):
        if settings.model:
            model = AutoModelForCausalLM.from_pretrained(settings.model, attn_implementation=implementation, dtype=dtype)
        else:
            torch.manual_seed(settings.seed)
            model = AutoModelForCausalLM.from_config(
                copy.deepcopy(default_config(max_length)), attn_implementation=implementation, dtype=dtype
            )
        models[implementation] = model.to(settings.device).eval()
    return models


def track_peak_kv(cache: Cache) -> dict[str, int]:
    """Records the largest total KV bytes seen after any layer update (wraps ``cache.update``)."""
    peak = {"bytes": 0, "tokens_per_layer": 0}
    update = cache.update

    def recording_update(key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = update(key_states, value_states, layer_idx, *args, **kwargs)
        peak["bytes"] = max(peak["bytes"], cache_kv_bytes(cache))
        peak["tokens_per_layer"] = max(peak["tokens_per_layer"], keys.shape[-2])
        return keys, values

    cache.update = recording_update
    return peak


@torch.no_grad()
def run_method(method: Method, model: torch.nn.Module, prompt: torch.Tensor, settings: Settings) -> dict[str, Any]:
    n = prompt.shape[1]
    cache = method.make_cache(n, model.config)
    peak = track_peak_kv(cache)
    chunk = settings.chunk if method.chunked and method.kind != BASELINE else n
    synchronize(settings.device)
    started = time.perf_counter()
    for start in range(0, n, chunk):
        logits = model(prompt[:, start : start + chunk], cache=cache).logits
    synchronize(settings.device)
    prefill_s = time.perf_counter() - started
    del cache.update  # stop recording (back to the class method): decode steps are timed bare
    token = logits[:, -1:].argmax(-1)
    latencies = []
    for _ in range(settings.warmup_steps + settings.decode_steps):
        synchronize(settings.device)
        started = time.perf_counter()
        token = model(token, cache=cache).logits[:, -1:].argmax(-1)
        synchronize(settings.device)
        latencies.append(time.perf_counter() - started)
    decode = latencies[settings.warmup_steps :]
    return {
        "budget_tokens": method.budget_tokens(n),
        "prefill_chunk": chunk,
        "prefill_s": round(prefill_s, 4),
        "prefill_peak_kv_bytes": peak["bytes"],
        "prefill_peak_tokens_per_layer": peak["tokens_per_layer"],
        "decode_latency_s": statistics.median(decode),
        "decode_latencies_s": [round(t, 6) for t in decode],
        "kv_bytes": cache_kv_bytes(cache),
        "seen_tokens": cache.get_seq_length(),
    }


def measure_length(n: int, models: dict[str, torch.nn.Module], settings: Settings) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(settings.seed + n)
    vocab = models["sdpa"].config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (1, n), generator=generator).to(settings.device)
    results = {}
    for method in methods_for(settings):
        model = models["sdpa" if method.kind == BASELINE else "sf_attention"]
        results[method.name] = run_method(method, model, prompt, settings)
        data = results[method.name]
        logger.info(
            "n=%6d %-20s prefill %7.2fs (peak %6.1f MiB KV, %6d tokens/layer)  decode %8.2f ms/token  KV %7.1f MiB",
            n, method.name, data["prefill_s"], data["prefill_peak_kv_bytes"] / 2**20,
            data["prefill_peak_tokens_per_layer"], data["decode_latency_s"] * 1e3, data["kv_bytes"] / 2**20,
        )
    base = results[BASELINE]
    return {
        "n": n,
        "methods": results,
        "speedup": {name: base["decode_latency_s"] / r["decode_latency_s"] for name, r in results.items()},
        "kv_ratio": {name: r["kv_bytes"] / base["kv_bytes"] for name, r in results.items()},
        "prefill_peak_kv_ratio": {name: r["prefill_peak_kv_bytes"] / base["prefill_peak_kv_bytes"] for name, r in results.items()},
    }


def goal_summary(rows: Sequence[dict[str, Any]], settings: Settings, device: str) -> dict[str, Any]:
    name = f"h2o@{GOAL['budget']:g}"
    row = next((r for r in rows if r["n"] == GOAL["n"]), None)
    bound_ok = all(
        r["methods"][m.name]["prefill_peak_tokens_per_layer"] <= r["methods"][m.name]["budget_tokens"] + settings.chunk
        for r in rows for m in methods_for(settings) if m.kind != BASELINE and m.chunked
    )
    speedup = None if row is None or name not in row["speedup"] else row["speedup"][name]
    kv_ratio = None if row is None or name not in row["kv_ratio"] else row["kv_ratio"][name]
    return {
        "description": (
            f"{name} at n={GOAL['n']}: decode >= {GOAL['speedup']}x faster than DynamicCache, KV bytes <= "
            f"{GOAL['kv_ratio']}x; every chunked prefill holds <= budget + chunk tokens per layer"
        ),
        "measured_speedup": speedup,
        "measured_kv_ratio": kv_ratio,
        "prefill_bound_held": bound_ok,
        "met": None if speedup is None else (speedup >= GOAL["speedup"] and kv_ratio <= GOAL["kv_ratio"] and bound_ok),
        "applies_to_this_device": not is_cuda(device) and settings.model is None,
    }


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'n':>6}  {'method':<20} {'ms/token':>9} {'speedup':>8} {'KV MiB':>8} {'KV ratio':>9} {'prefill peak MiB':>17}"]
    for row in rows:
        for name, data in row["methods"].items():
            lines.append(
                f"{row['n']:>6}  {name:<20} {data['decode_latency_s'] * 1e3:>9.2f} {row['speedup'][name]:>7.2f}x "
                f"{data['kv_bytes'] / 2**20:>8.1f} {row['kv_ratio'][name]:>9.3f} {data['prefill_peak_kv_bytes'] / 2**20:>17.1f}"
            )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], settings: Settings, title: str, path: Path) -> None:
    """Decode latency, speedup, KV ratio and prefill peak KV, each against the context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["n"] for r in rows]
    names = list(rows[0]["methods"])
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    latency, speedup, kv, prefill = axes.flat
    for index, name in enumerate(names):
        style = dict(marker="o", color=f"C{index}", label=name, linestyle="--" if "unchunked" in name else "-")
        latency.plot(lengths, [r["methods"][name]["decode_latency_s"] * 1e3 for r in rows], **style)
        prefill.plot(lengths, [r["methods"][name]["prefill_peak_kv_bytes"] / 2**20 for r in rows], **style)
        if name != BASELINE:
            speedup.plot(lengths, [r["speedup"][name] for r in rows], **style)
            kv.plot(lengths, [r["kv_ratio"][name] for r in rows], **style)
    speedup.axhline(GOAL["speedup"], color="red", linestyle=":", label=f"goal {GOAL['speedup']}x (20% budget, n={GOAL['n']})")
    kv.axhline(GOAL["kv_ratio"], color="red", linestyle=":", label=f"goal <= {GOAL['kv_ratio']}")
    latency.set(yscale="log", ylabel="decode latency (ms / token)", title="per-token decode latency")
    speedup.set(ylabel="latency_dynamic / latency", title="decode speedup vs DynamicCache (SDPA)")
    kv.set(ylabel="KV bytes / KV bytes of DynamicCache", title="KV memory after decoding")
    prefill.set(yscale="log", ylabel="MiB", title=f"prefill peak KV (chunk {settings.chunk})")
    for axis in axes.flat:
        length_axis(axis, lengths, "context length n")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_benchmark(settings: Settings, lengths: Sequence[int], output_dir: Path) -> dict[str, Any]:
    env = environment(settings.device)
    logger.info("environment: %s", json.dumps(env))
    models = load_models(settings, max(lengths))
    started = time.perf_counter()
    rows = [measure_length(n, models, settings) for n in lengths]
    config = models["sdpa"].config
    document = {
        "benchmark": "decode latency and KV memory: H2OCache (and StreamingLLM / recent-window policies) vs DynamicCache",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": {**env, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {**asdict(settings), "lengths": list(lengths)},
        "model_config": {k: config.to_dict().get(k) for k in (
            "model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size")},
        "timing_method": __doc__.split("Reported per (method, n): ")[1].split("The default model")[0].strip(),
        "goal": goal_summary(rows, settings, settings.device),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = output_dir / f"bench_h2o_{settings.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    title = f"H2OCache vs DynamicCache on {env['device_name']} ({settings.device}, {env['torch_num_threads']} threads, {settings.dtype})"
    plot(rows, settings, title, stem.with_suffix(".png"))
    logger.info("results:\n%s", summary_table(rows))
    logger.info("goal: %s", json.dumps(document["goal"]))
    logger.info("wrote %s.json and .png", stem)
    return document


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384], help="context lengths n")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5], help="H2O budgets, fractions of n")
    parser.add_argument("--policy-budget", type=float, default=0.2, help="budget of the policy and unchunked comparisons")
    parser.add_argument("--chunk", type=int, default=1024, help="prefill chunk size for the H2O caches")
    parser.add_argument("--decode-steps", type=int, default=24, help="timed decode steps")
    parser.add_argument("--warmup-steps", type=int, default=4, help="untimed decode steps first")
    parser.add_argument("--model", default=None, help="checkpoint path or hub id (default: the built-in random model)")
    add_dtype_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    args = parser.parse_args(argv)
    if not all(0 < f <= 1 for f in [*args.budgets, args.policy_budget]):
        parser.error("--budgets and --policy-budget must be fractions in (0, 1]")
    if min(args.lengths) < 16 or args.chunk < 1 or args.decode_steps < 1 or args.warmup_steps < 0:
        parser.error("--lengths must be >= 16, --chunk and --decode-steps >= 1, --warmup-steps >= 0")
    args.dtype = dtype_name_for(args.dtype, args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if is_cuda(args.device) and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    settings = Settings(
        args.model, args.dtype, args.device, tuple(args.budgets), args.policy_budget, args.chunk,
        args.decode_steps, args.warmup_steps, args.seed,
    )
    run_benchmark(settings, args.lengths, args.output_dir)


if __name__ == "__main__":
    main()
