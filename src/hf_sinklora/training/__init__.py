"""The SinkLoRA recipe: RoPE interpolation, LoRA+ config, SFT data, ``SinkLoRATrainer``, CLI.

Names are imported on first use, so ``import hf_sinklora`` does not pull in peft or trl.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "extend_context": ".rope",
    "rope_factor": ".rope",
    "sinklora_lora_config": ".lora",
    "find_trainable_modules": ".lora",
    "TrainableModules": ".lora",
    "load_sft_dataset": ".data",
    "to_sft_format": ".data",
    "SinkLoRATrainer": ".trainer",
    "save_sinklora_files": ".trainer",
    "TrainSettings": ".recipe",
    "run_training": ".recipe",
    "build_trainer": ".recipe",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
