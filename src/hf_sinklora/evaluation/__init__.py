"""Long-context evaluation: strided perplexity and passkey retrieval (Python API and CLI).

Nothing heavy is imported here: ``datasets``, ``peft`` and ``matplotlib`` load only when
the function that needs them runs.
"""

from .perplexity import PerplexityResult, as_documents, evaluate_perplexity, perplexity, tokenize_documents
from .windows import Window, plan_windows

__all__ = [
    "PerplexityResult",
    "Window",
    "as_documents",
    "evaluate_perplexity",
    "perplexity",
    "plan_windows",
    "tokenize_documents",
]
