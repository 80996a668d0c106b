"""Long-context evaluation: strided perplexity and passkey retrieval (Python API and CLI).

Nothing heavy is imported here: ``datasets``, ``peft`` and ``matplotlib`` load only when
the function that needs them runs.
"""

from ..data.sources import load_texts
from .cache_quality import POLICIES, cache_budget_sweep, plot_cache_sweep, streamed_nll, streamed_token_nll
from .heatmap import accuracy_grid, plot_passkey_heatmap
from .loading import load_for_eval, resolve_device, tokenizer_source
from .passkey import DEFAULT_DEPTHS, greedy_answer, passkey_accuracy
from .passkey_prompt import PasskeyPrompt, extract_key, make_passkey_prompt, minimum_prompt_length
from .perplexity import PerplexityResult, as_documents, evaluate_perplexity, perplexity, tokenize_documents
from .report import format_cache_sweep_table, format_passkey_table, format_perplexity_table, write_json
from .windows import Window, plan_windows

__all__ = [
    "DEFAULT_DEPTHS",
    "POLICIES",
    "PasskeyPrompt",
    "PerplexityResult",
    "Window",
    "accuracy_grid",
    "as_documents",
    "cache_budget_sweep",
    "evaluate_perplexity",
    "extract_key",
    "format_cache_sweep_table",
    "format_passkey_table",
    "format_perplexity_table",
    "greedy_answer",
    "load_for_eval",
    "load_texts",
    "make_passkey_prompt",
    "minimum_prompt_length",
    "passkey_accuracy",
    "perplexity",
    "plan_windows",
    "plot_cache_sweep",
    "plot_passkey_heatmap",
    "resolve_device",
    "streamed_nll",
    "streamed_token_nll",
    "tokenize_documents",
    "tokenizer_source",
    "write_json",
]
