"""H2O (Heavy-Hitter Oracle) KV-cache eviction as a ``transformers.Cache``."""

from .h2o_cache import H2OCache
from .h2o_layer import H2OLayer
from .policy import H2OPolicy
from .scored_attention import h2o_attention, h2o_layer_of, scored_attention
from .timing import GenerationRun, cache_kv_bytes, timed_generate

__all__ = [
    "GenerationRun",
    "H2OCache",
    "H2OLayer",
    "H2OPolicy",
    "cache_kv_bytes",
    "h2o_attention",
    "h2o_layer_of",
    "scored_attention",
    "timed_generate",
]
