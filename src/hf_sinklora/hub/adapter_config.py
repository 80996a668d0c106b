"""``config.json`` of a SinkLoRA adapter directory: the base config it was trained with, carried
under ``model_type "sinklora_adapter"`` (see :mod:`hf_sinklora.hub.auto` for why)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

ADAPTER_MODEL_TYPE = "sinklora_adapter"


class SinkLoRAAdapterConfig(PreTrainedConfig):
    """``config.json`` of a SinkLoRA adapter directory.

    Args:
        base_config: the trained model's config as a dict (``model_type``, ``rope_parameters``,
            ``sf_attention`` ...): what the base is loaded with.
    """

    model_type = ADAPTER_MODEL_TYPE

    def __init__(self, base_config: dict[str, Any] | None = None, **kwargs: Any):
        self.base_config = dict(base_config or {})
        super().__init__(**kwargs)

    @classmethod
    def wrapping(cls, config: PreTrainedConfig) -> SinkLoRAAdapterConfig:
        return cls(base_config=config.to_dict())

    def to_base_config(self) -> PreTrainedConfig:
        """The base model's config, RoPE scaling and ``sf_attention`` settings included."""
        values = dict(self.base_config)
        if "model_type" not in values:
            raise ValueError("this sinklora_adapter config.json holds no base_config.model_type")
        return AutoConfig.for_model(values.pop("model_type"), **values)
