"""SinkLoRA outputs on disk and on the Hub: model card, loading, merging, pushing.

Names are imported on first use, so ``import hf_sinklora`` does not pull in peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "loading",
    "merge_adapter": "loading",
    "push_adapter": "push",
    "recipe_record": "card",
    "render_model_card": "card",
    "write_model_card": "card",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
