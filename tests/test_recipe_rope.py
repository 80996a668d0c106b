"""``extend_context``: linear RoPE position interpolation, per family, against plain RoPE."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import hf_sinklora
from hf_sinklora import extend_context, rope_factor

from .recipe_models import COMMON, FAMILIES, gemma3_config

TARGET = 200  # ceil(200 / 64) = 4
FACTOR = 4.0


def _rotary(model):
    return next(m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding"))


def _rope_dict(config):
    return dict(config.rope_parameters)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_extend_context_interpolates_positions(family, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[family]())
    original = AutoModelForCausalLM.from_config(FAMILIES[family]())
    before = _rope_dict(model.config)
    assert extend_context(model, TARGET) is model

    rope = model.config.rope_parameters
    assert model.config.max_position_embeddings == TARGET
    assert rope_factor(model) == FACTOR
    assert rope["rope_theta"] == before["rope_theta"]
    if "partial_rotary_factor" in before:  # GPT-NeoX (rotary_pct=0.5), Phi3
        assert rope["partial_rotary_factor"] == before["partial_rotary_factor"]
    if family == "phi3":  # Phi3's config accepts only default/longrope: linear PI in longrope form
        assert rope["rope_type"] == "longrope" and rope["attention_factor"] == 1.0
        assert set(rope["short_factor"]) == set(rope["long_factor"]) == {FACTOR}
    else:
        assert rope == {**before, "rope_type": "linear", "factor": FACTOR}

    # Interpolation, checked on the rotary module: position p now rotates like p / 4 did before.
    x = torch.zeros(1, 1, 8)
    positions = torch.arange(TARGET)[None]
    cos, sin = _rotary(model)(x, positions)
    want_cos, want_sin = _rotary(original)(x, positions.float() / FACTOR)
    torch.testing.assert_close(cos, want_cos, atol=2e-6, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=2e-6, rtol=0)
    assert not torch.allclose(cos, _rotary(original)(x, positions)[0])

    # The scaling is in the saved config: a reload computes the same logits.
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.rope_parameters == rope
    input_ids = torch.randint(3, COMMON["vocab_size"], (1, 150), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits)


def test_extend_config_only_and_idempotence():
    config = FAMILIES["llama"]()
    extend_context(config, 1000)  # ceil(1000 / 64) = 16
    assert config.rope_parameters["factor"] == 16.0 and config.max_position_embeddings == 1000
    extend_context(config, 1000)  # within the new length: nothing changes
    assert config.rope_parameters["factor"] == 16.0 and config.max_position_embeddings == 1000
    assert config.original_max_position_embeddings == 64  # recorded: max_position_embeddings no longer tells it
    extend_context(config, 1024)  # 16 * 64 >= 1024: still x16
    assert config.rope_parameters["factor"] == 16.0 and config.max_position_embeddings == 1024
    extend_context(config, 1025)  # x17 of the pre-training length, not x16 * ceil(1025 / 1024)
    assert config.rope_parameters["factor"] == 17.0


def _smallest_factor(target: int, pretraining_length: float) -> int:
    """Reference for the rule, by enumeration: the smallest whole f with f * length >= target."""
    f = 1
    while f * pretraining_length < target:
        f += 1
    return f


# (factor in force, max_position_embeddings, original_length argument, target, pretraining length)
EXISTING_LINEAR = [
    (2.0, 128, 64, 500, 64),     # x2 model, original_length=64 -> x8 (compounding gave x16)
    (3.0, 192, None, 200, 64),   # x3 at 192 positions -> 200 needs x4 of the 64 (compounding gave x6)
    (2.0, 128, None, 500, 64),   # x2 at 128: pre-trained on 64 -> x8
    (4.0, 256, None, 250, 64),   # already covered by x4: unchanged
    (2.5, 100, None, 130, 40),   # fractional factor in force -> x4 (4 * 40 >= 130)
    (1.0, 64, None, 65, 64),     # plain RoPE: ceil(65 / 64) = 2
]


@pytest.mark.parametrize("factor,max_positions,original_length,target,pretraining", EXISTING_LINEAR)
def test_existing_linear_factor_follows_one_rule(factor, max_positions, original_length, target, pretraining):
    rope = {"rope_type": "linear", "factor": factor, "rope_theta": 5e5}
    config = LlamaConfig(**{**COMMON, "max_position_embeddings": max_positions}, rope_parameters=dict(rope))
    extend_context(config, target, original_length=original_length)
    want = max(float(_smallest_factor(target, pretraining)), factor)  # a factor in force is never lowered
    assert config.rope_parameters == {**rope, "factor": want}
    assert rope_factor(config) * pretraining >= target
    assert config.max_position_embeddings == max(target, max_positions)


def test_phi3_longrope_form_follows_the_same_rule():
    """Phi3 records its pre-training length: extending again re-derives the factor from it."""
    config = FAMILIES["phi3"]()  # original_max_position_embeddings = 64
    extend_context(config, 200)
    assert rope_factor(config) == 4.0
    extend_context(config, 500)  # 8 * 64 >= 500; compounding x4 by ceil(500 / 200) gave x12
    assert rope_factor(config) == 8.0 and config.rope_parameters["rope_type"] == "longrope"
    assert config.max_position_embeddings == 500


def test_gemma3_per_layer_type_follows_the_same_rule():
    config = gemma3_config()
    extend_context(config, 200)
    extend_context(config, 500)
    assert rope_factor(config) == {"full_attention": 8.0, "sliding_attention": 1.0}


def test_original_length_override():
    config = FAMILIES["mistral"]()
    config.max_position_embeddings = 32768  # overstated; pre-trained on 64 positions
    extend_context(config, 256, original_length=64)
    assert config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == 32768  # never lowered


def test_target_within_length_leaves_any_rope_type_alone():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 5e5}
    config = LlamaConfig(**{**COMMON, "max_position_embeddings": 512}, rope_parameters=dict(rope))
    extend_context(config, 512)
    assert config.rope_parameters == rope and config.max_position_embeddings == 512


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 5e5},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1e4},
    {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4},
])
def test_rope_types_that_cannot_be_combined(rope):
    config = LlamaConfig(**COMMON, rope_parameters=dict(rope))
    with pytest.raises(ValueError, match=f"rope_type '{rope['rope_type']}' cannot be combined"):
        extend_context(config, 4096)
    assert config.rope_parameters["rope_type"] == rope["rope_type"]  # untouched


def test_no_rope_family_is_refused():
    with pytest.raises(ValueError, match="'gpt2' has no rotary position embeddings"):
        extend_context(GPT2Config(n_layer=1, n_embd=32, n_head=2), 4096)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "4096", True, None])
def test_bad_target_length(bad):
    with pytest.raises(ValueError, match="target_length must be an int >= 1"):
        extend_context(FAMILIES["llama"](), bad)


def test_bad_original_length_and_type():
    with pytest.raises(ValueError, match="original_length must be an int >= 1"):
        extend_context(FAMILIES["llama"](), 100, original_length=0)
    with pytest.raises(TypeError, match="model_or_config"):
        extend_context({"max_position_embeddings": 64}, 100)


def test_per_layer_type_rope_scales_global_layers_only():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(gemma3_config())
    original = AutoModelForCausalLM.from_config(gemma3_config())
    before = _rope_dict(model.config)
    extend_context(model, TARGET)
    rope = model.config.rope_parameters
    assert rope["full_attention"] == {**before["full_attention"], "rope_type": "linear", "factor": FACTOR}
    assert rope["sliding_attention"] == before["sliding_attention"]  # windowed layers: distances < window
    assert rope_factor(model) == {"full_attention": FACTOR, "sliding_attention": 1.0}
    x, positions = torch.zeros(1, 1, 8), torch.arange(TARGET)[None]
    cos, _ = _rotary(model)(x, positions, "full_attention")
    want, _ = _rotary(original)(x, positions.float() / FACTOR, "full_attention")
    torch.testing.assert_close(cos, want, atol=2e-6, rtol=0)
    torch.testing.assert_close(_rotary(model)(x, positions, "sliding_attention")[0],
                               _rotary(original)(x, positions, "sliding_attention")[0])


def test_exported_from_package():
    assert hf_sinklora.extend_context is extend_context
