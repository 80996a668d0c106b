"""The attention functions registered as ``sf_attention`` and ``s2_attention``.

transformers calls them from every model that uses the attention interface, with
``query (B, Hq, n, D)``, ``key/value (B, Hkv, n, D)``, the mask our
:func:`~hf_sinklora.attention.mask.sf_attention_mask` built, and per-layer keyword arguments
(``sliding_window``, ``softcap``, ``position_ids``, ``cu_seq_lens_q`` ...). They return
``(B, n, Hq, D)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers.utils import logging

from ..cache.scored_attention import h2o_attention, h2o_layer_of
from .config import SFAttentionConfig, sf_config_from
from .flash_varlen import can_use_flash, flash_attn_available, flash_grouped_attention
from .flex import flex_sf_attention, flex_unsupported_reason
from .full_causal import full_causal_attention
from .grouped_sdpa import grouped_attention, uniform_grouped_attention, uniform_window_free
from .groups import build_group_layout
from .mask import overlays_of, padding_of, sf_attention_mask
from .segments import Segments, find_segments_once
from .uniform_cpu import flash_cpu_available, head_runs, uniform_flash_attention

logger = logging.get_logger(__name__)  # transformers' logging: warning_once


def _segments_for(query: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> Segments:
    batch_size, _, seq_len, _ = query.shape
    position_ids = kwargs.get("position_ids")
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None or (position_ids is not None and position_ids.shape[-1] != seq_len):
        position_ids = None
    return find_segments_once(batch_size, seq_len, query.device, attention_mask, position_ids, cu_seq_lens)


def _head_classes(num_heads: int, settings: SFAttentionConfig) -> list[tuple[int, int, bool]]:
    """``(first head, end head, shifted)`` ranges: unshifted heads first, shifted heads last."""
    first_shifted = num_heads - settings.num_shifted_heads(num_heads)
    classes = [(0, first_shifted, False), (first_shifted, num_heads, True)]
    return [c for c in classes if c[1] > c[0]]


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, n, D)`` -> ``(B * n, H, D)``, so groups are gathered by flat token index."""
    return x.transpose(1, 2).reshape(x.shape[0] * x.shape[2], x.shape[1], x.shape[3])


def resolve_backend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, settings: SFAttentionConfig, dropout: float = 0.0
) -> str:
    """The backend that runs an SF-Attn call: ``"flash_attn"``, ``"flex"`` or ``"sdpa"`` (grouped SDPA
    and, for whole rows on the CPU, torch's CPU flash kernel).

    ``"auto"``: flash-attn varlen when it can run (CUDA fp16/bf16, installed); else grouped SDPA.
    ``"auto"`` never picks flex: on an H100 (bf16, Llama-3-8B's attention shape, forward+backward)
    grouped SDPA ran 1.86x / 2.85x faster than full causal SDPA at 16k / 32k tokens and flex
    1.30x / 2.02x (``benchmarks/results/gpu/``); flex holds about 0.65x grouped SDPA's extra memory,
    so ask for it with ``backend="flex"`` where memory, not time, is short.

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)``.

    Raises:
        ValueError: an explicitly chosen backend cannot run this call; the message says why.
    """
    if settings.backend == "flex":
        reason = flex_unsupported_reason(query, key, value, dropout)
        if reason is not None:
            raise ValueError(f"sf_attention backend='flex' cannot run: {reason}; use backend='auto' or 'sdpa'")
        return "flex"
    if settings.backend == "flash_attn":
        if not can_use_flash(query):
            reason = "flash_attn is not installed" if not flash_attn_available() else (
                f"tensors are {query.device.type}/{query.dtype}, flash-attn needs CUDA fp16/bf16"
            )
            raise ValueError(f"sf_attention backend='flash_attn' cannot run: {reason}; use backend='auto' or 'sdpa'")
        return "flash_attn"
    if settings.backend == "sdpa":
        return "sdpa"
    if can_use_flash(query):
        return "flash_attn"
    return "sdpa"


def _class_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, classes: list[tuple[int, int, bool]], repeats: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(q, k, v)`` of each head class. Split, not sliced, so backward assembles each gradient in
    one pass; a class boundary inside a GQA group gives each of its query heads its own key head."""
    counts = [end - first for first, end, _ in classes]
    queries = query.split(counts, dim=1)
    if all(first % repeats == 0 and end % repeats == 0 for first, end, _ in classes):
        kv_counts = [count // repeats for count in counts]
        return list(zip(queries, key.split(kv_counts, dim=1), value.split(kv_counts, dim=1), strict=True))
    inputs = []
    for q, (first, end, _) in zip(queries, classes, strict=True):
        kv_heads = torch.arange(first, end, device=query.device) // repeats
        inputs.append((q, key[:, kv_heads], value[:, kv_heads]))
    return inputs


def _uniform_class_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    shifted: bool,
    settings: SFAttentionConfig,
    *,
    scale: float,
    dropout: float,
    sliding_window: int | None,
) -> torch.Tensor | None:
    """The gather-free path for one head class of whole rows of one length, or None when it cannot
    express the rule (a sliding window that binds inside a group + sinks).

    Args:
        query: ``(B, h, n, D)``; key/value: ``(B, h_kv, n, D)`` of this class.

    Returns:
        ``(B, n, h, D)`` or None.
    """
    seq_len = query.shape[2]
    group_size = settings.group_size_for(seq_len)
    shift = group_size // 2 if shifted else 0
    if not uniform_window_free(seq_len, group_size, shift, settings.num_sink_tokens, sliding_window):
        return None
    return uniform_grouped_attention(query, key, value, group_size, shift, settings.num_sink_tokens,
                                     scale=scale, dropout=dropout)


def _uniform_flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    classes: list[tuple[int, int, bool]],
    settings: SFAttentionConfig,
    *,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor | None:
    """Every head class of whole rows at once with the CPU flash kernel, or None when a class
    cannot use it (see :func:`uniform_window_free`).

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)``.

    Returns:
        ``(B, n, Hq, D)`` or None.
    """
    seq_len = query.shape[2]
    group_size = settings.group_size_for(seq_len)
    sinks = settings.num_sink_tokens
    runs = head_runs(classes, query.shape[1] // key.shape[1], group_size)
    if not all(uniform_window_free(seq_len, group_size, shift, sinks, sliding_window) for shift in {r.shift for r in runs}):
        return None
    return uniform_flash_attention(query, key, value, runs, group_size, sinks, scale=scale)


def _layout_class_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    shifted: bool,
    settings: SFAttentionConfig,
    *,
    use_flash: bool,
    scale: float,
    dropout: float,
    sliding_window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """One head class over any segments (packed rows, padding, mixed lengths): the groups are
    gathered by a :class:`GroupLayout`, then flash-attn varlen or grouped SDPA runs them.

    Args:
        query: ``(B, h, n, D)``; key/value: ``(B, h_kv, n, D)`` of this class.

    Returns:
        ``(B, n, h, D)``; padding positions are zeros.
    """
    batch_size, heads, seq_len, _ = query.shape
    key_valid = None if segments.key_valid is None else segments.key_valid.flatten()
    layout = build_group_layout(segments, settings.group_sizes_for(segments.length), shifted, settings.num_sink_tokens)
    q, k, v = (_token_major(x) for x in (query, key, value))
    window_binds = sliding_window is not None and layout.max_distance >= sliding_window
    flash_ok = use_flash and key_valid is None and not window_binds
    if use_flash and not flash_ok:
        logger.warning_once("sf_attention: a binding sliding window or masked holes need the grouped SDPA backend")
    if flash_ok:
        out = flash_grouped_attention(q, k, v, layout, scale=scale, dropout=dropout, softcap=softcap)
    else:
        out = grouped_attention(q, k, v, layout, scale=scale, dropout=dropout, sliding_window=sliding_window,
                                softcap=softcap, key_valid=key_valid)
    return out.view(batch_size, seq_len, heads, -1)


def grouped_sf_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    settings: SFAttentionConfig,
    *,
    scale: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """SF-Attn over the given segments: ``flex_attention`` for all heads at once when
    :func:`resolve_backend` says so; otherwise one head class (unshifted, shifted) at a time, the
    gather-free path for whole rows of one length, the layout path for the rest.

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)``.
        segments: where the sequences lie (:func:`~hf_sinklora.attention.segments.find_segments`).
        settings: the rule's parameters.

    Returns:
        ``(B, n, Hq, D)``; padding positions are zeros.
    """
    backend = resolve_backend(query, key, value, settings, dropout)
    if backend == "flex":
        return flex_sf_attention(query, key, value, segments, settings, scale=scale,
                                 sliding_window=sliding_window, softcap=softcap)
    batch_size, num_heads, seq_len, _ = query.shape
    repeats = num_heads // key.shape[1]
    use_flash = backend == "flash_attn"
    classes = _head_classes(num_heads, settings)
    uniform = segments.is_uniform and softcap is None and not use_flash
    if uniform and flash_cpu_available(query, dropout):
        out = _uniform_flash_attention(query, key, value, classes, settings, scale=scale, sliding_window=sliding_window)
        if out is not None:
            return out
    outputs = []
    for (first, end, shifted), (q, k, v) in zip(classes, _class_inputs(query, key, value, classes, repeats)):
        out = None
        if uniform:
            out = _uniform_class_attention(q, k, v, shifted, settings, scale=scale, dropout=dropout,
                                           sliding_window=sliding_window)
        if out is None:
            out = _layout_class_attention(q, k, v, segments, shifted, settings, use_flash=use_flash, scale=scale,
                                          dropout=dropout, sliding_window=sliding_window, softcap=softcap)
        outputs.append(out)
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.reshape(batch_size, seq_len, num_heads, -1)


def _refuse_overlays(attention_mask: torch.Tensor | None, what: str, instead: str) -> None:
    """Raises when the model's mask adds patterns (chunked attention, image blocks ...) ``what`` cannot apply."""
    overlays = overlays_of(attention_mask)
    if overlays:
        raise ValueError(
            f"{what} supports causal masks with padding, a sliding window and packed sequences only; this "
            f"model's attention mask adds {', '.join(overlays)}, which it cannot apply; {instead}"
        )


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    settings: SFAttentionConfig,
    dropout: float,
    scaling: float | None,
    sliding_window: int | None,
    softcap: float | None,
    kwargs: dict[str, Any],
) -> tuple[torch.Tensor, None]:
    if kwargs.get("output_attentions"):
        logger.warning_once(
            "sf_attention does not return attention probabilities (SF-Attn never forms the n x n matrix); "
            "attentions are None. Load with attn_implementation='eager' to inspect them."
        )
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        raise ValueError("sf_attention is a causal attention; this module is bidirectional (is_causal=False)")
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    h2o_layer = h2o_layer_of(key)
    if h2o_layer is not None:
        if module.training:
            raise ValueError("H2OCache is for inference: call model.eval() before generate()")
        _refuse_overlays(attention_mask, "H2OCache", "generate with a transformers cache (DynamicCache, StaticCache)")
        out = h2o_attention(
            query, h2o_layer, padding_of(attention_mask), scale=scale, sliding_window=sliding_window, softcap=softcap
        )
        return out, None
    mode = "sf" if module.training else settings.eval_mode
    q_len, kv_len = query.shape[2], key.shape[2]

    if mode == "full":
        segments = None
        if q_len == kv_len and attention_mask is None:
            segments = _segments_for(query, None, kwargs)
        if segments is not None and len(segments.row) > query.shape[0]:
            # Packed rows: causal within each segment = one group per segment, no sinks.
            whole = dataclasses.replace(
                settings, group_size=None, group_size_ratio=1.0, num_sink_tokens=0, shifted_head_ratio=0.0
            )
            out = grouped_sf_attention(
                query, key, value, segments, whole, scale=scale, dropout=dropout,
                sliding_window=sliding_window, softcap=softcap,
            )
        else:
            out = full_causal_attention(
                module, query, key, value, attention_mask, scale=scale, dropout=dropout,
                sliding_window=sliding_window, softcap=softcap,
            )
        return out, None

    if q_len != kv_len:
        hint = "call model.eval() before generate()" if module.training else "use eval_mode='full' for generation"
        raise ValueError(
            f"SF-Attn needs whole sequences (queries {q_len} != keys {kv_len}, i.e. a KV cache is in use); {hint}"
        )
    _refuse_overlays(attention_mask, "SF-Attn (training, or eval_mode='sf')",
                     "dense eval mode (model.eval() with eval_mode='full') equals sdpa there")
    if attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError(
            "sf_attention needs a 2-D (batch, seq_len) padding mask; got a prepared "
            f"{attention_mask.ndim}-D mask. Pass the tokenizer's attention_mask instead."
        )
    segments = _segments_for(query, attention_mask, kwargs)
    out = grouped_sf_attention(
        query, key, value, segments, settings, scale=scale, dropout=dropout,
        sliding_window=sliding_window, softcap=softcap,
    )
    return out, None


def sf_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Sink Fixed Attention (``attn_implementation="sf_attention"``).

    Reads its parameters from ``module.config.sf_attention``. In training mode it applies
    the SF-Attn rule per segment; in eval mode it runs ``eval_mode`` (dense causal by default).

    Args:
        module: the attention layer (``training``, ``config``, ``is_causal`` are read).
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, kv, D)``.
        attention_mask: what :func:`~hf_sinklora.attention.mask.sf_attention_mask` built: the 2-D
            ``(B, n)`` padding mask of a whole sequence, ``sdpa``'s ``(B, 1, q, kv)`` mask under a
            KV cache or mask overlays, or None.
        dropout: attention dropout probability.
        scaling: softmax scale (default ``D ** -0.5``).
        sliding_window: the layer's window; keys further back are hidden.
        softcap: logit soft-capping value (Gemma2).
        **kwargs: ``position_ids``/``cu_seq_lens_q`` describe packed rows.

    Returns:
        ``(attn_output (B, n, Hq, D), None)``: attention probabilities are never returned.
    """
    settings = sf_config_from(module.config)
    return _attention(module, query, key, value, attention_mask, settings, dropout, scaling, sliding_window, softcap, kwargs)


def s2_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Shifted sparse attention without the wrap-around leak (``attn_implementation="s2_attention"``).

    The SF-Attn rule with ``num_sink_tokens = 0`` (other settings from ``config.sf_attention``),
    for ablations against LongLoRA's S2-Attn.
    """
    settings = dataclasses.replace(sf_config_from(module.config), num_sink_tokens=0)
    return _attention(module, query, key, value, attention_mask, settings, dropout, scaling, sliding_window, softcap, kwargs)


MIN_TRANSFORMERS = "5.24"


def check_transformers_version(found: str | None = None) -> None:
    """Raises ``ImportError`` for a transformers older than the floor in pyproject.toml.

    5.2/5.3 call mask functions with ``cache_position`` instead of ``q_length``; before 5.13 cache
    layers need ``get_max_cache_shape``; before 5.24 ``generate``/``forward`` do not know the
    ``cache=`` argument (``model(..., cache=H2OCache(...))`` would silently run without it).
    """
    from importlib.metadata import version

    from packaging.version import Version

    found = found or version("transformers")
    if Version(found) < Version(MIN_TRANSFORMERS):
        raise ImportError(
            f"hf_sinklora needs transformers>={MIN_TRANSFORMERS},<6 (found {found}); "
            f"run: pip install -U 'transformers>={MIN_TRANSFORMERS},<6'"
        )


def register() -> None:
    """Registers both names with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``."""
    check_transformers_version()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, function in (("sf_attention", sf_attention_forward), ("s2_attention", s2_attention_forward)):
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sf_attention_mask)
