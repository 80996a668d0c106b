"""SF-Attn settings: validated, stored on ``model.config.sf_attention`` as a plain dict.

The dict travels with ``save_pretrained`` / ``from_pretrained`` like any other config
attribute; missing keys take the defaults below. The attention function re-reads it on
each call, so changing it with :func:`configure_sf_attention` takes effect at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from .._checks import is_int, is_number

CONFIG_ATTRIBUTE = "sf_attention"
EVAL_MODES = ("full", "sf")
BACKENDS = ("auto", "sdpa", "flash_attn", "flex")
_EPS = 1e-9


@dataclass(frozen=True)
class SFAttentionConfig:
    """Parameters of Sink Fixed Attention (see ``docs/sf_attention.md``).

    Args:
        group_size_ratio: group size ``G = ceil(n_seg * ratio)`` per segment, in (0, 1].
        group_size: a fixed ``G >= 1`` instead of the ratio (SFT on mixed lengths).
        num_sink_tokens: the first ``s >= 0`` tokens of each segment are visible to every query.
        shifted_head_ratio: fraction in [0, 1] of query heads (the last ``ceil(ratio * Hq)``)
            whose groups are shifted by ``G // 2``.
        eval_mode: attention when ``module.training`` is False: ``"full"`` (dense causal) or ``"sf"``.
        backend: ``"auto"``: flash-attn varlen on CUDA fp16/bf16 when installed; otherwise on CUDA
            ``flex_attention`` with the SF block mask when it can run the call (no dropout, head
            dimension >= 16, triton present); otherwise grouped SDPA (on the CPU always the grouped
            SDPA / CPU flash paths). ``"sdpa"``, ``"flash_attn"`` or ``"flex"`` force one backend
            (``"flex"`` on the CPU: forward only, as torch has no CPU flex backward).
    """

    group_size_ratio: float = 0.25
    group_size: int | None = None
    num_sink_tokens: int = 4
    shifted_head_ratio: float = 0.5
    eval_mode: str = "full"
    backend: str = "auto"

    def __post_init__(self) -> None:
        ratio = self.group_size_ratio
        if not is_number(ratio) or not 0 < ratio <= 1:
            raise ValueError(f"group_size_ratio must be a number in (0, 1], got {ratio!r}")
        if self.group_size is not None and (not is_int(self.group_size) or self.group_size < 1):
            raise ValueError(f"group_size must be None or an int >= 1, got {self.group_size!r}")
        if not is_int(self.num_sink_tokens) or self.num_sink_tokens < 0:
            raise ValueError(f"num_sink_tokens must be an int >= 0, got {self.num_sink_tokens!r}")
        shifted = self.shifted_head_ratio
        if not is_number(shifted) or not 0 <= shifted <= 1:
            raise ValueError(f"shifted_head_ratio must be a number in [0, 1], got {shifted!r}")
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {self.eval_mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> SFAttentionConfig:
        """Builds from a (possibly partial) dict; unknown keys raise ``ValueError``."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown sf_attention parameter(s) {unknown}; allowed: {sorted(known)}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def group_sizes_for(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(S,)`` group size ``G`` of segments of ``lengths`` tokens: the fixed ``group_size``, or
        ``ceil(length * group_size_ratio)`` (never below 1; no float round-up past a whole number)."""
        if self.group_size is not None:
            return torch.full_like(lengths, self.group_size)
        return torch.ceil(lengths.double() * self.group_size_ratio - _EPS).long().clamp_min(1)

    def group_size_for(self, segment_length: int) -> int:
        """``G`` for one segment of ``segment_length`` tokens (:meth:`group_sizes_for`)."""
        return int(self.group_sizes_for(torch.tensor([segment_length]))[0])

    def num_shifted_heads(self, num_query_heads: int) -> int:
        """How many of the last query heads use shifted groups: ``ceil(ratio * Hq)``."""
        return math.ceil(num_query_heads * self.shifted_head_ratio - _EPS)


def config_of(model_or_config: Any) -> Any:
    """The config of a model, or the config itself; ``TypeError`` for anything else."""
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "to_dict"):
        raise TypeError(
            "model_or_config must be a transformers model or PreTrainedConfig, "
            f"got {type(model_or_config).__name__}"
        )
    return config


def configure_sf_attention(model_or_config: Any, **params: Any) -> SFAttentionConfig:
    """Validates ``params`` and stores them on ``config.sf_attention``.

    Settings already on the config are kept unless overridden, so
    ``configure_sf_attention(model, num_sink_tokens=0)`` changes only the sink count.
    Sub-configs (``config.get_text_config()`` of multimodal models) get the same dict,
    because their attention modules read their own config.

    Returns:
        The resulting :class:`SFAttentionConfig`.

    Raises:
        ValueError: a value is out of range or a key is unknown; the message names it.
    """
    config = config_of(model_or_config)
    merged = {**(getattr(config, CONFIG_ATTRIBUTE, None) or {}), **params}
    settings = SFAttentionConfig.from_dict(merged)
    stored = settings.to_dict()
    setattr(config, CONFIG_ATTRIBUTE, stored)
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        text_config = get_text_config()
        if text_config is not config:
            setattr(text_config, CONFIG_ATTRIBUTE, dict(stored))
    return settings


def sf_config_from(config: Any) -> SFAttentionConfig:
    """Reads the settings stored on a model config (defaults when absent)."""
    return SFAttentionConfig.from_dict(getattr(config, CONFIG_ATTRIBUTE, None))
