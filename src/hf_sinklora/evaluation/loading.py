"""Loading a model (and optional peft adapter) plus its tokenizer for evaluation: a thin layer
over :func:`hf_sinklora.hub.loading.load_model` that adds the device, eval mode and tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .._checks import torch_dtype

logger = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter lives (CPU for a module without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _has_tokenizer(path: str) -> bool:
    return Path(path).is_dir() and any((Path(path) / name).is_file() for name in _TOKENIZER_FILES)


def tokenizer_source(model: str, adapter: str | None = None) -> str:
    """Where the tokenizer is read from: the adapter directory when it holds one, else the model."""
    if adapter is not None and _has_tokenizer(adapter):
        return adapter
    return model


def load_for_eval(
    model: str,
    adapter: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str = "sf_attention",
) -> tuple[torch.nn.Module, Any]:
    """Loads ``(model, tokenizer)`` ready for evaluation (eval mode, on ``device``).

    Both go through :func:`hf_sinklora.load_model`, so an adapter directory written by the
    recipe brings its RoPE scaling and trained embeddings/norms along.

    Args:
        model: a local path, ``.gguf`` file or hub id: a plain model, or an adapter directory (its
            base is the one recorded in ``adapter_config.json``).
        adapter: a peft adapter (path or hub id) loaded on top of ``model``.
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        attn_implementation: ``"sf_attention"`` (full causal in eval mode) or any transformers name.
    """
    from transformers import AutoTokenizer

    from ..hub.gguf import load_pretrained
    from ..hub.loading import load_model

    target = resolve_device(device)
    kwargs = dict(dtype=torch_dtype(dtype), attn_implementation=attn_implementation)
    if adapter is None:
        loaded = load_model(model, **kwargs)
    else:
        loaded = load_model(adapter, base_model=model, **kwargs)
        logger.info("loaded adapter %s on %s", adapter, model)
    loaded = loaded.to(target).eval()
    tokenizer = load_pretrained(AutoTokenizer, tokenizer_source(model, adapter))
    logger.info("model %s on %s (%s), tokenizer from %s", model, target, next(loaded.parameters()).dtype,
                tokenizer_source(model, adapter))
    return loaded, tokenizer
