"""SinkLoRATrainer's loss on the CPU (the LM head on scored positions only) equals TRL's fused-head loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hf_sinklora import SinkLoRATrainer, load_sft_dataset, sinklora_lora_config
from hf_sinklora.training import scored_positions as scored_module
from hf_sinklora.training.scored_positions import scored_positions


def test_scored_positions_by_hand():
    labels = torch.tensor([[-100, -100, 7, 8, -100],
                           [-100, 5, -100, -100, -100]])
    positions, shift_labels = scored_positions(labels)
    # position t predicts labels[:, t + 1]: row 0 scores t = 1, 2; row 1 scores t = 0
    assert positions.tolist() == [0, 1, 2]
    assert shift_labels.tolist() == [[-100, 7, 8], [5, -100, -100]]


def test_no_scored_position():
    positions, shift_labels = scored_positions(torch.full((2, 4), -100))
    assert positions.numel() == 0 and shift_labels.shape == (2, 0)


@pytest.fixture
def trainer_and_batch(recipe_workspace, tmp_path):
    """A LoRA SinkLoRATrainer on prompt/completion rows of different lengths (padding, prompts unscored)."""
    tokenizer = AutoTokenizer.from_pretrained(recipe_workspace["base"])
    model = AutoModelForCausalLM.from_pretrained(recipe_workspace["base"], attn_implementation="sf_attention")
    records = [json.loads(line) for line in recipe_workspace["train"].read_text().splitlines()[:4]]
    args = SFTConfig(output_dir=str(tmp_path / "trainer"), report_to="none", use_cpu=True, save_strategy="no",
                     per_device_train_batch_size=4, max_length=320, seed=0)
    trainer = SinkLoRATrainer(model=model, processing_class=tokenizer, train_dataset=load_sft_dataset(records),
                              args=args, peft_config=sinklora_lora_config(model))
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def _loss_grads_metrics(compute_loss, trainer, batch, num_items_in_batch):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = compute_loss(trainer, trainer.model, dict(batch), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("num_items_in_batch", [None, 37])
def test_loss_gradients_and_metrics_equal_trl_fused_head(trainer_and_batch, num_items_in_batch):
    trainer, batch = trainer_and_batch
    trainer.model.train()
    positions, _ = scored_positions(batch["labels"])
    assert 0 < positions.numel() < batch["labels"].shape[1] / 2  # the prompts are not scored: the head skips them
    assert (batch["attention_mask"] == 0).any()  # rows of different lengths: padding is there too

    tokens_before = trainer._total_train_tokens
    ours = _loss_grads_metrics(SinkLoRATrainer.compute_loss, trainer, batch, num_items_in_batch)
    our_tokens = trainer._total_train_tokens - tokens_before
    trl = _loss_grads_metrics(SFTTrainer.compute_loss, trainer, batch, num_items_in_batch)
    trl_tokens = trainer._total_train_tokens - tokens_before - our_tokens

    torch.testing.assert_close(ours[0], trl[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == trl[1].keys() and any("lora_A" in n for n in ours[1])
    for name in trl[1]:
        torch.testing.assert_close(ours[1][name], trl[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert ours[2]["mean_token_accuracy"] == trl[2]["mean_token_accuracy"]
    assert ours[2]["entropy"] == pytest.approx(trl[2]["entropy"], rel=1e-5)
    assert our_tokens == trl_tokens == batch["attention_mask"].sum().item()


def test_outputs_and_devices_with_trl_kernel_go_through_trl(trainer_and_batch, monkeypatch):
    trainer, batch = trainer_and_batch
    calls = []
    original = SFTTrainer.compute_loss

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("return_outputs"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "compute_loss", spy)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
        assert calls == []  # the CPU path: the model's own head and loss
        _, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        assert calls == [True]
        assert outputs.logits.shape[:2] == batch["input_ids"].shape  # every position's logits, as asked
        monkeypatch.setattr(scored_module, "is_triton_available", lambda: True)
        assert scored_module.fused_head_projects_every_position(torch.device("cpu"))
        assert not scored_module.fused_head_projects_every_position(torch.device("cuda"))
        assert trainer._forward_takes_logits_to_keep  # read from the Llama class's forward
        monkeypatch.setattr(trainer, "_forward_takes_logits_to_keep", False)  # e.g. remote code without it
        trainer.compute_loss(trainer.model, dict(batch))
        assert calls == [True, False]
        monkeypatch.setattr(trainer, "_forward_takes_logits_to_keep", True)
        monkeypatch.setattr("hf_sinklora.training.trainer.fused_head_projects_every_position", lambda device: False)
        trainer.compute_loss(trainer.model, dict(batch))
        assert calls == [True, False, False]


def test_a_batch_with_nothing_scored_gives_trl_finite_zero(trainer_and_batch):
    trainer, batch = trainer_and_batch
    unscored = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, unscored)
    assert loss.item() == 0.0


@pytest.mark.parametrize("num_items_in_batch", [None, 37])
def test_a_chunked_head_gives_the_same_loss_gradients_and_metrics(trainer_and_batch, num_items_in_batch, monkeypatch):
    """Long rows run the head and the loss a few positions at a time (issue: 21 GB for one 16k step);
    forced here on short rows with 5-position chunks, against the whole-logits path."""
    from hf_sinklora.training import chunked_head

    trainer, batch = trainer_and_batch
    trainer.model.train()
    whole = _loss_grads_metrics(SinkLoRATrainer.compute_loss, trainer, batch, num_items_in_batch)
    calls = []
    original = chunked_head.chunked_head_loss
    monkeypatch.setattr(chunked_head, "CHUNKED_HEAD_MIN_ELEMENTS", 0)
    monkeypatch.setattr("hf_sinklora.training.trainer.chunked_head_loss",
                        lambda *a, **k: calls.append(1) or original(*a, **{**k, "chunk_elements": 5 * trainer.model.config.vocab_size}))
    chunked = _loss_grads_metrics(SinkLoRATrainer.compute_loss, trainer, batch, num_items_in_batch)
    assert calls, "the chunked head ran"
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    assert chunked[1].keys() == whole[1].keys()
    for name in whole[1]:
        torch.testing.assert_close(chunked[1][name], whole[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert chunked[2]["mean_token_accuracy"] == whole[2]["mean_token_accuracy"]
    assert chunked[2]["entropy"] == pytest.approx(whole[2]["entropy"], rel=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox", "qwen3_gqa_split"])
def test_chunked_head_loss_equals_the_models_own_loss(family):
    """Soft-capped logits (Gemma2), a head named embed_out (GPT-NeoX), tied embeddings: the chunked loss
    and its gradients are the model's own."""
    from hf_sinklora.training.chunked_head import chunked_head_loss, plain_head_model

    from .families import build

    model = build(family, "eager").train()
    assert plain_head_model(model)
    ids = torch.randint(3, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100
    own = model(input_ids=ids, labels=labels).loss
    own_grads = torch.autograd.grad(own, [p for p in model.parameters() if p.requires_grad])
    hidden = getattr(model, model.base_model_prefix)(input_ids=ids).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    scored = targets != -100
    loss, sums = chunked_head_loss(model.get_output_embeddings(), hidden[scored], targets[scored],
                                   softcap=getattr(model.config, "final_logit_softcapping", None),
                                   chunk_elements=7 * model.config.vocab_size)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    # transformers' loss (and so this one) upcasts the logits to float32 whatever the model's dtype
    torch.testing.assert_close(loss, own, rtol=1e-6, atol=1e-7)
    for mine, theirs in zip(grads, own_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)
    assert sums["scored"] == scored.sum()
