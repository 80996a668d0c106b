"""Adapter directories that plain transformers loads: ``AutoModelForCausalLM.from_pretrained(dir)``
and ``pipeline("text-generation", model=dir)`` after ``import hf_sinklora``.

transformers' own peft integration loads the base named in ``adapter_config.json`` with the
*base's* config, which loses the RoPE scaling the adapter was trained with. So the
``config.json`` beside a SinkLoRA adapter is a :class:`SinkLoRAAdapterConfig` (``model_type
"sinklora_adapter"``) that carries the base config, RoPE scaling and ``sf_attention`` settings
included; ``import hf_sinklora`` registers it with ``AutoConfig`` and its loader with
``AutoModelForCausalLM`` (transformers' extension points for custom models), and the loader is
:func:`hf_sinklora.load_model`.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

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


class SinkLoRAAdapterForCausalLM(PreTrainedModel):
    """Only a loader: ``from_pretrained`` returns :func:`hf_sinklora.load_model` of the directory
    (a ``peft.PeftModel`` of the base with the adapter, in eval mode)."""

    config_class = SinkLoRAAdapterConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        from .loading import load_model

        if model_args:
            raise ValueError("a SinkLoRA adapter directory takes no positional model arguments")
        kwargs.pop("config", None)  # this wrapper: load_model reads the base config itself
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        kwargs.pop("adapter_kwargs", None)
        return load_model(pretrained_model_name_or_path, **kwargs)


def register() -> None:
    """Registers the adapter config and loader with ``AutoConfig`` / ``AutoModelForCausalLM`` (idempotent)."""
    AutoConfig.register(ADAPTER_MODEL_TYPE, SinkLoRAAdapterConfig, exist_ok=True)
    AutoModelForCausalLM.register(SinkLoRAAdapterConfig, SinkLoRAAdapterForCausalLM, exist_ok=True)
