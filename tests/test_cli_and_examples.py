"""The demo command and the example scripts run as documented, on tiny models."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

import hf_sinklora  # noqa: F401
from hf_sinklora.cli import main
from hf_sinklora.data import chunk_token_ids, stdlib_source_files, train_bpe_tokenizer
from hf_sinklora.data.local_corpus import read_texts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(read_texts(stdlib_source_files(limit=12)), vocab_size=400)


def test_demo_trains_and_reports(tmp_path, capsys):
    code = main(["demo", "--output-dir", str(tmp_path), "--steps", "6", "--seq-len", "64",
                 "--batch-size", "2", "--train-files", "6", "--eval-files", "2", "--vocab-size", "400"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["group_size"] == 16 and summary["sf_attention"]["num_sink_tokens"] == 4
    assert summary["eval_perplexity_after"] < summary["eval_perplexity_before"]
    assert "eval ppl (full attn)" in capsys.readouterr().out
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="sf_attention")
    assert reloaded.config.sf_attention["group_size_ratio"] == 0.25


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output-dir", str(tmp_path), "--steps", "0"])
    assert exit_info.value.code == 2


def test_tokenizer_and_rows(tokenizer):
    rows = chunk_token_ids(tokenizer, ["def f(x):\n    return x\n" * 50], 32)
    assert rows and all(len(r) == 32 for r in rows)
    assert tokenizer.decode(tokenizer("import os")["input_ids"]) == "import os"


def test_finetune_example_runs_on_a_local_checkpoint(tmp_path, tokenizer, monkeypatch):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(read_texts(stdlib_source_files(limit=3))))
    out = tmp_path / "out"
    argv = ["finetune_sf_attention.py", "--model", str(base), "--text-files", str(text), "--seq-len", "64",
            "--max-steps", "3", "--sink-tokens", "2", "--output-dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "finetune_sf_attention.py"), run_name="__main__")
    trained = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sf_attention")
    assert trained.config.sf_attention["num_sink_tokens"] == 2
