"""Does the needle survive KV eviction? Passkey accuracy by key depth through H2O, StreamingLLM and a recent window.

A needle (the pass key) gets little attention until its question arrives, and H2O ranks tokens
by the attention they have received so far: the question is whether the key is still in the
cache when the question asks for it. This measures it on any causal LM that retrieves the
passkey with the full cache (first check that it does: the full-cache row is the ceiling):

* prompts: the passkey prompt of ``hf-sinklora passkey`` at ``--length`` tokens, ``--depths`` x
  ``--trials`` (the same keys for every cache);
* caches: the full ``DynamicCache``, then every ``--policies`` policy at every ``--budgets``
  fraction of the prompt (``eviction_cache(policy, budget, prompt_tokens)``, as
  ``hf-sinklora passkey --cache P --budget B`` builds it), the prompt prefilled
  ``--prefill-chunk-size`` tokens per forward (an evicting cache scores and evicts after every
  chunk, so the chunk size is part of the result).

Every number comes from ``passkey_accuracy``, the code behind ``hf-sinklora passkey``.

    PYTHONPATH=src .venv/bin/python benchmarks/h2o_needle.py --model PATH --length 120
    PYTHONPATH=src .venv/bin/python benchmarks/h2o_needle.py --model meta-llama/Llama-3.2-1B --length 4096 --device cuda

Writes ``<output-dir>/<name>.json`` and ``<name>.png`` (accuracy by depth, one panel per budget).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_common import DEFAULT_OUTPUT_DIR, configure_logging, environment

from hf_sinklora.evaluation import passkey_accuracy
from hf_sinklora.evaluation.cache_quality import POLICIES, eviction_cache
from hf_sinklora.evaluation.loading import load_for_eval

logger = logging.getLogger("h2o_needle")
FULL = "full cache"


def sweep(model: Any, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Passkey accuracy (overall and per depth) with the full cache and every (policy, budget).

    Returns:
        ``{"full cache": row, policy: {str(budget): row}}``; a row is ``{"accuracy", "per_depth",
        "budget_tokens", "seconds", "examples"}`` (``budget_tokens`` None for the full cache).
    """

    def row(policy: str | None, budget: float | None) -> dict[str, Any]:
        started = time.perf_counter()
        factory = None if policy is None else (lambda tokens: eviction_cache(policy, budget, tokens))
        result = passkey_accuracy(model, tokenizer, [args.length], depths=args.depths, trials=args.trials,
                                  seed=args.seed, cache_factory=factory,
                                  prefill_chunk_size=args.prefill_chunk_size if factory else None, progress=False)
        out = {
            "accuracy": result["accuracy"],
            "per_depth": {f"{c['depth']:g}": c["accuracy"] for c in result["cells"]},
            "budget_tokens": None if factory is None else factory(args.length).policy.budget,
            "seconds": round(time.perf_counter() - started, 1),
            "examples": [{k: s[k] for k in ("depth", "key", "answer")} for s in result["samples"][:: args.trials]],
        }
        logger.info("%s%s: %.2f %s", policy or FULL, "" if budget is None else f" at {budget:g}", out["accuracy"],
                    out["per_depth"])
        return out

    table: dict[str, Any] = {FULL: row(None, None)}
    for policy in args.policies:
        table[policy] = {f"{budget:g}": row(policy, budget) for budget in args.budgets}
    return table


def plot(document: dict[str, Any], path: Path) -> None:
    """One panel per budget: accuracy by key depth per policy, the full cache as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table, budgets = document["results"], document["settings"]["budgets"]
    figure = Figure(figsize=(4.2 * len(budgets), 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(budgets), squeeze=False)[0]
    depths = list(table[FULL]["per_depth"])
    for axis, budget in zip(axes, budgets):
        axis.plot([float(d) for d in depths], [table[FULL]["per_depth"][d] for d in depths], "k--", label=FULL)
        for index, policy in enumerate(document["settings"]["policies"]):
            entry = table[policy][f"{budget:g}"]
            axis.plot([float(d) for d in depths], [entry["per_depth"][d] for d in depths], marker="o",
                      color=f"C{index}", label=f"{policy} ({entry['accuracy']:.0%})")
        tokens = table[document["settings"]["policies"][0]][f"{budget:g}"]["budget_tokens"]
        axis.set(title=f"budget {budget:g} of the prompt ({tokens} tokens)", xlabel="key depth (0: start of the prompt)",
                 ylabel="passkey accuracy", ylim=(-0.05, 1.05))
        axis.legend(fontsize=7)
    figure.suptitle(document["title"], fontsize=8)
    figure.savefig(path)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint path or hub id (a causal LM and its tokenizer)")
    parser.add_argument("--adapter", default=None, help="peft adapter on top of --model")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--length", type=int, required=True, help="prompt length in tokens")
    parser.add_argument("--depths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--trials", type=int, default=10, help="prompts per depth")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the keys")
    parser.add_argument("--policies", type=lambda t: [x for x in t.split(",") if x], default=list(POLICIES))
    parser.add_argument("--budgets", type=_floats, default=[0.1, 0.25, 0.5], help="fractions of the prompt")
    parser.add_argument("--prefill-chunk-size", type=int, default=16, help="prompt tokens per forward into an evicting cache")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--name", default="h2o_needle", help="stem of the JSON and PNG")
    parser.add_argument("--note", default=None, help="where the model comes from, recorded in the JSON")
    args = parser.parse_args(argv)
    if sorted(set(args.policies) - set(POLICIES)) or not args.policies:
        parser.error(f"--policies must come from {list(POLICIES)}, got {args.policies}")
    if not args.budgets or not all(0 < b <= 1 for b in args.budgets):
        parser.error(f"--budgets must be fractions in (0, 1], got {args.budgets}")
    for name in ("length", "trials", "prefill_chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    configure_logging()
    args = parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_for_eval(args.model, adapter=args.adapter, device=args.device)
    recipe_file = Path(args.model) / "base_model_recipe.json"
    document = {
        "benchmark": "needle through KV eviction: passkey accuracy by key depth, full cache vs H2O / StreamingLLM / recent",
        "title": f"{args.model}: passkey at {args.length} tokens, {args.trials} trials per depth",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.executable).name, *sys.argv],
        "environment": environment(str(next(model.parameters()).device)),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model_note": args.note,
        "model_recipe": json.loads(recipe_file.read_text()) if recipe_file.exists() else None,
        "results": sweep(model, tokenizer, args),
    }
    document["seconds"] = round(time.perf_counter() - started, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(document, args.output_dir / f"{args.name}.png")
    logger.info("wrote %s", args.output_dir / f"{args.name}.json")
    return document


if __name__ == "__main__":
    main()
