"""``sinklora_lora_config``: LoRA on attention projections, embeddings + every norm trained, per family."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from hf_sinklora import find_trainable_modules, sinklora_lora_config

from .recipe_models import (
    ATTENTION_NAME,
    ATTENTION_PROJECTIONS,
    EMBEDDING,
    FAMILIES,
    FINAL_NORM,
    LAYER_NORMS,
    PREFIX,
)


def _expected_trainable(family: str, num_layers: int = 2) -> set[str]:
    """Trainable parameter names, written down from the family's module layout."""
    prefix, attn = PREFIX.get(family, "model"), ATTENTION_NAME.get(family, "self_attn")
    root = f"base_model.model.{prefix}"
    names = set()
    for layer in range(num_layers):
        for proj in ATTENTION_PROJECTIONS[family]:
            for ab in ("lora_A", "lora_B"):
                names.add(f"{root}.layers.{layer}.{attn}.{proj}.{ab}.default.weight")
        for norm in LAYER_NORMS[family]:
            norm = norm.replace("self_attn", attn)
            names.add(f"{root}.layers.{layer}.{norm}.modules_to_save.default.weight")
    names.add(f"{root}.{EMBEDDING.get(family, 'embed_tokens')}.modules_to_save.default.weight")
    names.add(f"{root}.{FINAL_NORM.get(family, 'norm')}.modules_to_save.default.weight")
    if family == "gpt_neox":  # LayerNorm has a bias too
        names |= {n.replace(".weight", ".bias") for n in names if "modules_to_save" in n and "embed" not in n}
    return names


@pytest.mark.parametrize("family", list(FAMILIES))
def test_exactly_the_intended_parameters_train(family):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(FAMILIES[family]())
    config = sinklora_lora_config(model, r=4, alpha=8)
    assert isinstance(config, LoraConfig) and config.r == 4 and config.lora_alpha == 8
    assert config.task_type == "CAUSAL_LM"
    assert set(config.target_modules) == set(ATTENTION_PROJECTIONS[family])  # short names suffice here
    peft_model = get_peft_model(model, config)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(family)

    # tied families (Gemma): the LM head is the trained embedding, not a frozen copy
    tied = model.config.tie_word_embeddings
    assert tied == family.startswith("gemma")
    embedding = peft_model.get_input_embeddings()
    head = peft_model.get_output_embeddings()
    if tied:
        assert config.ensure_weight_tying
        assert head.weight is embedding.weight and embedding.weight.requires_grad
    else:
        assert not head.weight.requires_grad

    # LoRA sizes: A (r x in) and B (out x r) of each projection
    for name, module in model.named_modules():
        if name.endswith(tuple(ATTENTION_PROJECTIONS[family])) and hasattr(module, "lora_A"):
            base = module.base_layer
            assert module.lora_A["default"].weight.shape == (4, base.in_features)
            assert module.lora_B["default"].weight.shape == (base.out_features, 4)


def test_names_found_by_inspection():
    model = AutoModelForCausalLM.from_config(FAMILIES["gpt_neox"]())
    found = find_trainable_modules(model)
    assert found.embeddings == ("gpt_neox.embed_in",)
    assert "gpt_neox.final_layer_norm" in found.norms and len(found.norms) == 5
    assert found.attention_projections == tuple(
        f"gpt_neox.layers.{i}.attention.{p}" for i in range(2) for p in ("query_key_value", "dense"))


def test_from_config_or_id_without_weights():
    """A config is enough: names are read from an empty-weights copy."""
    config = sinklora_lora_config(FAMILIES["phi3"]())
    assert set(config.target_modules) == {"qkv_proj", "o_proj"}
    assert set(config.modules_to_save) == {"embed_tokens", "input_layernorm", "post_attention_layernorm", "norm"}


def test_ambiguous_short_names_fall_back_to_full_names():
    """A Linear named like an attention projection outside attention: the short name would catch it too."""
    model = AutoModelForCausalLM.from_config(FAMILIES["llama"]())
    model.model.layers[0].mlp.o_proj = torch.nn.Linear(4, 4)
    config = sinklora_lora_config(model)
    assert "model.layers.0.self_attn.o_proj" in config.target_modules
    assert "model.layers.0.mlp.o_proj" not in config.target_modules
    peft_model = get_peft_model(model, config)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if ".mlp." in n)


def test_switches_and_overrides():
    model = AutoModelForCausalLM.from_config(FAMILIES["llama"]())
    assert sinklora_lora_config(model, train_embeddings=False, train_norms=False).modules_to_save is None
    only_norms = sinklora_lora_config(model, train_embeddings=False)
    assert "embed_tokens" not in only_norms.modules_to_save and "norm" in only_norms.modules_to_save
    config = sinklora_lora_config(model, target_modules=["q_proj"], use_rslora=True)
    assert config.target_modules == {"q_proj"} and config.use_rslora


@pytest.mark.parametrize("kwargs,message", [
    ({"r": 0}, "r must be an int >= 1"),
    ({"r": 2.0}, "r must be an int >= 1"),
    ({"alpha": 0}, "alpha must be a number > 0"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
])
def test_bad_hyper_parameters(kwargs, message):
    model = AutoModelForCausalLM.from_config(FAMILIES["llama"]())
    with pytest.raises(ValueError, match=message):
        sinklora_lora_config(model, **kwargs)


def test_no_attention_found():
    with pytest.raises(ValueError, match="no attention projections found"):
        sinklora_lora_config(torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.Linear(4, 4)))
