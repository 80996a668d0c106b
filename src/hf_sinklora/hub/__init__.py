"""SinkLoRA outputs on disk and on the Hub: model card, loading, merging, pushing; GGUF checkpoints
and the cached real checkpoint.

Names are imported on first use, so ``import hf_sinklora`` does not pull in peft.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "convert_gguf": ".gguf",
    "inspect_gguf": ".gguf",
    "load_pretrained": ".gguf",
    "real_checkpoint": ".real_checkpoint",
    "load_model": ".loading",
    "merge_adapter": ".loading",
    "push_adapter": ".push",
    "recipe_record": ".card",
    "render_model_card": ".card",
    "write_model_card": ".card",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
