"""The public names, and an ``import hf_sinklora`` that stays light (no peft, trl or datasets)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hf_sinklora

PUBLIC = ["extend_context", "rope_factor", "sinklora_lora_config", "find_trainable_modules", "load_sft_dataset",
          "SinkLoRATrainer", "save_sinklora_files", "load_model", "merge_adapter", "push_adapter",
          "write_model_card", "configure_sf_attention", "SFAttentionConfig"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names(name):
    assert name in hf_sinklora.__all__
    assert callable(getattr(hf_sinklora, name))


def test_unknown_name():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hf_sinklora.nope  # noqa: B018


def test_import_is_light_and_registers_attention():
    code = ("import sys, hf_sinklora, transformers\n"
            "heavy = sorted(m for m in ('trl', 'peft', 'datasets') if m in sys.modules)\n"
            "print(heavy, 'sf_attention' in transformers.AttentionInterface._global_mapping)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[] True"
