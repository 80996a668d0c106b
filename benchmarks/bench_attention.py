"""Forward+backward cost of SF-Attn against full causal SDPA, at long sequence lengths.

What it measures
----------------
For every sequence length ``n`` (``--lengths``) and every method, one attention call on
``query (B, Hq, n, D)`` and ``key/value (B, Hkv, n, D)`` followed by ``backward`` of the
output (the gradients of q, k and v are materialised, as in training):

* ``sdpa``: full causal ``torch.nn.functional.scaled_dot_product_attention`` (the baseline);
* ``sf_attention`` (CPU): ``hf_sinklora.attention.sf_attention_forward`` in training mode with
  default settings (groups of ``G = n / 4`` tokens, half of the heads shifted by ``G / 2``,
  4 sink tokens, ``backend="auto"``);
* ``s2_attention`` (CPU): the same rule with 0 sink tokens;
* on CUDA, the same call once per backend, so the run shows which one ``backend="auto"`` should
  pick: ``sf_sdpa`` (``backend="sdpa"``, grouped SDPA), ``sf_flex`` (``backend="flex"``:
  ``torch.compile``d ``flex_attention`` with the SF-Attn block mask; the first call compiles and
  is the warm-up) and ``sf_flash_attn`` (``backend="flash_attn"``, only when ``flash_attn``
  imports). The JSON's ``auto_backend`` records what ``"auto"`` chose for these inputs. flex is not
  measured on the CPU: torch has no flex backward there.

Each (method, n) pair runs in its own child process (this script re-invoked with the hidden
``--worker`` flag), so neither allocator caches nor peak-memory counters leak between
measurements. The child does one warm-up call and then ``--repeats`` timed calls; the
reported time is the median (``torch.cuda.synchronize()`` brackets every call on CUDA).

Peak memory is the extra memory of one forward+backward beyond its inputs (q, k, v and the
output gradient), including the q/k/v gradients:

* CPU: ``ru_maxrss`` of the method's child minus ``ru_maxrss`` of a baseline child that
  imports the same modules, warms every method up on a tiny problem and allocates the same
  inputs. Resident-set peaks are only approximate (allocator reuse and fragmentation).
* CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated once the inputs exist.

Ratios are taken against ``sdpa`` of the same run: ``speedup = t_sdpa / t_method`` and
``memory_ratio = mem_method / mem_sdpa``. The project goal is ``sf_attention`` at least
3.5x faster than ``sdpa`` at ``n = 8192`` (forward+backward, CPU) with at most ``sdpa``'s extra
memory (issue 11).

The defaults model one attention layer of Llama-3-8B (32 query heads, 8 key/value heads,
head dim 128, batch 1, fp32 on CPU); with them a 2-core CPU needs about 10 to 15 minutes.

How to run
----------
From the repository root::

    .venv/bin/python benchmarks/bench_attention.py                       # CPU defaults
    .venv/bin/python benchmarks/bench_attention.py --lengths 2048 4096 --repeats 5
    .venv/bin/python benchmarks/bench_attention.py --device cuda --dtype bfloat16

Outputs ``<output-dir>/bench_attention_<device>.json`` (environment, settings and one row
per ``n``) and ``<output-dir>/bench_attention_<device>.png`` (time vs ``n``; speedup and
memory ratio vs ``n``), and logs a summary table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

import hf_sinklora  # noqa: F401  (registers sf_attention / s2_attention with transformers, as in a real run)
from bench_common import (
    DEFAULT_OUTPUT_DIR, add_dtype_argument, dtype_name_for, environment, is_cuda, length_axis, package_digest,
    synchronize,
)
from hf_sinklora.attention import SFAttentionConfig, s2_attention_forward, sf_attention_forward
from hf_sinklora.attention.flash_varlen import flash_attn_available
from hf_sinklora.attention.interface import resolve_backend

logger = logging.getLogger("bench_attention")

BASELINE = "sdpa"
SPARSE_METHODS = ("sf_attention", "s2_attention")
CUDA_BACKEND_METHODS = {"sf_sdpa": "sdpa", "sf_flex": "flex", "sf_flash_attn": "flash_attn"}
INPUTS_ONLY = "inputs_only"  # the CPU memory baseline child, never reported as a method
RESULT_MARKER = "BENCH_RESULT "
GOAL_LENGTH = 8192
GOAL_SPEEDUP = 3.5
GOAL_MEMORY_RATIO = 1.0
TINY_LENGTH = 256

TIMING_METHOD = (
    "Wall time (time.perf_counter) of forward + backward of one attention call, in a fresh child "
    "process per (method, n): 1 warm-up call, then the median of --repeats calls; q/k/v gradients "
    "are reset to None before each call; torch.cuda.synchronize() before and after each call on CUDA. "
    "cpu_times_s is the process CPU time (all threads) of the same calls, an indicator of contention."
)
CPU_MEMORY_METHOD = (
    "Peak resident set size (resource.getrusage(RUSAGE_SELF).ru_maxrss) of the child process that "
    "ran the method, minus that of a baseline child for the same n which imports the same modules, "
    "runs every method once on a tiny problem (n=256) and allocates the same inputs (q, k, v and the "
    "output gradient) without running attention. The difference is the extra memory of forward + "
    "backward including the q/k/v gradients; approximate (glibc allocator reuse, fragmentation)."
)
CUDA_MEMORY_METHOD = (
    "torch.cuda.max_memory_allocated() over the warm-up and timed calls minus "
    "torch.cuda.memory_allocated() once the inputs (q, k, v and the output gradient) exist: the "
    "extra memory of forward + backward including the q/k/v gradients."
)


@dataclass(frozen=True)
class Settings:
    """Shape and run settings shared by the parent and every child."""

    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    device: str
    repeats: int
    threads: int | None  # torch.set_num_threads in the children; None keeps torch's default


@dataclass
class Measurement:
    """What one child reports for one (method, n)."""

    method: str
    n: int
    times_s: list[float]
    cpu_times_s: list[float]  # process CPU time of the same calls (all threads): shows contention
    peak_bytes: int | None  # CPU: the child's ru_maxrss; CUDA: extra bytes beyond the inputs
    num_threads: int
    source_digest: str  # of the hf_sinklora sources this child imported (the package may change mid-run)
    error: str | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


# --------------------------------------------------------------------------- child side


Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _stand_in_module(num_key_value_groups: int, backend: str = "auto") -> torch.nn.Module:
    """The attributes an attention function reads from its layer, in training mode."""
    module = torch.nn.Module()
    module.config = PretrainedConfig()
    module.config.sf_attention = {"backend": backend}
    module.is_causal = True
    module.num_key_value_groups = num_key_value_groups
    return module.train()


def _attention_call(method: str, n: int, settings: Settings) -> tuple[AttentionFn, str]:
    """``(fn(q, k, v) -> output, output layout)`` for a method; layout is ``"bhnd"`` or ``"bnhd"``."""
    gqa = settings.heads != settings.kv_heads
    if method == BASELINE:
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)), "bhnd"
    if method in SPARSE_METHODS:
        forward = sf_attention_forward if method == "sf_attention" else s2_attention_forward
        module = _stand_in_module(settings.heads // settings.kv_heads)
        return (lambda q, k, v: forward(module, q, k, v, None)[0]), "bnhd"
    if method in CUDA_BACKEND_METHODS:
        module = _stand_in_module(settings.heads // settings.kv_heads, CUDA_BACKEND_METHODS[method])
        return (lambda q, k, v: sf_attention_forward(module, q, k, v, None)[0]), "bnhd"
    raise ValueError(f"unknown method {method!r}")


def _make_inputs(n: int, settings: Settings, layout: str) -> Tensors:
    """Leaf q, k, v (requiring grad) and an output gradient in the method's output layout."""
    dtype, device = getattr(torch, settings.dtype), settings.device
    b, hq, hkv, d = settings.batch, settings.heads, settings.kv_heads, settings.head_dim
    q = torch.randn(b, hq, n, d, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(b, hkv, n, d, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(b, hkv, n, d, dtype=dtype, device=device, requires_grad=True)
    grad_shape = (b, hq, n, d) if layout == "bhnd" else (b, n, hq, d)
    grad = torch.randn(grad_shape, dtype=dtype, device=device)
    return q, k, v, grad


def _timed_step(
    fn: AttentionFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, device: str
) -> tuple[float, float]:
    """``(wall, process CPU)`` seconds of one forward+backward; gradients start from None."""
    q.grad = k.grad = v.grad = None
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn(q, k, v).backward(grad)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def _cpu_peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _methods_for(device: str) -> list[str]:
    if not is_cuda(device):
        return [BASELINE, *SPARSE_METHODS]
    return [BASELINE, "sf_sdpa", "sf_flex", *(["sf_flash_attn"] if flash_attn_available() else [])]


def _auto_backend(settings: Settings) -> str:
    """What ``backend="auto"`` picks for this benchmark's inputs (training: q/k/v require grad)."""
    dtype, device = getattr(torch, settings.dtype), settings.device
    q = torch.zeros(1, settings.heads, 1, settings.head_dim, dtype=dtype, device=device, requires_grad=True)
    kv = torch.zeros(1, settings.kv_heads, 1, settings.head_dim, dtype=dtype, device=device, requires_grad=True)
    return resolve_backend(q, kv, kv, SFAttentionConfig())


def _inputs_only(n: int, settings: Settings) -> Measurement:
    """CPU memory baseline: libraries warmed up on a tiny problem, then the inputs allocated."""
    for method in _methods_for(settings.device):
        fn, layout = _attention_call(method, TINY_LENGTH, settings)
        _timed_step(fn, *_make_inputs(TINY_LENGTH, settings, layout), settings.device)
    inputs = _make_inputs(n, settings, "bhnd")
    peak = _cpu_peak_rss_bytes()
    del inputs
    return Measurement(INPUTS_ONLY, n, [], [], peak, torch.get_num_threads(), package_digest())


def _measure(method: str, n: int, settings: Settings) -> Measurement:
    """Warm-up plus ``settings.repeats`` timed forward+backward calls, and the peak memory."""
    fn, layout = _attention_call(method, n, settings)
    q, k, v, grad = _make_inputs(n, settings, layout)
    cuda = is_cuda(settings.device)
    allocated_inputs = 0
    if cuda:
        synchronize(settings.device)
        torch.cuda.reset_peak_memory_stats()
        allocated_inputs = torch.cuda.memory_allocated()
    _timed_step(fn, q, k, v, grad, settings.device)  # warm-up (and compilation for flex)
    steps = [_timed_step(fn, q, k, v, grad, settings.device) for _ in range(settings.repeats)]
    peak = torch.cuda.max_memory_allocated() - allocated_inputs if cuda else _cpu_peak_rss_bytes()
    walls, cpus = [wall for wall, _ in steps], [cpu for _, cpu in steps]
    return Measurement(method, n, walls, cpus, peak, torch.get_num_threads(), package_digest())


def run_worker(method: str, n: int, settings: Settings) -> None:
    """Child entry point: measures one (method, n) and prints one marked JSON line."""
    torch.manual_seed(0)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        result = _inputs_only(n, settings) if method == INPUTS_ONLY else _measure(method, n, settings)
    except Exception as error:  # reported to the parent, which records it and moves on
        logger.exception("worker %s n=%d failed", method, n)
        result = Measurement(method, n, [], [], None, torch.get_num_threads(), package_digest(), error=f"{type(error).__name__}: {error}")
    print(RESULT_MARKER + json.dumps(asdict(result)), flush=True)


# --------------------------------------------------------------------------- parent side


def _worker_command(method: str, n: int, settings: Settings) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--worker", method, "--lengths", str(n),
        "--batch", str(settings.batch), "--heads", str(settings.heads), "--kv-heads", str(settings.kv_heads),
        "--head-dim", str(settings.head_dim), "--dtype", settings.dtype, "--device", settings.device,
        "--repeats", str(settings.repeats),
        *(["--threads", str(settings.threads)] if settings.threads is not None else []),
    ]


def run_child(method: str, n: int, settings: Settings, timeout_s: float) -> Measurement:
    """Runs one measurement in a fresh interpreter and parses its marked result line."""
    command = _worker_command(method, n, settings)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return Measurement(method, n, [], [], None, 0, "", error=f"timed out after {timeout_s:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        tail = (done.stderr or "").strip().splitlines()[-5:]
        return Measurement(method, n, [], [], None, 0, "", error=f"exit {done.returncode}: {' | '.join(tail)}")
    if done.stderr.strip():
        logger.debug("%s n=%d stderr:\n%s", method, n, done.stderr.strip())
    return Measurement(**json.loads(lines[-1][len(RESULT_MARKER):]))


def _mib(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def measure_length(n: int, methods: Sequence[str], settings: Settings, timeout_s: float) -> dict[str, Any]:
    """All methods at one ``n``: times, extra peak memory, and ratios against ``sdpa``."""
    cpu = not is_cuda(settings.device)
    base_rss = None
    if cpu:
        base = run_child(INPUTS_ONLY, n, settings, timeout_s)
        if base.error:
            logger.warning("n=%d memory baseline failed: %s", n, base.error)
        base_rss = base.peak_bytes
    row: dict[str, Any] = {"n": n, "methods": {}, "speedup": {}, "memory_ratio": {}}
    if cpu:
        row["baseline_peak_rss_mib"] = _mib(base_rss)
    for method in methods:
        load_before = os.getloadavg()[0]
        result = run_child(method, n, settings, timeout_s)
        extra = result.peak_bytes
        if cpu:
            extra = None if extra is None or base_rss is None else max(0, extra - base_rss)
        row["methods"][method] = {
            "median_s": result.median_s,
            "min_s": min(result.times_s) if result.times_s else None,
            "times_s": result.times_s,
            "cpu_times_s": result.cpu_times_s,
            "peak_extra_mib": _mib(extra),
            "child_peak_rss_mib": _mib(result.peak_bytes) if cpu else None,
            "torch_threads": result.num_threads,
            "hf_sinklora_source_digest": result.source_digest,
            "load_avg_1min_before": round(load_before, 2),
            "error": result.error,
        }
        _log_measurement(n, method, row["methods"][method])
    reference = row["methods"].get(BASELINE, {})
    for method, data in row["methods"].items():
        if method != BASELINE:
            row["speedup"][method] = _ratio(reference.get("median_s"), data["median_s"])
            row["memory_ratio"][method] = _ratio(data["peak_extra_mib"], reference.get("peak_extra_mib"))
    return row


def _log_measurement(n: int, method: str, data: dict[str, Any]) -> None:
    if data["error"]:
        logger.warning("n=%-6d %-13s FAILED: %s", n, method, data["error"])
        return
    logger.info(
        "n=%-6d %-13s median %8.3f s  (runs %s)  peak extra %s MiB",
        n, method, data["median_s"], ", ".join(f"{t:.3f}" for t in data["times_s"]), _fmt(data["peak_extra_mib"], 0),
    )


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_table(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """A fixed-width text table: per n and method, time, memory, speedup and memory ratio."""
    header = f"{'n':>6}  {'method':<13} {'median s':>9} {'peak MiB':>9} {'speedup':>8} {'mem ratio':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        for method in methods:
            data = row["methods"].get(method)
            if data is None:
                continue
            speedup = row["speedup"].get(method, 1.0 if method == BASELINE else None)
            memory = row["memory_ratio"].get(method, 1.0 if method == BASELINE else None)
            lines.append(
                f"{row['n']:>6}  {method:<13} {_fmt(data['median_s'], 3):>9} {_fmt(data['peak_extra_mib'], 0):>9} "
                f"{_fmt(speedup, 2) + 'x':>8} {_fmt(memory, 2):>9}"
            )
    return "\n".join(lines)


def goal_summary(rows: Sequence[dict[str, Any]], device: str) -> dict[str, Any]:
    """Whether ``sf_attention`` reached the speedup and memory goal at n = 8192 in this run."""
    row = next((r for r in rows if r["n"] == GOAL_LENGTH), {"speedup": {}, "memory_ratio": {}})
    speedup, memory = row["speedup"].get("sf_attention"), row["memory_ratio"].get("sf_attention")
    return {
        "description": (
            f"sf_attention >= {GOAL_SPEEDUP}x faster than full causal SDPA at n={GOAL_LENGTH} (fwd+bwd, CPU), "
            f"extra memory <= {GOAL_MEMORY_RATIO}x SDPA's"
        ),
        "n": GOAL_LENGTH,
        "target_speedup": GOAL_SPEEDUP,
        "measured_speedup": speedup,
        "target_memory_ratio": GOAL_MEMORY_RATIO,
        "measured_memory_ratio": memory,
        "met": None if speedup is None or memory is None else speedup >= GOAL_SPEEDUP and memory <= GOAL_MEMORY_RATIO,
        "applies_to_this_device": not is_cuda(device),
    }


def plot(rows: Sequence[dict[str, Any]], methods: Sequence[str], title: str, path: Path) -> None:
    """Left: median time vs n (log-log). Right: speedup vs n with the goal line, memory ratio on a twin axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for method in methods:
        points = [(r["n"], r["methods"][method]["median_s"]) for r in rows if r["methods"].get(method, {}).get("median_s")]
        if points:
            left.plot(*zip(*points), marker="o", label=method)
    left.set(yscale="log", ylabel="fwd+bwd median time (s)", title="time (log-log)")
    length_axis(left, [r["n"] for r in rows])
    left.grid(True, which="both", alpha=0.3)
    left.legend()

    memory_axis = right.twinx()
    for method in (m for m in methods if m != BASELINE):
        color = f"C{methods.index(method)}"
        speed = [(r["n"], r["speedup"][method]) for r in rows if r["speedup"].get(method) is not None]
        memory = [(r["n"], r["memory_ratio"][method]) for r in rows if r["memory_ratio"].get(method) is not None]
        if speed:
            right.plot(*zip(*speed), marker="o", color=color, label=f"{method} speedup")
        if memory:
            memory_axis.plot(*zip(*memory), marker="s", linestyle=":", color=color, label=f"{method} memory ratio")
    right.axhline(GOAL_SPEEDUP, color="red", linestyle="--", label=f"{GOAL_SPEEDUP}x goal")
    right.axhline(1.0, color="grey", linewidth=0.8)
    length_axis(right, [r["n"] for r in rows])
    right.set(ylabel="speedup vs full causal SDPA (t_sdpa / t)", title="vs full causal SDPA")
    right.set_ylim(bottom=0)
    memory_axis.set_ylabel("memory ratio (mem / mem_sdpa), dotted")
    memory_axis.set_ylim(bottom=0)
    right.grid(True, which="both", alpha=0.3)
    handles = [h for axis in (right, memory_axis) for h in axis.get_legend_handles_labels()[0]]
    right.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _write_results(
    settings: Settings, rows: list[dict[str, Any]], methods: Sequence[str], notes: list[str], env: dict[str, Any],
    started: float, output_dir: Path,
) -> tuple[dict[str, Any], Path, Path]:
    """Writes the JSON and PNG for the rows measured so far; returns the document and both paths."""
    notes = list(notes)
    digests = sorted({m["hf_sinklora_source_digest"] for r in rows for m in r["methods"].values()} - {""})
    if len(digests) > 1:
        notes.append(f"hf_sinklora sources changed during the run (digests {digests}); rows may mix package versions.")
        logger.warning(notes[-1])
    document = {
        "benchmark": "attention forward+backward: full causal SDPA vs SF-Attn vs S2-Attn",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": {**env, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {**asdict(settings), "warmup": 1, "lengths": [r["n"] for r in rows],
                     "sf_attention": SFAttentionConfig().to_dict()},
        "methods": list(methods),
        "auto_backend": _auto_backend(settings),
        "timing_method": TIMING_METHOD,
        "memory_method": CUDA_MEMORY_METHOD if is_cuda(settings.device) else CPU_MEMORY_METHOD,
        "ratios": "speedup = median_s(sdpa) / median_s(method); memory_ratio = peak_extra(method) / peak_extra(sdpa)",
        "notes": notes,
        "goal": goal_summary(rows, settings.device),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_attention_{settings.device.split(':')[0]}"
    json_path, png_path = output_dir / f"{stem}.json", output_dir / f"{stem}.png"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    title = (
        f"{env['device_name']} ({settings.device}, {env['torch_num_threads']} threads): B={settings.batch}, "
        f"Hq={settings.heads}, Hkv={settings.kv_heads}, D={settings.head_dim}, {settings.dtype}"
    )
    plot(rows, methods, title, png_path)
    return document, json_path, png_path


def run_benchmark(settings: Settings, lengths: Sequence[int], output_dir: Path, timeout_s: float) -> dict[str, Any]:
    """Measures every (method, n), then writes the JSON and PNG; returns the JSON document."""
    methods = _methods_for(settings.device)
    notes = []
    if "sf_flex" not in methods:
        notes.append(
            "sf_flex (backend='flex': torch.compile'd flex_attention with the SF block mask) is measured on CUDA "
            f"only; skipped on {settings.device} (flex_attention has no CPU backward in torch {torch.__version__})."
        )
    env = environment(settings.device)
    logger.info("environment: %s", json.dumps(env))
    logger.info("settings: %s; lengths %s", asdict(settings), list(lengths))
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for n in lengths:  # the files are rewritten after every n, so a run stopped early keeps what it measured
        rows.append(measure_length(n, methods, settings, timeout_s))
        document, json_path, png_path = _write_results(settings, rows, methods, notes, env, started, output_dir)
    elapsed = time.perf_counter() - started
    logger.info("results (%.0f s in all):\n%s", elapsed, summary_table(rows, methods))
    goal = document["goal"]
    if goal["measured_speedup"] is not None:
        logger.info("goal %s: measured %.2fx, memory ratio %s -> %s", goal["description"], goal["measured_speedup"],
                    _fmt(goal["measured_memory_ratio"], 2), "met" if goal["met"] else "NOT met")
    logger.info("wrote %s and %s", json_path, png_path)
    return document


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384], help="sequence lengths n")
    parser.add_argument("--batch", type=int, default=1, help="batch size B")
    parser.add_argument("--heads", type=int, default=32, help="query heads Hq")
    parser.add_argument("--kv-heads", type=int, default=8, help="key/value heads Hkv (a divisor of Hq)")
    parser.add_argument("--head-dim", type=int, default=128, help="head dimension D")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per (method, n) after 1 warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the children (default: torch's)")
    add_dtype_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where the JSON and PNG go")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per child measurement")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (children's stderr)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.heads % args.kv_heads:
        parser.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if args.repeats < 1 or min(args.lengths) < 1:
        parser.error("--repeats and --lengths must be positive")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    args.dtype = dtype_name_for(args.dtype, args.device)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(
        args.batch, args.heads, args.kv_heads, args.head_dim, args.dtype, args.device, args.repeats, args.threads
    )
    level = logging.DEBUG if args.verbose else (logging.WARNING if args.worker else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.worker:
        run_worker(args.worker, args.lengths[0], settings)
        return
    if is_cuda(settings.device) and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    run_benchmark(settings, args.lengths, args.output_dir, args.timeout)


if __name__ == "__main__":
    main()
