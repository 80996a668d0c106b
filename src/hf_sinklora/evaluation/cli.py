"""The ``eval-ppl`` and ``passkey`` sub-commands of ``hf-sinklora``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from .._checks import DTYPE_NAMES

# cache_quality.POLICIES' names, spelled out so that building the parser imports no torch (a test keeps them equal)
CACHE_POLICY_NAMES = ("h2o", "recent", "snapkv", "streaming")

logger = logging.getLogger(__name__)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model path, .gguf file or hub id")
    parser.add_argument("--adapter", default=None, help="peft adapter (path or hub id) loaded on top of --model")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_NAMES, help="weights dtype (default: auto)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--attn-implementation", default="sf_attention",
                        help="attention implementation (default: sf_attention, full causal in eval mode)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def check_paths(args: argparse.Namespace) -> None:
    """What fails before any model loads: a ``--model`` that cannot be had (a missing local path, a
    hub id neither cached nor reachable), a missing local ``--adapter``, an ``--output`` (and
    ``--plot``) that cannot be written.

    Raises:
        ValueError: one line naming the flag.
    """
    from ..data.sources import looks_like_path
    from ..hub.loading import model_config_or_error

    model_config_or_error(args.model)
    if args.adapter and looks_like_path(args.adapter) and not Path(args.adapter).expanduser().exists():
        raise ValueError(f"--adapter {args.adapter} does not exist (a local path, not a hub id)")
    for flag in ("output", "plot"):
        value = getattr(args, flag, None)
        if not value:
            continue
        target = Path(value)
        if target.is_dir():
            raise ValueError(f"--{flag} {value} is a directory; name a file")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--{flag} {value} cannot be written: {error.strerror or error}") from None
        if not os.access(target.parent, os.W_OK):
            raise ValueError(f"--{flag} {value} cannot be written: {target.parent} is read-only")


def _run_eval_ppl(args: argparse.Namespace) -> int:
    from ..data.sources import load_texts
    from .loading import load_for_eval
    from .perplexity import evaluate_perplexity
    from .report import format_perplexity_table, write_json

    check_paths(args)
    texts = load_texts(args.data, split=args.split, text_column=args.text_column, dataset_config=args.dataset_config)
    if args.join_documents:
        texts = ["\n\n".join(texts)]
    model, tokenizer = load_for_eval(args.model, args.adapter, dtype=args.dtype, device=args.device,
                                     attn_implementation=args.attn_implementation)
    result = evaluate_perplexity(
        model, tokenizer, texts, args.lengths, args.stride, args.batch_size,
        max_tokens=args.max_tokens, add_special_tokens=not args.no_special_tokens, progress=not args.no_progress,
    )
    output: dict[str, Any] = {"model": args.model, "adapter": args.adapter, **result}
    output["settings"].update({
        "data": args.data, "split": args.split, "text_column": args.text_column, "dataset_config": args.dataset_config,
        "join_documents": args.join_documents, "dtype": args.dtype, "device": str(next(model.parameters()).device),
        "attn_implementation": args.attn_implementation,
    })
    write_json(output, args.output)
    print(format_perplexity_table(result))
    print(f"wrote {args.output}")
    return 0


def _passkey_cache_factory(args: argparse.Namespace) -> Any:
    """``--cache``/``--budget`` as a per-prompt cache factory (None: the full cache), checked now."""
    from .cache_quality import eviction_cache

    if args.cache is None:
        if args.budget is not None:
            raise ValueError("--budget needs --cache h2o|streaming|recent")
        return None
    if args.budget is None:
        raise ValueError(f"--cache {args.cache} needs --budget (a fraction of the prompt, or a token count)")
    eviction_cache(args.cache, args.budget, max(args.lengths))  # validates policy and budget
    return lambda prompt_tokens: eviction_cache(args.cache, args.budget, prompt_tokens)


def _run_passkey(args: argparse.Namespace) -> int:
    from .heatmap import plot_passkey_heatmap
    from .loading import load_for_eval
    from .passkey import passkey_accuracy
    from .report import format_passkey_table, write_json

    check_paths(args)
    cache_factory = _passkey_cache_factory(args)  # bad cache options fail before the model loads
    model, tokenizer = load_for_eval(args.model, args.adapter, dtype=args.dtype, device=args.device,
                                     attn_implementation=args.attn_implementation)
    result = passkey_accuracy(
        model, tokenizer, args.lengths, args.depths, args.trials, args.seed,
        key_digits=args.key_digits, max_new_tokens=args.max_new_tokens, cache_factory=cache_factory,
        prefill_chunk_size=args.prefill_chunk_size, progress=not args.no_progress,
    )
    plot_path = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    output = {
        "model": args.model,
        "adapter": args.adapter,
        "plot": str(plot_path),
        **result,
        "settings": {"dtype": args.dtype, "device": str(next(model.parameters()).device),
                     "attn_implementation": args.attn_implementation, "cache": args.cache or "full",
                     "budget": args.budget, "prefill_chunk_size": args.prefill_chunk_size},
    }
    write_json(output, args.output)
    plot_passkey_heatmap(result, plot_path, title=f"passkey accuracy: {Path(args.adapter or args.model).name}")
    print(format_passkey_table(result, args.cache or "full", args.budget, args.prefill_chunk_size))
    print(f"wrote {args.output} and {plot_path}")
    return 0


def _run_eval_h2o(args: argparse.Namespace) -> int:
    from ..data.sources import load_texts
    from .cache_quality import cache_budget_sweep, plot_cache_sweep
    from .loading import load_for_eval
    from .perplexity import tokenize_documents
    from .report import format_cache_sweep_table, write_json

    check_paths(args)
    texts = load_texts(args.data, split=args.split, text_column=args.text_column, dataset_config=args.dataset_config)
    model, tokenizer = load_for_eval(args.model, args.adapter, dtype=args.dtype, device=args.device,
                                     attn_implementation=args.attn_implementation)  # H2OCache explains a wrong one
    documents = tokenize_documents(tokenizer, texts, max_tokens=args.max_tokens)
    result = cache_budget_sweep(
        model, documents, args.length, args.budgets, args.policies, chunk_size=args.chunk_size,
        max_segments=args.max_segments, progress=not args.no_progress,
    )
    plot_path = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    write_json({"model": args.model, "adapter": args.adapter, "plot": str(plot_path), **result}, args.output)
    plot_cache_sweep(result, plot_path, title=f"KV eviction: {Path(args.adapter or args.model).name}")
    print(format_cache_sweep_table(result))
    print(f"wrote {args.output} and {plot_path}")
    return 0


def add_eval_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``eval-ppl`` and ``passkey`` to the ``hf-sinklora`` sub-command parsers."""
    # these help texts say their own defaults: the HfArgumentParser default formatter would repeat them
    plain = {"formatter_class": argparse.HelpFormatter}
    ppl = subparsers.add_parser(
        "eval-ppl", **plain, help="perplexity at several context lengths (sliding windows, each token scored once)"
    )
    _add_model_arguments(ppl)
    ppl.add_argument("--data", required=True, nargs="+",
                     help="text files, directories of .txt files, a saved dataset directory, or a datasets id")
    ppl.add_argument("--lengths", required=True, type=_int_list, help="context lengths, e.g. 1024,2048,4096")
    ppl.add_argument("--stride", type=int, default=None,
                     help="window step (<= every length; default: the length, i.e. disjoint windows)")
    ppl.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    ppl.add_argument("--max-tokens", type=int, default=None, help="evaluate only the corpus' first N tokens")
    ppl.add_argument("--text-column", default="text", help="dataset column holding the text (default: text)")
    ppl.add_argument("--split", default="test", help="dataset split (default: test)")
    ppl.add_argument("--dataset-config", default=None, help="dataset configuration name (load_dataset's name=)")
    ppl.add_argument("--join-documents", action="store_true",
                     help="join all documents with blank lines into one stream (for line-per-row datasets)")
    ppl.add_argument("--no-special-tokens", action="store_true", help="do not add BOS/EOS when tokenizing")
    ppl.add_argument("--output", required=True, help="JSON file to write")
    ppl.set_defaults(handler=_run_eval_ppl)

    passkey = subparsers.add_parser("passkey", **plain, help="passkey retrieval accuracy by prompt length and key depth")
    _add_model_arguments(passkey)
    passkey.add_argument("--lengths", required=True, type=_int_list, help="prompt lengths in tokens, e.g. 1024,4096")
    passkey.add_argument("--depths", type=_float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                         help="key depths in [0, 1] (default: 0,0.25,0.5,0.75,1)")
    passkey.add_argument("--trials", type=int, default=5, help="prompts per (length, depth) (default: 5)")
    passkey.add_argument("--seed", type=int, default=0, help="seed of the random keys (default: 0)")
    passkey.add_argument("--key-digits", type=int, default=5, help="digits of each key (default: 5)")
    passkey.add_argument("--max-new-tokens", type=int, default=None,
                         help="tokens to generate (default: the key's token count + 2)")
    passkey.add_argument("--cache", choices=CACHE_POLICY_NAMES, default=None,
                         help="evict the KV cache while answering: H2O, SnapKV (ranked by the prompt's last "
                              "8 queries), StreamingLLM (sinks + recent) or a recent window (default: the full cache)")
    passkey.add_argument("--budget", type=float, default=None,
                         help="with --cache: kept tokens, a fraction of the prompt (<= 1) or a count (> 1)")
    passkey.add_argument("--prefill-chunk-size", type=int, default=None,
                         help="feed the prompt in chunks of N tokens (generate's prefill_chunk_size)")
    passkey.add_argument("--output", required=True, help="JSON file to write")
    passkey.add_argument("--plot", default=None, help="heat-map PNG (default: --output with .png)")
    passkey.set_defaults(handler=_run_passkey)

    h2o = subparsers.add_parser(
        "eval-h2o", **plain, help="perplexity of text streamed through H2OCache (and StreamingLLM / recent) at several budgets"
    )
    _add_model_arguments(h2o)
    h2o.add_argument("--data", required=True, nargs="+",
                     help="text files, directories of .txt files, a saved dataset directory, or a datasets id")
    h2o.add_argument("--length", type=int, default=1024, help="tokens per streamed segment (default: 1024)")
    h2o.add_argument("--budgets", type=_float_list, default=[0.1, 0.25, 0.5, 1.0],
                     help="budgets as fractions of --length (default: 0.1,0.25,0.5,1)")
    h2o.add_argument("--policies", type=lambda t: [p for p in t.split(",") if p], default=["h2o", "streaming", "recent"],
                     help="comma-separated: h2o, snapkv, streaming, recent (default: h2o, streaming, recent)")
    h2o.add_argument("--chunk-size", type=int, default=1, help="tokens per forward (default: 1, token by token)")
    h2o.add_argument("--max-segments", type=int, default=None, help="evaluate at most N segments")
    h2o.add_argument("--max-tokens", type=int, default=None, help="use only the corpus' first N tokens")
    h2o.add_argument("--text-column", default="text", help="dataset column holding the text (default: text)")
    h2o.add_argument("--split", default="test", help="dataset split (default: test)")
    h2o.add_argument("--dataset-config", default=None, help="dataset configuration name (load_dataset's name=)")
    h2o.add_argument("--output", required=True, help="JSON file to write")
    h2o.add_argument("--plot", default=None, help="PNG (default: --output with .png)")
    h2o.set_defaults(handler=_run_eval_h2o)
