"""Prefill time of ``H2OCache`` against the same model's SDPA prefill (issue 11, goal 3).

The random 4-layer Llama of ``bench_h2o.py`` (or, with ``--shape``, a real model's shape from
``bench_common.MODEL_SHAPES``) prefills an ``n``-token prompt four ways, in alternation,
``--repeats`` times each: ``sdpa`` (stock attention, ``DynamicCache``), ``sdpa-chunked`` (the same
in forwards of ``--chunk`` tokens: what chunking alone costs), ``h2o`` (``sf_attention`` +
``H2OCache(budget)`` in one forward, scoring every query) and ``h2o-chunked`` (H2O in forwards of
``--chunk`` tokens, what ``generate(prefill_chunk_size=...)`` does). Reported: median seconds with
min/max, and each median's ratio to the one-shot ``sdpa``'s.

``--memory`` measures peak memory instead: each (contender, n) prefill runs ``--repeats`` times,
each in a fresh Python process (so no allocator cache or earlier run leaks into the figure); the
process builds the model, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), prefills,
and reports ``VmHWM`` minus the RSS just before the prefill: the memory the prefill itself took
at its peak (activations, scores, the cache). Written to ``bench_h2o_prefill_memory_<device>``.

    .venv/bin/python benchmarks/bench_h2o_prefill.py --lengths 8192 16384
    python benchmarks/bench_h2o_prefill.py --device cuda --shape llama3-8b-slice --lengths 16384 32768
    .venv/bin/python benchmarks/bench_h2o_prefill.py --lengths 8192 16384 --memory --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
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
    model_shape_config,
    synchronize,
)
from bench_h2o import default_config
from transformers import AutoModelForCausalLM, DynamicCache

from hf_sinklora import EvictingCache, H2OCache
from hf_sinklora.evaluation.cache_quality import POLICIES

logger = logging.getLogger("bench_h2o_prefill")
CONTENDERS = ("sdpa", "sdpa-chunked", "h2o", "h2o-chunked")
DEFAULT_SHAPE = "bench_h2o"  # bench_h2o.default_config: 4 layers, hidden 256, 4 heads of 64


@torch.no_grad()
def prefill_seconds(model: Any, ids: torch.Tensor, cache: Any, chunk: int | None, device: str) -> float:
    synchronize(device)
    started = time.perf_counter()
    step = chunk or ids.shape[1]
    for start in range(0, ids.shape[1], step):
        model(ids[:, start : start + step], cache=cache, use_cache=True, logits_to_keep=1)
    synchronize(device)
    return time.perf_counter() - started


def shape_config(shape: str, n: int) -> Any:
    """The model config of ``shape`` (:data:`DEFAULT_SHAPE` or a :data:`MODEL_SHAPES` name) for ``n`` tokens."""
    return default_config(n) if shape == DEFAULT_SHAPE else model_shape_config(shape, max(n * 2, 4096))


def measure(n: int, budget: float, chunk: int, repeats: int, device: str, dtype: torch.dtype = torch.float32,
            shape: str = DEFAULT_SHAPE, policies: Sequence[str] = ()) -> dict[str, Any]:
    """Medians over ``repeats`` alternating prefills of each contender (and of each extra eviction
    policy of ``policies``, one-shot), and their ratios to one-shot SDPA."""
    config = shape_config(shape, n)
    # each model its own config: from_config keeps the object it is given, and the second call would
    # switch the first model's attention too (the baseline then ran sf_attention, not stock SDPA)
    sdpa = model_from_config(copy.deepcopy(config), device, dtype, "sdpa").eval()
    sf = model_from_config(copy.deepcopy(config), device, dtype, "sf_attention").eval()
    if sdpa.config._attn_implementation != "sdpa":
        raise RuntimeError(f"the baseline runs {sdpa.config._attn_implementation}, not sdpa")
    sf.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1)).to(device)
    tokens = round(budget * n)
    runs = {
        "sdpa": lambda: prefill_seconds(sdpa, ids, DynamicCache(config=config), None, device),
        "sdpa-chunked": lambda: prefill_seconds(sdpa, ids, DynamicCache(config=config), chunk, device),
        "h2o": lambda: prefill_seconds(sf, ids, H2OCache(tokens), None, device),
        "h2o-chunked": lambda: prefill_seconds(sf, ids, H2OCache(tokens), chunk, device),
    }
    for policy in policies:
        runs[policy] = lambda p=policy: prefill_seconds(sf, ids, EvictingCache(POLICIES[p](tokens)), None, device)
    for run in runs.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(run())
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = {name: medians[name] / medians["sdpa"] for name in runs}
    logger.info("n=%d: %s", n, ", ".join(f"{k} {medians[k]:.2f}s ({ratios[k]:.2f}x)" for k in runs))
    return {"n": n, "budget_tokens": tokens, "seconds": seconds, "median_s": medians, "ratio_to_sdpa": ratios}


def _proc_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (peak-RSS measurement needs Linux)")


def child_peak_rss(contender: str, n: int, budget: float, chunk: int) -> dict[str, float]:
    """In a fresh process: one prefill of ``contender``; MiB of peak RSS above the RSS before it."""
    config = default_config(n)
    torch.manual_seed(0)
    stock = contender.startswith("sdpa")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa" if stock else "sf_attention").eval()
    ids = torch.randint(0, config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    fresh = (lambda: DynamicCache(config=config)) if stock else (lambda: H2OCache(round(budget * n)))
    prefill_seconds(model, ids[:, :64], fresh(), None, "cpu")  # one-time set-up (threads, kernels) off the figure
    cache = fresh()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _proc_status_kib("VmRSS")
    prefill_seconds(model, ids, cache, chunk if contender.endswith("-chunked") else None, "cpu")
    return {"peak_extra_mib": (_proc_status_kib("VmHWM") - before) / 1024, "rss_before_mib": before / 1024}


def measure_memory(n: int, budget: float, chunk: int, repeats: int) -> dict[str, Any]:
    """``repeats`` fresh-process peak-RSS runs per contender (alternating), medians and ratios to sdpa."""
    runs: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(repeats):
        for name in CONTENDERS:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--lengths", str(n), "--budget", str(budget),
                                  "--chunk", str(chunk)], check=True, capture_output=True, text=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mib"])
    medians = {name: statistics.median(values) for name, values in runs.items()}
    ratios = {name: medians[name] / medians["sdpa"] for name in CONTENDERS}
    logger.info("n=%d peak extra MiB: %s", n, ", ".join(f"{k} {medians[k]:.0f} ({ratios[k]:.2f}x)" for k in CONTENDERS))
    return {"n": n, "budget_tokens": round(budget * n), "peak_extra_mib": runs, "median_mib": medians,
            "ratio_to_sdpa": ratios}


def plot_memory(document: dict[str, Any], path: Path) -> None:
    """Peak extra RSS per contender and n (bars: median, whiskers: min..max over fresh processes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    rows = document["rows"]
    width = 0.8 / len(CONTENDERS)
    for index, name in enumerate(CONTENDERS):
        xs = [i + index * width for i in range(len(rows))]
        medians = [row["median_mib"][name] for row in rows]
        low = [m - min(row["peak_extra_mib"][name]) for m, row in zip(medians, rows)]
        high = [max(row["peak_extra_mib"][name]) - m for m, row in zip(medians, rows)]
        axis.bar(xs, medians, width, yerr=[low, high], capsize=3, label=name, color=f"C{index}")
    axis.set_xticks([i + width for i in range(len(rows))], [str(row["n"]) for row in rows])
    axis.set(xlabel="prompt tokens n", ylabel="peak RSS above the start of the prefill (MiB)", title=document["title"])
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def plot(document: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    rows = document["rows"]
    lengths = [row["n"] for row in rows]
    for name in [c for c in rows[0]["ratio_to_sdpa"] if c != "sdpa"]:
        medians = [row["ratio_to_sdpa"][name] for row in rows]
        low = [m - min(row["seconds"][name]) / row["median_s"]["sdpa"] for m, row in zip(medians, rows)]
        high = [max(row["seconds"][name]) / row["median_s"]["sdpa"] - m for m, row in zip(medians, rows)]
        axis.errorbar(lengths, medians, yerr=[low, high], marker="o", capsize=3, label=name)
    axis.axhline(1.0, color="grey", linewidth=0.8, label="sdpa")
    if document["environment"]["device"].startswith("cuda"):
        axis.axhline(1.8, color="C3", linestyle=":", linewidth=0.8, label="goal one-shot 1.8x")
        axis.axhline(2.5, color="C4", linestyle=":", linewidth=0.8, label="goal chunked 2.5x")
    else:
        axis.axhline(1.3, color="C3", linestyle=":", linewidth=0.8, label="goal 1.3x")
    length_axis(axis, lengths, "prompt tokens n")
    axis.set(ylabel="prefill time / one-shot SDPA prefill",
             ylim=(0, max(2.0, max(max(r["ratio_to_sdpa"].values()) for r in rows) * 1.1)),
             title=document["title"])
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--policies", nargs="*", default=[], choices=[p for p in POLICIES if p != "h2o"],
                        help="also time one-shot prefills through these eviction policies (e.g. snapkv streaming)")
    parser.add_argument("--shape", choices=[DEFAULT_SHAPE, *MODEL_SHAPES], default=DEFAULT_SHAPE,
                        help="model shape (random weights); default: bench_h2o.py's 4-layer model")
    parser.add_argument("--budget", type=float, default=0.2, help="H2O budget as a fraction of n")
    parser.add_argument("--chunk", type=int, default=1024, help="prefill chunk of h2o-chunked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    add_dtype_argument(parser)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--memory", action="store_true", help="peak RSS per prefill, each run in a fresh process (CPU)")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_peak_rss(args.child, args.lengths[0], args.budget, args.chunk)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    env = environment(args.device)
    dtype = getattr(torch, dtype_name_for(args.dtype, args.device))
    if args.memory:
        if args.device != "cpu":
            parser.error("--memory measures process RSS: CPU only (use --device cpu)")
        document = {
            "benchmark": "prefill peak memory: H2OCache (one forward, and chunked) vs SDPA + DynamicCache, same model",
            "title": f"H2O prefill peak memory vs SDPA ({env['device_name']}, fresh process per run)",
            "environment": env,
            "settings": vars(args) | {"output_dir": str(args.output_dir)},
            "rows": [measure_memory(n, args.budget, args.chunk, args.repeats) for n in args.lengths],
        }
        args.output_dir.mkdir(parents=True, exist_ok=True)
        stem = args.output_dir / "bench_h2o_prefill_memory_cpu"
        stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
        plot_memory(document, stem.with_suffix(".png"))
        return
    shape_label = "" if args.shape == DEFAULT_SHAPE else f", {args.shape} shape"
    document = {
        "benchmark": "prefill time: H2OCache (one forward, and chunked) vs SDPA + DynamicCache, same model",
        "title": f"H2O prefill vs SDPA ({env['device_name']}, {args.device}{shape_label})",
        "environment": env,
        "settings": vars(args) | {"output_dir": str(args.output_dir), "dtype": str(dtype).removeprefix("torch.")},
        "rows": [],
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    shape_part = "" if args.shape == DEFAULT_SHAPE else f"{args.shape}_"
    stem = args.output_dir / f"bench_h2o_prefill_{shape_part}{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    for n in args.lengths:  # rewritten after every length, so a run stopped early keeps what it measured
        document["rows"].append(measure(n, args.budget, args.chunk, args.repeats, args.device, dtype, args.shape,
                                        args.policies))
        stem.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
        plot(document, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
