"""hf-sinklora: SinkLoRA (arXiv 2406.05678) for the Hugging Face stack.

Importing the package registers ``attn_implementation="sf_attention"`` and
``"s2_attention"`` with transformers; that is its only side effect.
"""

from .attention import SFAttentionConfig, configure_sf_attention
from .attention import register as _register_attention
from .cache import H2OCache
from .evaluation import evaluate_perplexity, make_passkey_prompt, passkey_accuracy, perplexity

__version__ = "0.1.0.dev0"

_register_attention()

__all__ = [
    "H2OCache",
    "SFAttentionConfig",
    "__version__",
    "configure_sf_attention",
    "evaluate_perplexity",
    "make_passkey_prompt",
    "passkey_accuracy",
    "perplexity",
]
