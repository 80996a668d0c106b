"""Small value checks and names shared by every layer of the package (no imports of our own)."""

from __future__ import annotations

import inspect
from typing import Any

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def torch_dtype(name: str) -> Any:
    """``"auto"`` or the ``torch.dtype`` called ``name`` (one of :data:`DTYPE_NAMES`).

    Raises:
        ValueError: ``name`` is not one of :data:`DTYPE_NAMES`.
    """
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {name!r}")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model``'s forward (a ``PeftModel``'s: the wrapped model's) takes ``logits_to_keep``."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
