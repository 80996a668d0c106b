"""Generate from a long prompt with ``H2OCache`` and compare it with the full ``DynamicCache``.

    python examples/generate_with_h2o.py --model Qwen/Qwen2.5-0.5B --prompt-file book.txt \
        --prompt-tokens 8192 --budget 0.25 --max-new-tokens 128 --prefill-chunk-size 1024

``--model`` is a hub id or a local directory. The prompt is the first ``--prompt-tokens``
tokens of ``--prompt-file``. Both runs are greedy, so where the texts part ways shows what
eviction changed. ``--budget`` is an int (tokens per layer and KV head) or a fraction of the
prompt; with ``--prefill-chunk-size`` use an int budget or a fraction (converted here).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import hf_sinklora  # noqa: F401  (registers attn_implementation="sf_attention")
from hf_sinklora import H2OCache
from hf_sinklora.cache import H2OPolicy
from hf_sinklora.evaluation.timing import timed_generate

logger = logging.getLogger("generate_with_h2o")


def parse_budget(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local directory")
    parser.add_argument("--prompt-file", required=True, type=Path, help="text file the prompt is cut from")
    parser.add_argument("--prompt-tokens", type=int, default=4096, help="prompt length in tokens")
    parser.add_argument("--budget", type=parse_budget, default=0.25, help="int tokens, or a fraction of the prompt")
    parser.add_argument("--recent-ratio", type=float, default=0.5)
    parser.add_argument("--sink-tokens", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prefill-chunk-size", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sf_attention", dtype=dtype)
    model = model.to(args.device).eval()
    text = args.prompt_file.read_text(encoding="utf-8", errors="replace")
    input_ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.prompt_tokens].to(args.device)
    budget = args.budget
    if isinstance(budget, float) and args.prefill_chunk_size:
        # chunked prefill needs an int: the policy's own rule for a fraction of the prompt
        budget = H2OPolicy(budget=budget, num_sink_tokens=args.sink_tokens).budget_for(input_ids.shape[1])
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=False, prefill_chunk_size=args.prefill_chunk_size,
                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)

    full = timed_generate(model, input_ids, DynamicCache(config=model.config), **options)
    h2o = timed_generate(
        model, input_ids, H2OCache(budget, recent_ratio=args.recent_ratio, num_sink_tokens=args.sink_tokens), **options
    )
    new_full, new_h2o = full.sequences[0, input_ids.shape[1] :], h2o.sequences[0, input_ids.shape[1] :]
    same = int((new_full[: len(new_h2o)] == new_h2o[: len(new_full)]).int().cumprod(0).sum())
    print(f"prompt: {input_ids.shape[1]} tokens, budget: {budget}")
    print(f"{'cache':<14}{'prefill s':>10}{'decode tok/s':>14}{'KV MiB':>10}")
    for name, run in (("DynamicCache", full), ("H2OCache", h2o)):
        print(f"{name:<14}{run.prefill_s:>10.2f}{run.decode_tokens_per_s:>14.1f}{run.kv_bytes / 2**20:>10.2f}")
    print(f"identical first {same} of {len(new_h2o)} new tokens")
    print("H2OCache continuation:", tokenizer.decode(new_h2o, skip_special_tokens=True))
    return {"full": full, "h2o": h2o, "identical_prefix": same}


if __name__ == "__main__":
    main()
