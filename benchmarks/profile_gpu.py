"""Where the GPU time of the two slow cases goes: kernel tables from ``torch.profiler``.

1. H2O one-shot prefill of ``bench_h2o.py``'s small model (and the SDPA prefill beside it);
2. one LoRA+ training step of the SmolLM2-135M shape with ``sf_attention`` (and with SDPA).

For each: wall seconds, the number of kernels launched, the summed kernel time, and the top
kernels by their own device time. Writes ``<output-dir>/profile_gpu.json`` and prints the tables.

    python benchmarks/profile_gpu.py --prefill-length 32768 --step-length 16384 --output-dir benchmarks/results/gpu
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from bench_common import DEFAULT_OUTPUT_DIR, environment, model_from_config, synchronize
from bench_h2o_prefill import DEFAULT_SHAPE, prefill_seconds, shape_config
from bench_training_step import Shape, build_models, timed_step
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from hf_sinklora import H2OCache

logger = logging.getLogger("profile_gpu")


def profiled(run: Callable[[], Any], rows: int, device: str) -> dict[str, Any]:
    """Two warm-up calls, then one profiled call: wall time, kernel count and the top kernels."""
    run()
    run()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        run()
        synchronize(device)
        wall = time.perf_counter() - started
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    device_us = sum(e.time_range.elapsed_us() for e in kernels)
    averages = prof.key_averages()
    key = "self_device_time_total"
    table = averages.table(sort_by=key, row_limit=rows)
    top = sorted((a for a in averages if getattr(a, key, 0) > 0), key=lambda a: getattr(a, key), reverse=True)[:rows]
    return {
        "wall_s": wall,
        "kernels": len(kernels),
        "kernel_time_s": device_us / 1e6,
        "top": [{"name": a.key, "calls": a.count, "self_device_s": getattr(a, key) / 1e6} for a in top],
        "table": table,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill-length", type=int, default=32768)
    parser.add_argument("--step-length", type=int, default=16384)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (a smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    document: dict[str, Any] = {"environment": environment(device), "settings": vars(args) | {"output_dir": str(args.output_dir)}}
    output = args.output_dir / "profile_gpu.json"
    args.output_dir.mkdir(parents=True, exist_ok=True)

    n = args.prefill_length
    config = shape_config(DEFAULT_SHAPE, n)
    sdpa = model_from_config(copy.deepcopy(config), device, dtype, "sdpa").eval()
    sf = model_from_config(copy.deepcopy(config), device, dtype, "sf_attention").eval()
    ids = torch.randint(0, config.vocab_size, (1, n), device=device)
    for name, run in (("prefill_sdpa", lambda: prefill_seconds(sdpa, ids, DynamicCache(config=config), None, device)),
                      ("prefill_h2o", lambda: prefill_seconds(sf, ids, H2OCache(round(0.2 * n)), None, device))):
        document[name] = profiled(run, args.rows, device)
        logger.info("%s n=%d: wall %.4fs, %d kernels, kernel time %.4fs\n%s", name, n, document[name]["wall_s"],
                    document[name]["kernels"], document[name]["kernel_time_s"], document[name]["table"])
        output.write_text(json.dumps(document, indent=2) + "\n")
    del sdpa, sf

    n = args.step_length
    models = build_models(Shape.of_model("smollm2-135m"), n, device, dtype, ["sdpa", "sf_attention"])
    ids = torch.randint(0, 49152, (1, n), device=device)
    for name, model in models.items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        key = f"step_smollm2_{name}"
        document[key] = profiled(lambda: timed_step(model, optimizer, ids, device), args.rows, device)
        logger.info("%s n=%d: wall %.4fs, %d kernels, kernel time %.4fs\n%s", key, n, document[key]["wall_s"],
                    document[key]["kernels"], document[key]["kernel_time_s"], document[key]["table"])
        output.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
