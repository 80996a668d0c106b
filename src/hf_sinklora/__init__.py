"""hf-sinklora: SinkLoRA (arXiv 2406.05678) for the Hugging Face stack.

Importing the package registers ``attn_implementation="sf_attention"`` and
``"s2_attention"`` with transformers; that is its only side effect. The recipe's names
(``extend_context``, ``sinklora_lora_config``, ``SinkLoRATrainer``, ``load_model`` ...) are
imported on first use, so peft and trl load only when needed.
"""

from ._lazy import lazy_getattr
from .attention import SFAttentionConfig, configure_sf_attention
from .attention import register as _register_attention
from .hub.auto import register as _register_adapter_loading
from .cache import EvictingCache, H2OCache, H2OPolicy, RecentWindowPolicy, SnapKVPolicy, StreamingLLMPolicy
from .evaluation import evaluate_perplexity, make_passkey_prompt, passkey_accuracy, perplexity

__version__ = "0.1.0.dev0"

_register_attention()
_register_adapter_loading()

_LAZY = {
    "extend_context": ".rope",
    "rope_factor": ".rope",
    "sinklora_lora_config": ".training.lora",
    "find_trainable_modules": ".training.lora",
    "load_sft_dataset": ".training.data",
    "SinkLoRATrainer": ".training.trainer",
    "save_sinklora_files": ".training.trainer",
    "load_model": ".hub.loading",
    "convert_gguf": ".hub.gguf",
    "merge_adapter": ".hub.loading",
    "push_adapter": ".hub.push",
    "write_model_card": ".hub.card",
}

__all__ = [
    "EvictingCache",
    "H2OCache",
    "H2OPolicy",
    "RecentWindowPolicy",
    "SnapKVPolicy",
    "StreamingLLMPolicy",
    "SFAttentionConfig",
    "__version__",
    "configure_sf_attention",
    "evaluate_perplexity",
    "make_passkey_prompt",
    "passkey_accuracy",
    "perplexity",
]
__all__ += sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
