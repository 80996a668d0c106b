"""benchmarks/retrieval_probes.py: the loss it shares with the base's pretraining, the RoPE-scale-augmented base and its argument checks
(the probes themselves train the demo's base for ~25 minutes, so they run as a benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_sinklora.data.local_corpus import stdlib_source_files
from hf_sinklora.data.sources import load_texts
from hf_sinklora.experiment.base_model import row_mean_target_loss

from .eval_helpers import english_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import retrieval_probes  # noqa: E402


def test_row_mean_target_loss_averages_rows_and_skips_unlabelled_ones():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, -100, 5], [-100, -100, -100, -100]])
    nll = lambda row, t: -torch.log_softmax(logits[row, t - 1], -1)[labels[row, t]]  # noqa: E731
    expected = ((nll(0, 1) + nll(0, 2)) / 2 + nll(1, 3)) / 2
    torch.testing.assert_close(row_mean_target_loss(logits, labels), expected)


def test_scale_augmented_base_saves_a_trained_copy_with_the_base_rope(tmp_path):
    tokenizer = english_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)
    base = AutoModelForCausalLM.from_config(config)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    losses = retrieval_probes.scale_augmented_base(
        tmp_path / "base", load_texts(stdlib_source_files(limit=8)), tmp_path / "augmented", steps=2,
        factors=[4.0], context=128, learning_rate=1e-2, seed=0)
    assert set(losses) == {"4.0"} and losses["4.0"] > 0
    augmented = AutoModelForCausalLM.from_pretrained(tmp_path / "augmented")
    # the augmentation is a training-time trick: the saved model has the base's positions (no scaling)
    assert augmented.config.rope_scaling == base.config.rope_scaling
    torch.testing.assert_close(augmented.model.rotary_emb.inv_freq, base.model.rotary_emb.inv_freq)
    assert not torch.equal(augmented.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_bad_probe_names_are_refused(capsys):
    with pytest.raises(SystemExit):
        retrieval_probes.parse_args(["--probes", "sf:nowhere"])
    assert "--probes" in capsys.readouterr().err
    assert retrieval_probes.parse_args(["--probes", "full:text,sf:in_group"]).probes == ["full:text", "sf:in_group"]
