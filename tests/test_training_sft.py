"""TRL's SFTTrainer with SF-Attn: packed rows equal padded rows, the Python API, plain SFTTrainer use."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig
from trl import SFTConfig, SFTTrainer

import hf_sinklora
from hf_sinklora import SinkLoRATrainer, configure_sf_attention, extend_context, load_sft_dataset, sinklora_lora_config


def _sft_args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "trainer"), report_to="none", activation_checkpointing=False, bf16=False,
                    use_cpu=True, save_strategy="no", logging_steps=1, seed=0)
    return SFTConfig(**{**defaults, **kwargs})


def _token_losses(model, batch):
    """Per-token next-token losses (fp64) of a collated batch, with the labels' masking."""
    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).double(), labels[:, 1:].reshape(-1), reduction="none",
        ignore_index=-100)
    return losses[labels[:, 1:].reshape(-1) != -100]


def test_packed_rows_give_the_same_per_token_losses(recipe_workspace, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(recipe_workspace["base"])
    model = AutoModelForCausalLM.from_pretrained(recipe_workspace["base"], attn_implementation="sf_attention",
                                                 dtype=torch.float64)
    extend_context(model, 320)
    configure_sf_attention(model, group_size_ratio=0.25, num_sink_tokens=2)
    records = [json.loads(line) for line in recipe_workspace["train"].read_text().splitlines()[:8]]
    data = load_sft_dataset(records)

    def losses(packing: bool, train: bool):
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=data, args=_sft_args(
            tmp_path, per_device_train_batch_size=4, max_length=512, packing=packing, padding_free=packing))
        model.train(train)
        batches = list(trainer.get_train_dataloader())
        if packing:  # padding-free: one row, positions restart per example, no attention mask
            assert all(b["input_ids"].shape[0] == 1 and "attention_mask" not in b for b in batches)
            assert sum(int((b["position_ids"] == 0).sum()) for b in batches) == len(records)
        else:
            assert all("attention_mask" in b for b in batches)
        with torch.no_grad():
            return torch.cat([_token_losses(model, b) for b in batches]).sort().values, trainer

    packed, _ = losses(packing=True, train=True)
    padded, trainer = losses(packing=False, train=True)
    # the independent side: each example alone, no padding, no packing
    model.train()
    with torch.no_grad():
        alone = torch.cat([
            _token_losses(model, {"input_ids": torch.tensor([ex["input_ids"]]), "labels": torch.tensor([ex["labels"]])})
            for ex in trainer.train_dataset]).sort().values

    # loss on the responses only: as many targets as completion tokens (response + EOS)
    completion_tokens = 0
    for record in data:
        prompt = tokenizer(record["prompt"])["input_ids"]
        full = tokenizer(record["prompt"] + record["completion"] + tokenizer.eos_token)["input_ids"]
        assert full[: len(prompt)] == prompt
        completion_tokens += len(full) - len(prompt)
    assert len(alone) == len(packed) == len(padded) == completion_tokens

    torch.testing.assert_close(packed, alone, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(padded, alone, atol=1e-9, rtol=1e-9)
    # and SF-Attn was really on: eval mode (full causal attention) gives other losses
    full_attention, _ = losses(packing=True, train=False)
    assert (full_attention - packed).abs().max() > 1e-4


def _neox_base(tmp_path, tokenizer):
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=32, rotary_pct=0.5, initializer_range=0.1,
                           tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "neox")
    tokenizer.save_pretrained(tmp_path / "neox")
    return tmp_path / "neox"


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def _chats(count: int = 12):
    return [{"messages": [
        {"role": "user", "content": f"def f{i}(x):\n    return x * {i}\n" * 3 + "What does it multiply by?"},
        {"role": "assistant", "content": f"It multiplies by {i}."},
    ]} for i in range(count)]


def test_python_api_packed_chat_training_saves_and_reloads(recipe_workspace, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(recipe_workspace["base"])
    tokenizer.chat_template = CHAT_TEMPLATE
    base = _neox_base(tmp_path, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base, attn_implementation="sf_attention")
    extend_context(model, 128)  # x4; GPT-NeoX keeps partial_rotary_factor 0.5
    configure_sf_attention(model, num_sink_tokens=3)
    data = load_sft_dataset(_chats())
    trainer = SinkLoRATrainer(
        model=model, processing_class=tokenizer, train_dataset=data,
        args=_sft_args(tmp_path, max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, max_length=128,
                       packing=True),
        peft_config=sinklora_lora_config(model, r=4, alpha=8), dataset_names=["chats"],
    )
    # loss on the assistant reply only: the prompt (user turn + "<s>assistant\n") is masked
    assert trainer.padding_free and trainer.completion_only_loss
    expected = set()
    for record in data:
        prompt = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True,
                                             return_dict=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        expected.add((tuple(full), tuple([-100] * len(prompt) + full[len(prompt):])))
    segments = set()
    for row in trainer.train_dataset:  # packed rows: cut them back into their examples
        start = 0
        for length in row["seq_lengths"]:
            segments.add((tuple(row["input_ids"][start:start + length]), tuple(row["labels"][start:start + length])))
            start += length
    assert segments == expected
    full_ids = list(next(iter(expected))[0])

    trainer.train()
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    config = json.loads((out / "config.json").read_text())["base_config"]  # inside the sinklora_adapter config
    assert config["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0,
                                         "partial_rotary_factor": 0.5}
    assert config["sf_attention"]["num_sink_tokens"] == 3
    assert "chats" in (out / "README.md").read_text()

    trained = trainer.model.eval()
    reloaded = hf_sinklora.load_model(out)
    input_ids = torch.tensor([full_ids * 3])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids).logits, trained(input_ids).logits, atol=1e-6, rtol=1e-6)
        base_logits = AutoModelForCausalLM.from_pretrained(base)(input_ids).logits
    assert (reloaded(input_ids).logits - base_logits).abs().max() > 1e-3


def test_plain_sfttrainer_with_model_init_kwargs(recipe_workspace, tmp_path, monkeypatch):
    """The stock path: a model id, SFTConfig(model_init_kwargs=...), peft_config from the recipe."""
    calls = []
    original = transformers.AttentionInterface._global_mapping["sf_attention"]

    def spy(module, *args, **kwargs):
        calls.append(module.training)
        return original(module, *args, **kwargs)

    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "sf_attention", spy)
    base = str(recipe_workspace["base"])
    records = [json.loads(line) for line in recipe_workspace["train"].read_text().splitlines()[:8]]
    trainer = SFTTrainer(
        model=base,
        args=_sft_args(tmp_path, max_steps=2, per_device_train_batch_size=2, max_length=320,
                       model_init_kwargs={"attn_implementation": "sf_attention"}),
        train_dataset=load_sft_dataset(records),
        peft_config=sinklora_lora_config(base),  # names read from an empty-weights copy of the model id
    )
    assert trainer.model.config._attn_implementation == "sf_attention"
    trainer.train()
    assert calls and all(calls)  # every attention call was SF-Attn in training mode
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable)


def test_all_prompts_too_long_is_a_clear_error(recipe_workspace, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(recipe_workspace["base"])
    model = AutoModelForCausalLM.from_pretrained(recipe_workspace["base"], attn_implementation="sf_attention")
    records = [json.loads(line) for line in recipe_workspace["train"].read_text().splitlines()[:4]]
    with pytest.raises(ValueError, match="no training example keeps any response token within max_length=32"):
        SinkLoRATrainer(model=model, processing_class=tokenizer, train_dataset=load_sft_dataset(records),
                        args=_sft_args(tmp_path, max_length=32))
