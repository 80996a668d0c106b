"""JSON output and the plain-text tables the CLIs print."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Writes ``data`` as indented JSON (NaN/inf written as null), creating parent directories."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_perplexity_table(result: dict[str, Any]) -> str:
    """One line per context length: PPL, tokens scored, windows, stride."""
    rows = [
        [length, f"{r['perplexity']:.4f}", r["tokens_scored"], r["windows"], r["stride"], r["short_documents"]]
        for length, r in result["results"].items()
    ]
    return _table(["length", "ppl", "tokens", "windows", "stride", "short docs"], rows)


def format_passkey_table(result: dict[str, Any], cache: str = "full", budget: float | None = None,
                         prefill_chunk_size: int | None = None) -> str:
    """Accuracy with depths as rows and lengths as columns, then per length and overall, and the KV
    cache it was measured with (``cache`` policy, ``budget``, ``prefill_chunk_size``)."""
    lengths = result["lengths"]
    by_cell = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"]}
    rows = [[f"{d:g}"] + [f"{by_cell[(L, d)]:.2f}" for L in lengths] for d in result["depths"]]
    rows.append(["all"] + [f"{result['per_length'][str(L)]:.2f}" for L in lengths])
    table = _table(["depth \\ length"] + [str(L) for L in lengths], rows)
    measured = "full cache" if cache == "full" else f"{cache} cache, budget {budget:g}"
    if prefill_chunk_size:
        measured += f", prefill in chunks of {prefill_chunk_size}"
    return f"{table}\noverall accuracy {result['accuracy']:.3f} ({result['trials']} trials per cell; {measured})"


def format_cache_sweep_table(result: dict[str, Any]) -> str:
    """Perplexity per policy (rows) and budget (columns), and the full cache's."""
    budgets = [f"{b:g}" for b in result["budgets"]]
    rows = [[policy] + [f"{by_budget[b]['perplexity']:.3f}" for b in budgets] for policy, by_budget in result["results"].items()]
    table = _table(["policy \\ budget"] + budgets, rows)
    return f"{table}\nfull cache: {result['full']['perplexity']:.3f} ({result['segments']} segments of {result['length']} tokens)"
