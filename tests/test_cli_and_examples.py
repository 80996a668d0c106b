"""The demo command and the example scripts run as documented, on tiny models."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, LlamaConfig

import hf_sinklora
from hf_sinklora.cli import main
from hf_sinklora.data import chunk_token_ids, stdlib_source_files, train_bpe_tokenizer
from hf_sinklora.data.sources import load_texts
from hf_sinklora.experiment.long_range import FINETUNING_MIXTURE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(load_texts(stdlib_source_files(limit=12)), vocab_size=400)


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports(tmp_path, capsys):
    """The built-in demo, shrunk: stdlib corpus, two-phase base pretrained then cached, 4x extension
    on the long-range mixture, passkey / long-range perplexity / evicting caches, outputs."""
    out, cache = tmp_path / "demo", tmp_path / "cache"
    argv = ["demo", "--output-dir", str(out), "--cache-dir", str(cache), "--induction-steps", "2",
            "--pretrain-steps", "3", "--finetune-steps", "2", "--batch-size", "1", "--eval-tokens", "1500",
            "--passkey-trials", "1", "--long-range-docs", "2", "--generate-tokens", "4", "--h2o-prompt-tokens", "600",
            "--corpus-files", "40"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base"]["from_cache"] is False and summary["extension"]["target_length"] == 512
    assert summary["data"] == "Python standard library sources"
    losses = summary["base"]["pretrain_losses"]
    assert len(losses["induction"]) == 2 and len(losses["mixture"]) == 3  # both phases ran
    assert summary["extension"]["rows"] == 2 and summary["extension"]["mixture"] == FINETUNING_MIXTURE
    quality = summary["quality"]
    assert summary["full_attention_reference"]["attention"] == "sdpa" and summary["extension"]["attention"] == "sf_attention"
    for name in ("before", "after", "full_reference"):
        assert quality[name]["ppl"] > 1 and quality[name]["long_range_ppl"] > 1 and quality[name]["long_range_tokens"] > 0
        assert set(quality[name]["passkey"]) == {"248", "504"}  # half and all of 512, minus room for the answer
        assert all(cell["prompts"] == 5 for cell in quality[name]["passkey"].values())
    assert set(quality["base_passkey"]) == {"120"} and quality["base_passkey"]["120"]["prompts"] == 5  # base at L
    assert set(summary["h2o"]["passkey"]) == {"after", "full_reference"}  # both fine-tuned models
    for caches in summary["h2o"]["passkey"].values():
        assert set(caches["h2o"]) == set(caches["streaming"]) == {"504"} and caches["prefill_chunk_size"] == 31
    assert (out / "full-attention-reference" / "adapter_model.safetensors").exists()
    h2o = summary["h2o"]
    assert h2o["prompt_tokens"] == 600 and h2o["budget_tokens"] == 150 and h2o["generated_tokens"] == 4
    assert h2o["h2o"]["kv_bytes"] < h2o["full"]["kv_bytes"]
    assert (out / "summary.png").stat().st_size > 10_000
    card = ModelCard.load(out / "adapter" / "README.md")
    assert "sinklora" in card.data.tags and "H2OCache" in card.text
    record = json.loads((out / "adapter" / "sinklora_recipe.json").read_text())  # measurements go into the card
    assert {(r["metric_type"], r["metric_value"]) for r in record["eval_results"]} == {
        ("perplexity", round(quality["after"]["ppl"], 3)),
        *(("accuracy", cell["accuracy"]) for cell in quality["after"]["passkey"].values())}
    assert "| perplexity on Python standard library sources (held out) (512-token windows) |" in card.text
    assert str(out / "adapter") != json.loads((out / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] and Path(summary["base"]["path"]).is_absolute()
    reloaded = hf_sinklora.load_model(out / "adapter")
    assert reloaded.config.rope_parameters["factor"] == 4.0 and reloaded.config.max_position_embeddings == 512
    for line in ("held-out ppl @512", "long-range ppl @512", "H2OCache(150)", "StreamingLLM", "  504 tokens",
                 "full-attention LoRA+", "  base at 120 tokens"):
        assert line in printed

    assert main(argv) == 0  # the second run loads the base from the cache
    assert json.loads((out / "summary.json").read_text())["base"]["from_cache"] is True


@pytest.mark.slow
def test_demo_on_a_given_checkpoint_and_dataset(tmp_path, tokenizer, capsys):
    """``--model`` + ``--dataset``: no pretraining; the context is 4x the checkpoint's."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    books = tmp_path / "books"
    books.mkdir()
    for index, text in enumerate(load_texts(stdlib_source_files(limit=10))):
        (books / f"doc{index}.txt").write_text(text)
    out = tmp_path / "out"
    assert main(["demo", "--model", str(base), "--dataset", str(books), "--output-dir", str(out),
                 "--finetune-steps", "2", "--batch-size", "1", "--eval-tokens", "1200", "--passkey-trials", "1",
                 "--generate-tokens", "3", "--h2o-prompt-tokens", "300", "--no-full-attention-reference"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "full_reference" not in summary["quality"] and summary["full_attention_reference"] is None
    assert not (out / "full-attention-reference").exists()
    assert summary["base"] == {"path": str(base), "from_cache": None, "context": 64, "pretrain_losses": {}}
    assert summary["extension"]["target_length"] == 256 and summary["data"] == str(books)
    assert summary["h2o"]["budget_tokens"] == 75
    assert "(from the cache)" not in capsys.readouterr().out


def test_demo_rejects_bad_settings(tmp_path):
    for bad in (["--finetune-steps", "0"], ["--h2o-budget", "1.5"], ["--target-length", "8"], ["--induction-steps", "-1"],
                ["--long-range-docs", "0"], ["--lora-r", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", "--output-dir", str(tmp_path), *bad])
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
    text.write_text("\n".join(load_texts(stdlib_source_files(limit=3))))
    out = tmp_path / "out"
    argv = ["finetune_sf_attention.py", "--model", str(base), "--text-files", str(text), "--seq-len", "64",
            "--max-steps", "3", "--sink-tokens", "2", "--output-dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLES / "finetune_sf_attention.py"), run_name="__main__")
    trained = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sf_attention")
    assert trained.config.sf_attention["num_sink_tokens"] == 2


def test_log_lines_are_not_glued_to_progress_bars(capsys):
    """Inside the CLI, a log line written while a bar is shown starts on its own line."""
    import logging

    from tqdm import tqdm

    from hf_sinklora.cli import logs_beside_progress_bars

    logger = logging.getLogger("hf_sinklora.test_bars")
    handler = logging.StreamHandler()  # stderr, as basicConfig sets it up
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with logs_beside_progress_bars():
            bar = tqdm(total=2, desc="bar", mininterval=0)
            bar.update(1)
            logger.info("halfway")
            bar.update(1)
            bar.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")]
    assert "INFO halfway" in lines, lines
