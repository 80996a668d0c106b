"""SF-Attn: Sink Fixed Attention for transformers' attention interface."""

from .config import SFAttentionConfig, configure_sf_attention, sf_config_from
from .interface import (
    grouped_sf_attention,
    register,
    s2_attention_forward,
    sf_attention_forward,
    sf_attention_mask,
)
from .segments import Segments, find_segments

__all__ = [
    "SFAttentionConfig",
    "Segments",
    "configure_sf_attention",
    "find_segments",
    "grouped_sf_attention",
    "register",
    "s2_attention_forward",
    "sf_attention_forward",
    "sf_attention_mask",
    "sf_config_from",
]
