"""``examples/generate_with_h2o.py`` runs as documented on a tiny local checkpoint."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_sinklora.data import stdlib_source_files, train_bpe_tokenizer
from hf_sinklora.data.sources import load_texts
from hf_sinklora.evaluation.timing import timed_generate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate_with_h2o.py"


def test_generate_with_h2o_example(tmp_path, capsys):
    texts = load_texts(stdlib_source_files(limit=6))
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("\n".join(texts))

    example = runpy.run_path(str(EXAMPLE), run_name="example")
    result = example["main"](["--model", str(base), "--prompt-file", str(prompt), "--prompt-tokens", "300",
                              "--budget", "0.25", "--max-new-tokens", "6", "--prefill-chunk-size", "64"])
    full, h2o = result["full"], result["h2o"]
    assert full.new_tokens == h2o.new_tokens == 6
    # 75 kept (+1 spare decode slot) of 305 tokens per layer and KV head
    assert h2o.kv_bytes * 305 == full.kv_bytes * 76
    assert "H2OCache continuation:" in capsys.readouterr().out


def test_timed_generate_needs_one_prompt():
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="batch of 1"):
        timed_generate(model, torch.zeros(2, 4, dtype=torch.long), cache=None)
