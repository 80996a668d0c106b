"""The headline ratios of a GPU check in one file: ``<results>/summary.json``.

Reads what ``gpu_check.sh`` wrote (each file is optional: a step stopped by its cap leaves its
ratios out) and records every ratio as time / the stock SDPA time of the same run::

    {"device": ..., "h2o_prefill_one_shot": {"16384": r, "32768": r}, "h2o_prefill_chunked": {...},
     "step_8b_slice": {"16384": r, "32768": r}, "step_smollm2": {...}, ...}

``h2o_prefill_*`` are the Llama-3-8B-slice shape's (real size); the ``*_small_model`` keys the
4-layer hidden-256 model the first GPU runs measured; ``sdpa_prefill_chunked*`` what chunking
alone costs stock SDPA.

    python benchmarks/gpu_summary.py benchmarks/results/gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def prefill_ratios(document: dict[str, Any] | None, contender: str) -> dict[str, float]:
    """``{str(n): time / one-shot SDPA time}`` of one contender of a ``bench_h2o_prefill`` document."""
    if document is None:
        return {}
    return {str(row["n"]): round(row["ratio_to_sdpa"][contender], 3) for row in document["rows"]}


def step_ratios(document: dict[str, Any] | None, shape: str) -> dict[str, float]:
    """``{str(n): sf_attention step / sdpa step}`` of one shape of a ``bench_training_step`` document."""
    if document is None:
        return {}
    for entry in document["shapes"]:
        if entry["shape"]["name"] == shape:
            return {str(cell["n"]): round(cell["ratio"], 3) for cell in entry["cells"]}
    return {}


def summarize(results: Path) -> dict[str, Any]:
    large = _load(results / "bench_h2o_prefill_llama3-8b-slice_cuda.json")
    small = _load(results / "bench_h2o_prefill_cuda.json")
    steps = _load(results / "bench_training_step_real_cuda.json")
    found = next((d for d in (large, small, steps) if d is not None), None)
    device = found["environment"]["device_name"] if found else None
    return {
        "device": device,
        "h2o_prefill_one_shot": prefill_ratios(large, "h2o"),
        "h2o_prefill_chunked": prefill_ratios(large, "h2o-chunked"),
        "sdpa_prefill_chunked": prefill_ratios(large, "sdpa-chunked"),
        "step_8b_slice": step_ratios(steps, "llama3-8b-slice"),
        "step_smollm2": step_ratios(steps, "smollm2-135m"),
        "h2o_prefill_one_shot_small_model": prefill_ratios(small, "h2o"),
        "h2o_prefill_chunked_small_model": prefill_ratios(small, "h2o-chunked"),
        "sdpa_prefill_chunked_small_model": prefill_ratios(small, "sdpa-chunked"),
        "notes": "r = time / stock SDPA's time in the same run (prefill: one-shot SDPA + DynamicCache; "
                 "step: LoRA+ training step, bf16); h2o_prefill_* on the Llama-3-8B-slice shape, "
                 "*_small_model on bench_h2o.py's 4-layer hidden-256 model",
    }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    results = Path(args[0] if args else "benchmarks/results/gpu")
    summary_path = results / "summary.json"
    previous = _load(summary_path) or {}
    summary = {**previous, **summarize(results)}  # keeps keys other experiments wrote (e.g. "extension")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
