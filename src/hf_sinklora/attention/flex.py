"""SF-Attn through ``torch.nn.attention.flex_attention``: the rule as a ``mask_mod``, one call for all heads.

The ``mask_mod`` reads small per-token tables built from the same quantities as the other
backends (segments from :func:`~hf_sinklora.attention.segments.find_segments`, group sizes from
``SFAttentionConfig.group_sizes_for``): key ``kv`` is visible to query ``q`` of head ``h`` iff both
lie in the same segment, ``kv <= q``, the key is not a masked hole, ``q - kv < sliding_window``,
and the key is one of the segment's first ``s`` tokens or shares the query's group for ``h``'s
head class (the head index reaches ``mask_mod``, so unshifted and shifted heads need no split).

The speed comes from the :class:`BlockMask`: 128 x 128 tiles where the rule hides every pair are
skipped, tiles where it shows every pair run without ``mask_mod``. It is classified here by
evaluating the same ``mask_mod`` on broadcast index grids, a band of query tiles at a time,
because ``create_block_mask`` materialises the whole ``(B, H, n, n)`` mask (plus int64
intermediates) at once; tests check the two agree. The block mask depends only on the segments
and the settings, so it is built once per forward and reused by every layer (a small LRU cache).

What torch 2.13 (CPU wheel) supports, measured on this project's machine (one thread, forward of
``B=1, Hq=8, Hkv=2, D=64``, default settings; grouped SDPA 8.5 / 78 ms and full causal SDPA 20 /
229 ms at ``n = 1024 / 4096`` for comparison):

* forward on the CPU, eager: works, but it is an unfused reference that materialises
  ``(B, H, n, n)`` scores and ignores the block mask: 0.2 s / 3.5-5 s;
* forward on the CPU, ``torch.compile``d: works and skips the hidden tiles: 16 / 121 ms once
  compiled (compiling takes 3-20 s per configuration; dynamic-shape recompiles of the C++ kernel
  failed to build for some lengths, so the CPU compiles static shapes). The CPU keeps grouped SDPA;
* building the block mask: 16 / 236 ms (once per batch layout, shared by all layers);
* backward on the CPU, eager or compiled: unsupported. ``flex_attention`` raises
  ``NotImplementedError`` as soon as an input *requires grad* on the CPU, even under
  ``torch.no_grad()``; so this backend detaches its CPU inputs when grad mode is off, and
  refuses (``ValueError``) when a gradient is needed on the CPU;
* CUDA: forward and backward through the compiled (Triton) kernel, which needs ``D >= 16``
  (not measured here: no GPU).

Dropout has no flex equivalent (so ``backend="flex"`` refuses ``dropout > 0``); Gemma2's logit
soft-capping is a ``score_mod``.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import SFAttentionConfig
from .segments import Segments

BLOCK_SIZE = 128  # flex_attention's default tile
MIN_CUDA_HEAD_DIM = 16  # the Triton kernel's floor
_CACHE_SIZE = 8
_ELEMENTS_PER_BAND = 1 << 25  # bools evaluated at once while classifying tiles

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@functools.cache
def flex_attention_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` imports (torch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _triton_available() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


def flex_unsupported_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float) -> str | None:
    """Why the flex backend cannot run this call, or None when it can.

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)``.
        dropout: the attention dropout probability of the call.
    """
    if not flex_attention_available():
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    if dropout > 0:
        return f"flex_attention has no attention dropout (dropout={dropout}); set the model's attention dropout to 0"
    if query.device.type == "cpu":
        if torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value)):
            return (
                f"torch {torch.__version__} has no flex_attention backward on the CPU; use it on the CPU only "
                "for inference (model.eval() under torch.no_grad()), or train on CUDA"
            )
        return None
    if query.device.type != "cuda":
        return f"flex_attention runs on CUDA and (forward only) on the CPU, not on {query.device.type}"
    if not _triton_available():
        return "the compiled flex_attention kernel needs triton, which does not import"
    if query.shape[-1] < MIN_CUDA_HEAD_DIM:
        return f"the compiled flex_attention kernel needs a head dimension >= {MIN_CUDA_HEAD_DIM}, got {query.shape[-1]}"
    return None


@dataclass(frozen=True)
class TokenTables:
    """What ``mask_mod`` looks up, per token of the ``(B, n)`` grid and per head.

    Attributes:
        query_segment: ``(B, n)`` segment index of each token, -1 outside every segment.
        key_segment: ``(B, n)`` the same for keys, -2 outside segments and at masked holes (so
            padding and holes are never visible, not even to padding queries).
        is_sink: ``(B, n)`` bool, the token is one of its segment's first ``s``.
        group: ``(2, B, n)`` group index of each token for unshifted (0) and shifted (1) heads.
        head_class: ``(Hq,)`` 0 for unshifted heads, 1 for shifted heads.
        window: ``()`` keys at distance ``>= window`` are hidden (``n`` when there is no window).
    """

    query_segment: torch.Tensor
    key_segment: torch.Tensor
    is_sink: torch.Tensor
    group: torch.Tensor
    head_class: torch.Tensor
    window: torch.Tensor


def token_tables(
    segments: Segments, settings: SFAttentionConfig, num_heads: int, sliding_window: int | None
) -> TokenTables:
    """Per-token segment, sink and group tables of a batch (see :class:`TokenTables`)."""
    device, batch_size, seq_len = segments.length.device, segments.batch_size, segments.seq_len
    num_segments = len(segments.length)
    segment_of_token = torch.repeat_interleave(torch.arange(num_segments, device=device), segments.length)
    first_token = torch.cumsum(segments.length, 0) - segments.length
    position = torch.arange(len(segment_of_token), device=device) - first_token[segment_of_token]
    flat_index = segments.flat_start[segment_of_token] + position

    sizes = settings.group_sizes_for(segments.length)[segment_of_token]
    grid = torch.full((batch_size * seq_len,), -1, dtype=torch.long, device=device)
    query_segment = grid.index_copy(0, flat_index, segment_of_token).view(batch_size, seq_len)
    is_sink = torch.zeros_like(grid, dtype=torch.bool).index_copy(0, flat_index, position < settings.num_sink_tokens)
    group = torch.stack([
        grid.index_copy(0, flat_index, (position + shift) // sizes) for shift in (torch.zeros_like(sizes), sizes // 2)
    ]).view(2, batch_size, seq_len)

    key_segment = torch.where(query_segment >= 0, query_segment, -2)
    if segments.key_valid is not None:
        key_segment = torch.where(segments.key_valid.to(device), key_segment, -2)
    first_shifted = num_heads - settings.num_shifted_heads(num_heads)
    return TokenTables(
        query_segment=query_segment,
        key_segment=key_segment,
        is_sink=is_sink.view(batch_size, seq_len),
        group=group,
        head_class=(torch.arange(num_heads, device=device) >= first_shifted).long(),
        window=torch.tensor(seq_len if sliding_window is None else sliding_window, device=device),
    )


def sf_mask_mod(tables: TokenTables) -> MaskMod:
    """The SF-Attn rule as a flex ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

    Only tensors are captured, so a compiled kernel is reused for new tables of the same shape.
    """
    query_segment, key_segment, is_sink = tables.query_segment, tables.key_segment, tables.is_sink
    group, head_class, window = tables.group, tables.head_class, tables.window

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        heads_class = head_class[h]
        same_segment = query_segment[b, q_idx] == key_segment[b, kv_idx]
        same_group = group[heads_class, b, q_idx] == group[heads_class, b, kv_idx]
        causal = (kv_idx <= q_idx) & (kv_idx > q_idx - window)  # q - kv < window, without an n x n difference
        return same_segment & causal & (same_group | is_sink[b, kv_idx])

    return mask_mod


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, H, Qb, Kb)`` bool tiles -> per query tile: how many kv tiles, and their indices first."""
    counts = tiles.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts, indices


def classify_tiles(
    mask_mod: MaskMod, batch_size: int, heads: torch.Tensor, seq_len: int, block_size: int = BLOCK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which ``block_size`` tiles of the ``n x n`` grid ``mask_mod`` shows partly, and which fully.

    Evaluates ``mask_mod`` on broadcast index grids, a band of query tiles at a time (memory
    ``O(B * len(heads) * band * n)``). Rows and columns past ``seq_len`` count as hidden, as in
    ``create_block_mask``, so a ragged last tile is never "full".

    Args:
        heads: ``(H,)`` the head indices to evaluate.

    Returns:
        ``partial, full``: ``(B, H, Qb, Kb)`` bool each, ``Qb = Kb = ceil(n / block_size)``.
    """
    device = heads.device
    num_tiles = -(-seq_len // block_size)
    b = torch.arange(batch_size, device=device)[:, None, None, None]
    h = heads[None, :, None, None]
    band = max(1, _ELEMENTS_PER_BAND // (batch_size * len(heads) * num_tiles * block_size * block_size))
    partial, full = [], []
    for first in range(0, num_tiles, band):
        tiles = min(band, num_tiles - first)
        end = first + tiles  # the rule is causal: key tiles past the band's last query tile are empty
        q = torch.arange(first * block_size, end * block_size, device=device)
        kv = torch.arange(end * block_size, device=device)
        inside = (q < seq_len)[:, None] & (kv < seq_len)
        q, kv = q.clamp_max(seq_len - 1), kv.clamp_max(seq_len - 1)
        shown = mask_mod(b, h, q[None, None, :, None], kv[None, None, None, :]) & inside
        # two reductions, the contiguous one first: a single strided sum copies the bools to int64
        counts = shown.view(batch_size, len(heads), tiles * block_size, end, block_size).sum(-1, dtype=torch.int32)
        counts = counts.view(batch_size, len(heads), tiles, block_size, end).sum(3)
        counts = torch.nn.functional.pad(counts, (0, num_tiles - end))
        partial.append((counts > 0) & (counts < block_size * block_size))
        full.append(counts == block_size * block_size)
    return torch.cat(partial, dim=2), torch.cat(full, dim=2)


def build_block_mask(tables: TokenTables, block_size: int = BLOCK_SIZE) -> Any:
    """The flex ``BlockMask`` of the rule in ``tables``; head dimension 1 when all heads share a class."""
    from torch.nn.attention.flex_attention import BlockMask

    batch_size, seq_len = tables.query_segment.shape
    mask_mod = sf_mask_mod(tables)
    classes = tables.head_class.unique(sorted=True)
    representative = torch.searchsorted(tables.head_class, classes)  # first head of each class
    partial, full = classify_tiles(mask_mod, batch_size, representative, seq_len, block_size)
    if len(classes) > 1:
        partial, full = partial[:, tables.head_class], full[:, tables.head_class]
    counts, indices = _ordered(partial)
    full_counts, full_indices = _ordered(full)
    return BlockMask.from_kv_blocks(
        counts, indices, full_counts, full_indices, BLOCK_SIZE=block_size, mask_mod=mask_mod,
        seq_lengths=(seq_len, seq_len),
    )


_block_masks: OrderedDict[tuple, Any] = OrderedDict()


def _cache_key(segments: Segments, settings: SFAttentionConfig, num_heads: int, sliding_window: int | None) -> tuple | None:
    if segments.key_valid is not None:  # holes: rare, not worth hashing the mask
        return None
    rule = (settings.group_size, settings.group_size_ratio, settings.num_sink_tokens, settings.shifted_head_ratio)
    layout = tuple(torch.stack([segments.row, segments.start, segments.length]).flatten().tolist())
    return (str(segments.length.device), segments.batch_size, segments.seq_len, num_heads, sliding_window, rule, layout)


def sf_block_mask(segments: Segments, settings: SFAttentionConfig, num_heads: int, sliding_window: int | None) -> Any:
    """:func:`build_block_mask` for a batch, cached: every layer of a forward sees the same segments."""
    key = _cache_key(segments, settings, num_heads, sliding_window)
    if key is not None and key in _block_masks:
        _block_masks.move_to_end(key)
        return _block_masks[key]
    block_mask = build_block_mask(token_tables(segments, settings, num_heads, sliding_window))
    if key is not None:
        _block_masks[key] = block_mask
        while len(_block_masks) > _CACHE_SIZE:
            _block_masks.popitem(last=False)
    return block_mask


@functools.cache
def _compiled_flex_attention(device_type: str) -> Callable[..., torch.Tensor]:
    """``torch.compile(flex_attention)``, created once per device type on first use.

    CUDA compiles with automatic dynamic shapes (one kernel for every length once two were seen).
    The CPU compiles static shapes: torch 2.13's C++ flex template fails to build some
    dynamic-shape kernels (``cur_qSplitSize`` undeclared, seen for n = 900 after n = 700).
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False if device_type == "cpu" else None)


def _softcap_score_mod(softcap: float) -> Callable[..., torch.Tensor]:
    # A Python float, not a captured tensor: torch 2.13's compiled CPU kernel fails to build
    # a score_mod that reads a buffer; a float only specialises the graph to the model's cap.
    cap = float(softcap)

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / cap) * cap

    return score_mod


def flex_sf_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: Segments,
    settings: SFAttentionConfig,
    *,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    compiled: bool | None = None,
) -> torch.Tensor:
    """SF-Attn for every head at once with ``flex_attention`` (check :func:`flex_unsupported_reason` first).

    Args:
        query: ``(B, Hq, n, D)``; key/value: ``(B, Hkv, n, D)`` (GQA: ``Hq`` a multiple of ``Hkv``).
        segments: where the sequences lie (:func:`find_segments`).
        settings: the rule's parameters.
        scale: softmax scale.
        sliding_window: keys ``sliding_window`` or more positions back are hidden.
        softcap: Gemma2-style ``tanh`` logit soft-capping (None or 0: off).
        compiled: use ``torch.compile(flex_attention)``; default: on CUDA only (on the CPU the
            eager reference is slow but compiles nothing).

    Returns:
        ``(B, n, Hq, D)``; tokens outside every segment get zeros.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if compiled is None:
        compiled = query.is_cuda
    if query.device.type == "cpu" and not torch.is_grad_enabled():
        query, key, value = query.detach(), key.detach(), value.detach()  # flex refuses CPU tensors requiring grad
    block_mask = sf_block_mask(segments, settings, query.shape[1], sliding_window)
    score_mod = _softcap_score_mod(softcap) if softcap else None
    options: dict[str, Any] = {}
    if compiled:
        # SF-Attn always has q_len == kv_len: the decoding kernel (short queries) never fits.
        options["kernel_options"] = {"FORCE_USE_FLEX_ATTENTION": True}
    kernel = _compiled_flex_attention(query.device.type) if compiled else flex_attention
    with warnings.catch_warnings():
        # The eager CPU path is chosen on purpose (nothing to compile); its "unfused" warning is noise.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = kernel(
            query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale,
            enable_gqa=query.shape[1] != key.shape[1], **options,
        )
    return out.transpose(1, 2)


__all__ = [
    "BLOCK_SIZE",
    "TokenTables",
    "build_block_mask",
    "classify_tiles",
    "flex_attention_available",
    "flex_sf_attention",
    "flex_unsupported_reason",
    "sf_block_mask",
    "sf_mask_mod",
    "token_tables",
]
