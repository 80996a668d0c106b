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

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .adapter_config import ADAPTER_MODEL_TYPE, SinkLoRAAdapterConfig
from .loading import load_model

__all__ = ["ADAPTER_MODEL_TYPE", "SinkLoRAAdapterConfig", "SinkLoRAAdapterForCausalLM", "register"]

class SinkLoRAAdapterForCausalLM(PreTrainedModel):
    """Only a loader: ``from_pretrained`` returns :func:`hf_sinklora.load_model` of the directory
    (a ``peft.PeftModel`` of the base with the adapter, in eval mode)."""

    config_class = SinkLoRAAdapterConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
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
