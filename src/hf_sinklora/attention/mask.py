"""The ``AttentionMaskInterface`` entry of ``sf_attention`` / ``s2_attention``.

Two kinds of calls reach it:

* a whole, uncached sequence with a plain causal pattern (optionally a sliding window, which the
  attention function also receives as ``sliding_window``, or packed sequences, which it reads
  from ``position_ids``): SF-Attn builds its own sparse pattern from segments, so like flash-attn
  it gets only the 2-D ``(B, n)`` padding mask (or None), never an ``n x n`` mask;
* anything else (a KV cache with offsets: ``DynamicCache`` decoding, ``StaticCache``, sliding
  caches; or a mask function with overlays: chunked attention, image-token blocks, ``or``/``and``
  masks): transformers' own ``sdpa_mask`` builds exactly what ``sdpa`` would get, so dense eval
  mode equals ``sdpa``. The 2-D padding mask and the names of the overlays travel on that tensor
  (``PADDING_ATTR``, ``OVERLAYS_ATTR``) for SF-Attn's and H2O's checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.masking_utils import causal_mask_function, sdpa_mask

PADDING_ATTR = "sf_padding_mask"
OVERLAYS_ATTR = "sf_mask_overlays"

# Leaves of a mask function that SF-Attn and H2O reproduce themselves (causal order, the
# layer's sliding window, padding, packed segments); anything else is an overlay.
_PLAIN_LEAVES = {
    "causal_mask_function",
    "sliding_window_overlay.<locals>.inner_mask",
    "padding_mask_function.<locals>.inner_mask",
    "packed_sequence_mask_function.<locals>.inner_mask",
}
# Wrappers that only combine or re-index the functions they close over.
_INTERSECTIONS = {
    "and_masks.<locals>.and_mask",
    "remap_positions_for_packed_sequence.<locals>.inner_mask",
}


def _closed_over(function: Callable) -> list[Callable]:
    """The mask functions a wrapper closes over (a cell holds one, or a tuple of them)."""
    found = []
    for cell in function.__closure__ or ():
        value = cell.cell_contents
        values = value if isinstance(value, tuple) else (value,)
        found.extend(v for v in values if callable(v) and not isinstance(v, torch.Tensor))
    return found


def mask_overlays(mask_function: Callable | None) -> list[str]:
    """Names of the parts of ``mask_function`` beyond causal + sliding window + padding + packing.

    ``[]`` for transformers' ``causal_mask_function``, ``sliding_window_causal_mask_function(w)``
    and their packed-sequence forms; e.g. ``["chunked_overlay"]`` for Llama4's chunked layers,
    ``["or_masks(...)"]`` for an image-token ``or_mask_function``. Unknown functions count as
    overlays, so nothing is silently dropped.
    """
    if mask_function is None:
        return []
    name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
    if name in _PLAIN_LEAVES:
        return []
    if name in _INTERSECTIONS:
        return [overlay for inner in _closed_over(mask_function) for overlay in mask_overlays(inner)]
    if name == "or_masks.<locals>.or_mask":
        parts = [getattr(f, "__qualname__", "?").split(".<locals>")[0] for f in _closed_over(mask_function)]
        return [f"or_masks({', '.join(parts)})"]
    return [name.split(".<locals>")[0]]


def _is_whole_sequence(q_length: int, kv_length: int, q_offset: Any, kv_offset: Any) -> bool:
    """No cache in play: queries and keys are the same ``n`` tokens, from position 0."""
    offsets_zero = all(not isinstance(o, torch.Tensor) and o == 0 for o in (q_offset, kv_offset))
    return offsets_zero and q_length == kv_length


def _padding_only(attention_mask: torch.Tensor | None, kv_length: int) -> torch.Tensor | None:
    """The last ``kv_length`` columns of the 2-D mask, or None when they are all real tokens."""
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


def sf_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """``AttentionMaskInterface`` entry (the signature of transformers' ``sdpa_mask``).

    Args:
        batch_size: ``B``.
        q_length: queries in this forward.
        kv_length: keys the attention will see (the cache's ``get_mask_sizes``).
        q_offset: position of the first query (a tensor for ``StaticCache``).
        kv_offset: position of the first key (sliding-window cache layers drop old keys).
        mask_function: the pattern (causal, sliding window, chunked, overlays ...).
        attention_mask: the 2-D ``(B, seen + q)`` padding mask, or None.
        **kwargs: passed on to ``sdpa_mask`` (``allow_is_causal_skip``, ``local_size``,
            ``use_vmap``, ``device`` ...).

    Returns:
        For a whole uncached sequence with a plain pattern: the 2-D ``(B, n)`` padding mask, or
        None when every token is real. Otherwise ``sdpa_mask``'s ``(B, 1, q, kv)`` bool mask (or
        None where sdpa uses ``is_causal``), carrying the 2-D mask as ``sf_padding_mask`` and the
        overlay names (:func:`mask_overlays`) as ``sf_mask_overlays``.
    """
    overlays = mask_overlays(mask_function)
    if not overlays and _is_whole_sequence(q_length, kv_length, q_offset, kv_offset):
        return _padding_only(attention_mask, kv_length)
    mask = sdpa_mask(
        batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
        mask_function=mask_function, attention_mask=attention_mask, **kwargs,
    )
    if mask is not None:
        setattr(mask, PADDING_ATTR, attention_mask)
        setattr(mask, OVERLAYS_ATTR, overlays)
    return mask


def padding_of(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The 2-D ``(B, seen + q)`` padding mask behind what :func:`sf_attention_mask` returned.

    None means every token is real: ``sdpa_mask`` returns None only when no column it covers is
    padding, and with left padding (what ``generate`` uses) those columns start at column 0.
    A 4-D mask built elsewhere (passed by the caller) has no 2-D form: it is returned as is.
    """
    if attention_mask is None or attention_mask.ndim == 2:
        return attention_mask
    return getattr(attention_mask, PADDING_ATTR, attention_mask)


def overlays_of(attention_mask: torch.Tensor | None) -> list[str]:
    """Overlay names carried by a mask from :func:`sf_attention_mask` (``[]`` for 2-D masks or None)."""
    return list(getattr(attention_mask, OVERLAYS_ATTR, None) or [])
