"""``hf-sinklora train`` end to end on a tiny model: learning, saved files, card, reload, merge, resume, push.

One CLI run (40 steps, checkpoints at 20 and 40, an eval set, a push to a fake Hub) is shared
by the tests of this module.
"""

from __future__ import annotations

import json
import math
import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import hf_sinklora
from hf_sinklora.cli import main
from hf_sinklora.hub.card import render_model_card
from hf_sinklora.training.recipe import TrainSettings, build_trainer

from .fake_hub import FakeHfApi

TARGET = 320  # 5 x the base's 64 positions
REPO = "tester/sinklora-tiny"


def _argv(ws, out, max_steps=40, extra=()):
    return ["train", "--model", str(ws["base"]), "--dataset", str(ws["train"]), "--eval-dataset", str(ws["eval"]),
            "--target-length", str(TARGET), "--output-dir", str(out), "--max-steps", str(max_steps),
            "--batch-size", "4", "--lr", "1e-2", "--save-steps", "20", "--logging-steps", "5",
            "--sink-tokens", "2", "--group-size-ratio", "0.25", "--seed", "7", *extra]


@pytest.fixture(scope="module")
def cli_run(recipe_workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    FakeHfApi.calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub, "HfApi", FakeHfApi)
        patch.setenv("HF_TOKEN", "hf_fake")  # a push is refused before training without a token
        assert main(_argv(recipe_workspace, out, extra=("--push-to-hub", REPO))) == 0
    return {"out": out, "calls": list(FakeHfApi.calls), **recipe_workspace}


def _eval_inputs(ws):
    tokenizer = AutoTokenizer.from_pretrained(ws["base"])
    records = [json.loads(line) for line in ws["eval"].read_text().splitlines()[:4]]
    texts = [r["instruction"] + "\n" + r["output"] for r in records]
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.slow
def test_loss_goes_down_on_the_long_task(cli_run):
    settings = TrainSettings(model=str(cli_run["base"]), dataset=str(cli_run["train"]),
                             eval_dataset=str(cli_run["eval"]), target_length=TARGET,
                             output_dir=str(cli_run["out"].parent / "before"), batch_size=4)
    before = build_trainer(settings).evaluate()["eval_loss"]  # the untrained model (LoRA B = 0), same pipeline
    # evaluated after training (the card's model-index); about 6.6 -> 1.1 here
    record = json.loads((cli_run["out"] / "sinklora_recipe.json").read_text())
    results = {r["metric_type"]: r["metric_value"] for r in record["eval_results"]}
    assert results["loss"] < 0.5 * before, (before, results)
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-3)
    # local evaluation data is named in the card's text, not in its model-index (which names hub datasets)
    card = ModelCard.load(cli_run["out"] / "README.md")
    assert card.data.eval_results is None
    assert f"| perplexity on eval.jsonl (local file) (eval) | {results['perplexity']} |" in card.text


@pytest.mark.slow
def test_saved_files_are_complete(cli_run):
    out = cli_run["out"]
    for directory in (out, out / "checkpoint-20", out / "checkpoint-40"):
        names = {p.name for p in directory.iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "config.json", "README.md",
                "sinklora_recipe.json", "tokenizer.json", "tokenizer_config.json"} <= names, directory
        wrapper = json.loads((directory / "config.json").read_text())
        assert wrapper["model_type"] == "sinklora_adapter"  # plain transformers loads it after import hf_sinklora
        config = wrapper["base_config"]
        assert config["model_type"] == "llama"
        assert config["rope_parameters"] == {"rope_type": "linear", "factor": 5.0, "rope_theta": 10000.0}
        assert config["max_position_embeddings"] == TARGET
        assert config["sf_attention"]["num_sink_tokens"] == 2 and config["sf_attention"]["group_size_ratio"] == 0.25
        assert config["use_cache"] is True
        adapter = json.loads((directory / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(cli_run["base"])
        assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert set(adapter["modules_to_save"]) >= {"embed_tokens", "input_layernorm", "post_attention_layernorm",
                                                   "norm"}
        assert adapter["ensure_weight_tying"] is True  # the tiny Llama ties its embeddings
    weights = load_file(out / "adapter_model.safetensors")
    assert "base_model.model.model.embed_tokens.weight" in weights
    assert "base_model.model.model.layers.1.post_attention_layernorm.weight" in weights
    assert "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight" in weights
    assert not any(".mlp." in key for key in weights)
    assert {"trainer_state.json", "optimizer.pt", "scheduler.pt"} <= {p.name for p in (out / "checkpoint-20").iterdir()}


@pytest.mark.slow
def test_model_card(cli_run):
    out = cli_run["out"]
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "peft"
    assert {"sinklora", "sf-attention", "long-context"} <= set(data.tags)
    assert data.base_model is None  # a local path is no Hub id: named in the text only
    assert data.datasets is None  # local files: in the text only
    text = card.text
    for needle in ("import hf_sinklora", 'attn_implementation="sf_attention"', "hf_sinklora.load_model(",
                   "H2OCache", "| num_sink_tokens | 2 |", "| factor | 5.0 |", f"| {TARGET} |",
                   "| r | 8 |", "| alpha | 16 |", "`q_proj`", "`embed_tokens`", "`input_layernorm`",
                   "train.jsonl (local file)", "| global_step | 40 |", "transformers 5.", "peft 0.", "trl 1."):
        assert needle in text, needle
    assert "perplexity" in text
    # LoRA r=8 on q,o (64 -> 64) and k,v (64 -> 32) of 2 layers, the 400 x 64 embedding, 5 norms of 64
    hidden, kv, vocab = 64, 32, len(cli_run["tokenizer"])
    trainable = 2 * 8 * (2 * (hidden + hidden) + 2 * (hidden + kv)) + vocab * hidden + 5 * hidden
    base_total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(cli_run["base"]).parameters())
    assert f"| trainable parameters | {trainable:,} (base model: {base_total:,}) |" in text
    # the pushed card names the repo (re-rendered at push time)
    assert f'hf_sinklora.load_model("{REPO}")' in text
    # checkpoints carry our card, not peft's or TRL's generic one
    checkpoint_card = ModelCard.load(out / "checkpoint-20" / "README.md")
    assert "sinklora" in checkpoint_card.data.tags and "| global_step | 20 |" in checkpoint_card.text


def test_card_metadata_names_hub_ids():
    record = json.loads(json.dumps({
        "base_model": "meta-llama/Llama-2-7b-hf", "model_type": "llama",
        "adapter": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj"],
                    "modules_to_save": ["norm"]},
        "trainable_parameters": 10, "total_parameters": 100,
        "rope": {"rope_parameters": {"rope_type": "linear", "factor": 4.0}, "factor": 4.0,
                 "max_position_embeddings": 16384},
        "sf_attention": {"num_sink_tokens": 4}, "datasets": ["Yukang/LongAlpaca-12k", "mine.jsonl (local file)"],
        "training": {}, "framework_versions": {},
        "eval_results": [{"task_type": "text-generation", "dataset_type": "passkey", "dataset_name": "passkey 16k",
                          "metric_type": "accuracy", "metric_value": 0.98}],
    }))
    card = ModelCard(str(render_model_card(record, load_path="me/llama2-sinklora-16k")))
    assert card.data.base_model == "meta-llama/Llama-2-7b-hf"
    assert card.data.datasets == ["Yukang/LongAlpaca-12k"]
    assert card.data.model_name == "llama2-sinklora-16k"
    [result] = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("accuracy", 0.98, "passkey 16k")


def _reference_model(out, base_dir):
    """The adapter applied by hand: W + (alpha / r) B A, saved embeddings and norms (no peft involved)."""
    saved = json.loads((out / "config.json").read_text())["base_config"]  # the trained config, RoPE scaling included
    config = AutoConfig.for_model(saved.pop("model_type"), **saved)
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config, attn_implementation="sdpa").eval()
    adapter = json.loads((out / "adapter_config.json").read_text())
    scale = adapter["lora_alpha"] / adapter["r"]
    weights = load_file(out / "adapter_model.safetensors")
    state = model.state_dict()
    with torch.no_grad():
        for key, value in weights.items():
            name = key.removeprefix("base_model.model.")
            if ".lora_A." in name:
                target = name.replace(".lora_A.weight", ".weight")
                b = weights[key.replace("lora_A", "lora_B")]
                state[target].add_(scale * b @ value)
            elif ".lora_B." not in name:
                state[name].copy_(value)
    return model


@pytest.mark.slow
def test_reload_equals_the_adapter_applied_by_hand(cli_run):
    out = cli_run["out"]
    model = hf_sinklora.load_model(out)
    assert isinstance(model, PeftModel) and not model.training
    assert model.config._attn_implementation == "sf_attention"
    assert model.config.rope_parameters["factor"] == 5.0
    reference = _reference_model(out, cli_run["base"])
    base = AutoModelForCausalLM.from_pretrained(cli_run["base"]).eval()
    inputs = _eval_inputs(cli_run)
    with torch.no_grad():
        got = model(**inputs).logits
        want = reference(**inputs).logits
        untrained = base(**inputs).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-5)
    assert (got[real] - untrained[real]).abs().max() > 0.1  # the adapter changed the model


@pytest.mark.slow
def test_merged_model_equals_adapter_model(cli_run, tmp_path):
    out = cli_run["out"]
    merged = hf_sinklora.merge_adapter(out, tmp_path / "merged")
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "adapter_config.json" not in names and {"config.json", "model.safetensors", "tokenizer.json"} <= names
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["rope_parameters"]["factor"] == 5.0 and saved["sf_attention"]["num_sink_tokens"] == 2
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.library_name == "transformers"

    plain = hf_sinklora.load_model(tmp_path / "merged")
    assert not isinstance(plain, PeftModel) and plain.config._attn_implementation == "sf_attention"
    adapter_model = hf_sinklora.load_model(out)
    inputs = _eval_inputs(cli_run)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        want = adapter_model(**inputs).logits
        torch.testing.assert_close(merged(**inputs).logits[real], want[real], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(plain(**inputs).logits[real], want[real], atol=2e-5, rtol=1e-5)
    prompt = {k: v[:1, :40] for k, v in inputs.items()}
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(**prompt, **kwargs), adapter_model.generate(**prompt, **kwargs))


@pytest.mark.slow
def test_resume_continues_the_step_count(cli_run, tmp_path, capsys):
    """Resume from checkpoint-20 in a fresh directory: steps 21..40 give the uninterrupted run's adapter."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(cli_run["out"] / "checkpoint-20", out / "checkpoint-20")
    shutil.copy(cli_run["out"] / "sinklora_run.json", out)  # the run's record: resuming needs the same run
    assert main(_argv(cli_run, out, extra=("--resume",))) == 0
    summary = capsys.readouterr().out
    assert "resumed from" in summary and "checkpoint-20" in summary
    state = json.loads((out / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]  # the first four logs come from the checkpoint
    resumed, uninterrupted = load_file(out / "adapter_model.safetensors"), load_file(
        cli_run["out"] / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_push_is_one_commit_with_card(cli_run):
    calls = cli_run["calls"]
    assert [name for name, _ in calls] == ["__init__", "create_repo", "upload_folder"]
    create, upload = calls[1][1], calls[2][1]
    assert create["repo_id"] == REPO and create["exist_ok"] is True
    assert upload["repo_id"] == REPO and upload["folder_path"] == str(cli_run["out"])
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json", "README.md",
            "tokenizer.json"} <= set(upload["files"])
    assert not any(f.startswith("checkpoint-") or f == "training_args.bin" for f in upload["files"])
    assert f'load_model("{REPO}")' in upload["card"] and "sinklora" in upload["card"]


@pytest.mark.slow
def test_push_adapter_api(cli_run, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    hf_sinklora.push_adapter(cli_run["out"], "someone/other", token="hf_x", private=True)
    assert FakeHfApi.calls[0] == ("__init__", {"token": "hf_x"})
    assert FakeHfApi.calls[1][1] == {"repo_id": "someone/other", "private": True, "exist_ok": True,
                                     "repo_type": "model"}
    assert len([c for c in FakeHfApi.calls if c[0] == "upload_folder"]) == 1
    with pytest.raises(ValueError, match="nothing to push"):
        hf_sinklora.push_adapter(tmp_path, "someone/other")
    with pytest.raises(ValueError, match="repo_id must be"):
        hf_sinklora.push_adapter(cli_run["out"], "")
