"""KV-cache eviction as a ``transformers.Cache``: H2O (Heavy-Hitter Oracle) and other policies."""

from .h2o_cache import EvictingCache, H2OCache, cache_kv_bytes
from .h2o_layer import H2OLayer
from .policy import EvictionPolicy, H2OPolicy, RecentWindowPolicy, SnapKVPolicy, StreamingLLMPolicy
from .scored_attention import h2o_attention, h2o_layer_of, scored_attention

__all__ = [
    "EvictingCache",
    "EvictionPolicy",
    "H2OCache",
    "H2OLayer",
    "H2OPolicy",
    "RecentWindowPolicy",
    "SnapKVPolicy",
    "StreamingLLMPolicy",
    "cache_kv_bytes",
    "h2o_attention",
    "h2o_layer_of",
    "scored_attention",
]
